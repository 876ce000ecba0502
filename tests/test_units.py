"""Interpretable cells: text features against hand annotation, correlations against numpy,
gate statistics against the recorded gates, and the HTML page rendered in headless Chromium."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.inspect.units import (
    ALPHABET,
    analyse,
    correlations,
    html_units,
    quantize,
    text_features,
    write_html,
)
from rnnkit.tasks.lm import CharLM

CODE = '''def f(x, y=[1, 2]):  # a (
    s = "a(b"
    if x:
        return {'k': (y)}
  odd = 3
z = """cut
in ('''


def marks(text: str, ch: str) -> np.ndarray:
    return np.array([c == ch for c in text], dtype=np.float32)


def test_text_features_match_hand_annotation_on_partial_code():
    f = text_features(CODE)
    # hand annotation
    want_string = np.zeros(len(CODE))
    for lit in ('"a(b"', "'k'"):
        a = CODE.index(lit)
        want_string[a: a + len(lit)] = 1
    want_string[CODE.index('"""'):] = 1          # cut inside a string: the rest is string
    np.testing.assert_array_equal(f["in_string"], want_string)
    want_comment = np.zeros(len(CODE))
    a = CODE.index("# a (")
    want_comment[a: a + 5] = 1
    np.testing.assert_array_equal(f["in_comment"], want_comment)
    # brackets: only real bracket tokens count, not "(" in the comment, string or docstring
    depth = [int(v) for v in f["brackets"]]
    line0 = CODE.splitlines()[0]
    assert depth[: len(line0)] == [0] * 6 + [1] * 6 + [2] * 4 + [1, 0] + [0] * 8
    inner = CODE.index("{'k'")
    assert depth[inner] == 0 and depth[inner + 1] == 1 and depth[CODE.index("(y)") + 1] == 2
    assert depth[CODE.index("}")] == 0
    # indentation and column, line by line (the inconsistent dedent restarts the tokenizer)
    for line, ind in zip(CODE.splitlines(keepends=True), [0, 4, 4, 8, 2, 0, 0], strict=True):
        start = CODE.index(line)
        np.testing.assert_array_equal(f["indent"][start: start + len(line)], ind)
        np.testing.assert_array_equal(f["column"][start: start + len(line)],
                                      np.arange(len(line)))


def test_correlations_equal_numpy_corrcoef():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(200, 5)).astype(np.float32)
    feat = rng.normal(size=200).astype(np.float32)
    acts[:, 2] += 3 * feat
    acts[:, 4] = 1.0                                     # constant unit: r = 0
    r = correlations(acts, {"f": feat})["f"]
    for u in range(4):
        assert r[u] == pytest.approx(np.corrcoef(acts[:, u], feat)[0, 1], abs=1e-5)
    assert r[4] == 0 and r[2] > 0.9


def tiny_model(text: str, cell: str = "lstm", hidden: int = 6):
    torch.manual_seed(0)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    return CharLM(len(chars), cell, hidden, layers=2, embed=4), ids


def test_analyse_reads_text_in_chunks_and_reports_gate_statistics():
    text = CODE * 3
    model, ids = tiny_model(text)
    rep = analyse(model, ids, text, chunk=37)           # state carried across chunks
    assert rep.acts.shape == (len(text), 2 * 2 * 6) and rep.names[6] == "l0.c0"
    # the same activations as one uninterrupted pass
    with torch.no_grad():
        emb = model.emb(ids[None])
        out0, _ = model.rnn(emb)
    np.testing.assert_allclose(rep.acts[:, 12:18], out0[0].numpy(), atol=1e-5)
    # gate statistics against the gates recomputed from the recorded states
    stats = {(layer, g): (lo, hi, m) for layer, g, lo, hi, m in rep.gate_stats}
    assert set(stats) == {(li, g) for li in (0, 1) for g in ("input", "forget", "cell", "output")}
    cell = model.rnn.cells[0]
    h = torch.tensor(rep.acts[:, :6])
    h_prev = torch.cat([torch.zeros(1, 6), h[:-1]])
    with torch.no_grad():
        f = torch.sigmoid((emb[0] @ cell.weight_ih.T + cell.bias_ih + h_prev @ cell.weight_hh.T
                           + cell.bias_hh)[:, 6:12])
    lo, hi, m = stats[(0, "forget")]
    assert m == pytest.approx(float(f.mean()), abs=1e-5)
    assert lo == pytest.approx(float((f < 0.1).float().mean()), abs=1e-6)
    assert hi == pytest.approx(float((f > 0.9).float().mean()), abs=1e-6)
    best = rep.best()
    u, r = best["in_string"]
    assert r == pytest.approx(float(np.corrcoef(rep.acts[:, rep.names.index(u)],
                                                rep.feats["in_string"])[0, 1]), abs=1e-4)
    assert abs(r) == pytest.approx(float(np.abs(rep.r["in_string"]).max()))
    with pytest.raises(ValueError, match="one token per character"):
        analyse(model, ids[:-1], text)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def dump_dom(url: str) -> str:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True).stdout


def expected_colour(q: str) -> list[tuple[int, int, int]]:
    out = []
    for ch in q:
        v = ALPHABET.index(ch) / 63 * 2 - 1
        c = (65, 105, 225) if v < 0 else (220, 20, 60)
        out.append(tuple(int(np.floor(255 + (k - 255) * abs(v) + 0.5)) for k in c))
    return out


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium: apt-get install -y "
                    "chromium")
def test_html_page_renders_in_headless_chromium_and_the_picker_changes_colours(tmp_path):
    text = CODE + "\n# </script> stays text\n"
    model, ids = tiny_model(text, cell="gru", hidden=4)
    rep = analyse(model, ids, text)
    page = write_html(rep, tmp_path / "cells.html", units=5)
    html = page.read_text()
    assert "http" not in html.replace("http-equiv", "")   # self-contained: nothing to fetch
    colours = {}
    shown = html_units(rep, 5)
    for pick in ("0", "3"):
        dom = dump_dom(f"file://{page}#unit={pick}")
        spans = re.findall(r'<span title="([^"=]+) = [^"]*" style="background-color: '
                           r'rgb\((\d+), (\d+), (\d+)\);">([^<]*)</span>', dom)
        assert len(spans) == len(text), (len(spans), len(text))
        assert "".join(s[4] for s in spans).replace("&lt;", "<").replace("&gt;", ">") \
            .replace("&amp;", "&") == text
        assert {s[0] for s in spans} == {rep.names[shown[int(pick)]]}
        colours[pick] = [tuple(int(v) for v in s[1:4]) for s in spans]
    # each unit's colours are that unit's activations, and two units colour differently
    for pick in ("0", "3"):
        q, _ = quantize(rep.acts[: len(text), shown[int(pick)]])
        assert colours[pick] == expected_colour(q)
    assert colours["0"] != colours["3"]
    # by name too
    dom = dump_dom(f"file://{page}#unit={rep.names[shown[3]]}")
    assert re.findall(r"rgb\((\d+), (\d+), (\d+)\)", dom.split('id="text"')[1]) == \
        [tuple(str(v) for v in c) for c in colours["3"]]
    assert re.search(r'<p id="missing"[^>]*hidden', dom)
    # a unit the page does not hold: a message naming it, not a silent fall-back
    dom = dump_dom(f"file://{page}#unit=l9.h99")
    note = re.search(r'<p id="missing"[^>]*>([^<]*)</p>', dom)
    assert note and "l9.h99" in note.group(1) and "hidden" not in note.group(0), note


def test_page_units_by_name_and_labels_shared_with_the_table(tmp_path):
    text = CODE * 2
    model, ids = tiny_model(text, cell="lstm", hidden=6)
    rep = analyse(model, ids, text)
    import json as _json

    def page_units(path):
        data = path.read_text().split("const DATA = ")[1].split(";\n")[0]
        return _json.loads(data.replace("<\\/", "</"))["units"]

    names = [rep.names[7], rep.names[2]]
    units = page_units(write_html(rep, tmp_path / "a.html", units=names))
    assert [u["name"] for u in units] == names
    # every unit the terminal's table names is labelled on the page with the same feature and r
    best = rep.best()
    units = page_units(write_html(rep, tmp_path / "b.html", units=len(rep.names)))
    by_name = {u["name"]: u["label"] for u in units}
    for feat, (unit, r) in best.items():
        assert f"{feat} (r = {r:+.2f})" in by_name[unit], (feat, unit, by_name[unit])
    with pytest.raises(ValueError, match=r"no unit 'l0\.x3'.*l0\.h0"):
        write_html(rep, tmp_path / "c.html", units=["l0.x3"])
    with pytest.raises(ValueError, match="at least one unit"):
        html_units(rep, 0)


def test_inspect_cells_command_on_a_saved_run(tmp_path, capsys):
    from rnnkit import checkpoint as ckpt
    from rnnkit.cli import main
    from rnnkit.data import build_tokenizer

    text = CODE * 4
    tok = build_tokenizer("char", [text])
    torch.manual_seed(0)
    model = CharLM(tok.vocab_size, "lstm", 8, layers=1, embed=4)
    cfg = {"task": "lm", "tokenizer": tok.to_json(),
           "model": {"cell": "lstm", "hidden": 8, "layers": 1, "embed": 4, "dropout": 0.0,
                     "tie": False, "vocab_size": tok.vocab_size}}
    ckpt.save(tmp_path / "run" / "best", model, cfg)
    src = tmp_path / "code.py"
    src.write_text(text)
    rc = main(["inspect", "cells", str(tmp_path / "run"), "--text", str(src),
               "--html", str(tmp_path / "p.html")])
    assert rc == 0
    out = capsys.readouterr().out
    rep = analyse(model.eval(), torch.tensor(tok.encode(text)), text)
    for feat, (unit, r) in rep.best().items():
        assert f"| {feat} | {unit} | {r:+.3f} |" in out
    assert "| 0 | forget |" in out and (tmp_path / "p.html").stat().st_size > len(text)
    assert main(["inspect", "cells", str(tmp_path / "nope")]) == 2
    # a unit named on the terminal can be put on the page by name
    unit = rep.best()["in_string"][0]
    rc = main(["inspect", "cells", str(tmp_path / "run"), "--text", str(src),
               "--html", str(tmp_path / "q.html"), "--html-units", f"{unit},l0.h1"])
    assert rc == 0 and f'"name": "{unit}"' in (tmp_path / "q.html").read_text()
