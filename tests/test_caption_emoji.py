"""The built-in emoji captioning set: Pillow draws Noto Color Emoji in colour, the captions are
the emoji package's CLDR names (English and Korean), the render is cached and a corrupt cache
is rendered again, the split by seed is reproducible, and tiny training runs in both
languages. Skipped without Pillow, the emoji package or fonts-noto-color-emoji."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the emoji set renders with Pillow (pip install pillow)")
emoji = pytest.importorskip("emoji", reason="the emoji set needs the emoji package "
                            "(pip install emoji)")

from rnnkit.cli import main  # noqa: E402
from rnnkit.tasks.caption import emoji_set as es  # noqa: E402
from rnnkit.tasks.caption.data import load_captions, make_split  # noqa: E402

try:
    FONT = es.font_path()
except FileNotFoundError:
    FONT = None
pytestmark = pytest.mark.skipif(FONT is None, reason="no Noto Color Emoji font (Debian: "
                                "apt-get install fonts-noto-color-emoji)")

COOK = "\U0001F469\U0001F3FD\u200D\U0001F373"       # 👩🏽‍🍳 woman cook: medium skin tone
GRIN = "\U0001F600"                                   # 😀


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder (the tests of the full set use the user's, as a run does:
    rendered once per machine)."""
    d = tmp_path_factory.mktemp("rnnkit-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNKIT_CACHE", str(d))
    yield d
    mp.undo()


def test_renderer_draws_in_colour_and_skips_what_the_font_lacks():
    r = es.Renderer(FONT, 32)
    a = r.render(GRIN)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert (a < 200).any(axis=2).mean() > 0.2            # not blank (white background)
    rgb = a.reshape(-1, 3).astype(int)
    yellow = (rgb[:, 0] > 180) & (rgb[:, 1] > 130) & (rgb[:, 2] < 100)
    assert yellow.mean() > 0.2                           # a yellow face: colour, not a glyph
    assert r.render(GRIN + GRIN) is None and r.last_skip == "not_one_glyph"
    assert r.render("\uE000") is None and r.last_skip in ("blank", "not_one_glyph")
    assert r.render(COOK) is not None                    # a ZWJ sequence with a skin tone


def test_names_are_the_emoji_packages_cldr_names():
    raw_en = emoji.EMOJI_DATA[COOK]["en"]
    assert es.name(COOK, "en") == raw_en.strip(":").replace("_", " ")
    assert es.name(COOK, "en") == "woman cook medium skin tone"
    emoji.config.load_language("ko")
    raw_ko = emoji.EMOJI_DATA[COOK]["ko"]
    assert es.name(COOK, "ko") == raw_ko.strip(":").replace("_", " ")
    assert es.ident(COOK) == "U+1F469_1F3FD_200D_1F373"
    with pytest.raises(ValueError, match="en, ko"):
        es.name(COOK, "fr")


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(cache, monkeypatch):
    few = [GRIN, COOK, "\U0001F415", GRIN + GRIN]            # one is not drawn as one glyph
    monkeypatch.setattr(es, "sequences", lambda: few)
    n0 = es.renders
    im, kept, skipped, _ = es.load_images(8)
    assert es.renders == n0 + 1 and kept == few[:3] and skipped["not_one_glyph"] == 1
    f = es.cache_file(FONT, 8)
    assert f.is_file() and f.parent == cache / "emoji"
    im2, kept2, _, _ = es.load_images(8)
    assert es.renders == n0 + 1 and kept2 == kept and np.array_equal(im, im2)
    raw = bytearray(f.read_bytes())                           # flip bytes inside the data
    raw[len(raw) // 2:len(raw) // 2 + 16] = b"\xff" * 16
    f.write_bytes(bytes(raw))
    im3, _, _, _ = es.load_images(8)
    assert es.renders == n0 + 2 and np.array_equal(im, im3)
    f.write_bytes(b"not an npz")
    assert np.array_equal(es.load_images(8)[0], im) and es.renders == n0 + 3
    assert es.load_images(8) and es.renders == n0 + 3         # the rebuilt file is trusted


def test_missing_font_or_package_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RNNKIT_EMOJI_FONT", "/nowhere/NotoColorEmoji.ttf")
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        load_captions("emoji")
    monkeypatch.delenv("RNNKIT_EMOJI_FONT")
    monkeypatch.setitem(sys.modules, "emoji", None)
    with pytest.raises(ValueError, match="pip install emoji"):
        load_captions("emoji")


def test_full_set_captions_and_split_by_seed():
    d = load_captions("emoji", image_size=(16, 16))
    assert 3500 <= len(d) <= 4100 and d.images.shape[1:] == (3, 16, 16)
    assert sum(d.skipped.values()) + len(d) == len(es.sequences())
    cook = d.names.index(es.ident(COOK))
    assert d.captions[cook] == ["woman cook medium skin tone"]
    ko = load_captions("emoji", image_size=(16, 16), lang="ko")
    assert ko.names == d.names and ko.captions[cook] == [es.name(COOK, "ko")]
    assert ko.captions[cook] != d.captions[cook]
    a, b, c = (make_split(d, seed=s) for s in (0, 0, 1))
    assert a.test == b.test and a.valid == b.valid and a.test != c.test
    assert len(a.test) == round(0.1 * len(d))
    assert not set(a.test) & set(a.train) and not set(a.valid) & set(a.train)


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_tiny_emoji_run(tmp_path, capsys, lang):
    run = tmp_path / "run"
    assert main(["train", "caption", "--data", "emoji", "--lang", lang, "--image-size", "16",
                 "16", "--hidden", "8", "--embed", "8", "--channels", "4,4",
                 "--image-vector", "8", "--batch-size", "16", "--steps", "3", "--max-len", "4",
                 "--eval-images", "8", "--beam", "2", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nearest neighbour (pixels)" in out and "attend beam 2" in out
    split = json.loads((run / "split.json").read_text())
    assert split["data"].startswith(f"builtin:emoji:{lang}:16px")
    assert len(split["test_images"]) == round(0.1 * split["images"])
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["feature_norm"] is True and model["vector_norm"] is True
    m = json.loads((run / "metrics.json").read_text())
    assert m["n"] == len(split["test_images"])
    refs = {e["image"]: e["references"][0] for e in m["examples"]}
    assert all(r for r in refs.values())
    if lang == "ko":
        assert any("\uac00" <= ch <= "\ud7a3" for r in refs.values() for ch in r)


def test_feature_norm_normalises_the_grid_and_keeps_blind_blind():
    import torch

    from rnnkit.tasks.caption import Captioner

    torch.manual_seed(0)
    m = Captioner(9, bos=7, eos=8, image_size=(12, 12), channels=(4, 6), embed=8, hidden=12,
                  image_vector=10, feature_norm=True).eval()
    x = torch.rand(2, 3, 12, 12)
    g, _, _ = m.encode(x)
    ref = torch.nn.functional.layer_norm(m.encoder(x), (6,), m.feature_norm.weight,
                                         m.feature_norm.bias)
    torch.testing.assert_close(g, ref)
    y = torch.tensor([[7, 2, 3], [7, 2, 3]])
    out = m(x, y, blind=True)
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(m(x, y)[0], m(x, y)[1])
