"""The built-in ``emoji`` captioning set: every fully-qualified emoji of the ``emoji`` package
(PyPI) that the Noto Color Emoji font (Debian ``fonts-noto-color-emoji``) draws as one
picture, rendered with Pillow and captioned with its Unicode CLDR short name, in English
(``emoji.EMOJI_DATA[e]["en"]``) or Korean (``emoji.config.load_language("ko")``), colons
dropped and underscores made spaces: 👩🏽‍🍳 → "woman cook medium skin tone" /
"여자 요리사 갈색 피부". The names are CLDR's, written by people, and compositional
(person × activity × skin tone × gender).

Rendering: the font is a bitmap (CBDT) font with one strike, so it is loaded at 109 px and
drawn with ``embedded_color=True`` on a transparent 136 × 136 square, composited over white
and resized (Lanczos) to ``size × size``. An emoji is skipped and counted when the font draws
nothing (``blank``: a code point newer than the font) or draws it as several glyphs side by
side (``not_one_glyph``: a sequence the font has no picture for, laid out as its parts).
About 3,800 images remain with the 2023 font.

The render (images as uint8, the emoji, the skip counts) is cached once per font file
(SHA-256), ``emoji`` package version and size, in ``$RNNKIT_CACHE/emoji`` (default
``~/.cache/rnnkit``, the folder of the C kernels). The file carries a SHA-256 of its
contents; a cache that does not load or does not match is rendered again, never trusted.
The font path can be set with ``RNNKIT_EMOJI_FONT``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",       # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",                # Arch
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",   # Fedora
    "/usr/share/fonts/noto-emoji/NotoColorEmoji.ttf",
)
STRIKE = 109       # the one bitmap size of Noto Color Emoji
CANVAS = 136       # its glyph advance (136 × 128 bitmaps), drawn on a square
LANGS = ("en", "ko")
CACHE_FORMAT = 1
renders = 0        # how many times the set was rendered in this process (the cache's test)


def cache_dir() -> Path:
    """``$RNNKIT_CACHE/emoji``, default ``~/.cache/rnnkit/emoji`` (as the C kernel cache)."""
    return Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit")) / "emoji"


def font_path() -> Path:
    """The Noto Color Emoji file: ``$RNNKIT_EMOJI_FONT`` or the first of :data:`FONT_PATHS`;
    absent: a FileNotFoundError naming the Debian package."""
    env = os.environ.get("RNNKIT_EMOJI_FONT")
    cands = [Path(env)] if env else [Path(p) for p in FONT_PATHS]
    for p in cands:
        if p.is_file():
            return p
    raise FileNotFoundError(
        "the emoji set needs the Noto Color Emoji font (Debian/Ubuntu: apt-get install "
        "fonts-noto-color-emoji); looked for " + ", ".join(map(str, cands))
        + " (set RNNKIT_EMOJI_FONT to its path)")


def emoji_module() -> Any:
    """The ``emoji`` package; absent: a ValueError saying ``pip install emoji``."""
    try:
        import emoji
    except ImportError:
        raise ValueError("the emoji set needs the emoji package for its CLDR names: "
                         "pip install emoji (or pip install 'rnnkit[caption]')") from None
    return emoji


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ValueError("the emoji set renders with Pillow: pip install pillow (or pip "
                         "install 'rnnkit[caption]')") from None
    return Image, ImageDraw, ImageFont


def sequences() -> list[str]:
    """Every fully-qualified emoji of the ``emoji`` package, in its order."""
    em = emoji_module()
    fq = em.STATUS["fully_qualified"]
    return [e for e, v in em.EMOJI_DATA.items() if v.get("status") == fq]


def name(e: str, lang: str = "en") -> str:
    """The CLDR short name of emoji ``e`` in ``lang`` from the ``emoji`` package, colons
    dropped and underscores made spaces ("" when the package has none)."""
    if lang not in LANGS:
        raise ValueError(f"--lang for the emoji set must be one of {', '.join(LANGS)}, "
                         f"got {lang!r}")
    em = emoji_module()
    if lang != "en" and lang not in em.EMOJI_DATA.get(e, {}):
        em.config.load_language(lang)
    raw = em.EMOJI_DATA.get(e, {}).get(lang, "")
    return " ".join(raw.replace(":", " ").replace("_", " ").split())


def ident(e: str) -> str:
    """A file-like id of an emoji: its code points, ``U+1F469_1F3FD_200D_1F373``."""
    return "U+" + "_".join(f"{ord(c):04X}" for c in e)


class Renderer:
    """Draws one emoji: ``render(e)`` → ``(size, size, 3)`` uint8 over white, or None when
    the font does not draw it as one picture (``last_skip`` says why)."""

    def __init__(self, path: str | Path, size: int) -> None:
        Image, ImageDraw, ImageFont = _pil()
        self.Image, self.size = Image, int(size)
        self.font = ImageFont.truetype(str(path), STRIKE)
        self.one = self.font.getlength("\U0001F600")        # one glyph's advance
        self.canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.canvas)
        self.last_skip = ""

    def render(self, e: str) -> np.ndarray | None:
        if abs(self.font.getlength(e) - self.one) > 0.5:
            self.last_skip = "not_one_glyph"
            return None
        self.canvas.paste((0, 0, 0, 0), (0, 0, CANVAS, CANVAS))
        self.draw.text((0, (CANVAS - 128) // 2), e, font=self.font, embedded_color=True)
        if self.canvas.getextrema()[3][1] == 0:
            self.last_skip = "blank"
            return None
        white = self.Image.new("RGBA", self.canvas.size, (255, 255, 255, 255))
        im = self.Image.alpha_composite(white, self.canvas).convert("RGB")
        im = im.resize((self.size, self.size), self.Image.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def render_all(path: str | Path, size: int) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Every fully-qualified emoji the font draws: images ``(I, size, size, 3)`` uint8, the
    emoji, skip counts ``{"blank": .., "not_one_glyph": ..}``."""
    global renders
    renders += 1
    r = Renderer(path, size)
    ims, kept = [], []
    skipped = {"blank": 0, "not_one_glyph": 0}
    for e in sequences():
        a = r.render(e)
        if a is None:
            skipped[r.last_skip] += 1
            continue
        ims.append(a)
        kept.append(e)
    return np.stack(ims), kept, skipped


def _digest(images: np.ndarray, meta: str) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(meta.encode())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_file(font: str | Path, size: int) -> Path:
    """``emoji-<font sha256[:16]>-<emoji version>-<size>px.npz`` in :func:`cache_dir`."""
    ver = getattr(emoji_module(), "__version__", "unknown")
    return cache_dir() / f"emoji-{file_sha256(font)[:16]}-{ver}-{int(size)}px.npz"


def _read_cache(f: Path) -> tuple[np.ndarray, list[str], dict[str, int]] | None:
    try:
        with np.load(f, allow_pickle=False) as z:
            images, meta, digest = z["images"], str(z["meta"]), str(z["digest"])
        m = json.loads(meta)
        if m.get("format") != CACHE_FORMAT or _digest(images, meta) != digest \
                or images.ndim != 4 or len(images) != len(m["emoji"]):
            return None
        return images, list(m["emoji"]), dict(m["skipped"])
    except Exception:  # truncated, not an npz, wrong keys: not trusted
        return None


def load_images(size: int = 32) -> tuple[np.ndarray, list[str], dict[str, int], str]:
    """The rendered set at ``size`` (from the cache when it holds a good copy; else rendered
    and cached): images ``(I, size, size, 3)`` uint8, the emoji, skip counts, the font's
    SHA-256."""
    if int(size) < 4:
        raise ValueError(f"emoji image size must be at least 4 pixels, got {size}")
    font = font_path()
    emoji_module()
    f = cache_file(font, size)
    got = _read_cache(f) if f.is_file() else None
    if got is None:
        if f.is_file():
            print(f"{f}: cache does not check out; rendering again", file=sys.stderr)
        images, kept, skipped = render_all(font, size)
        meta = json.dumps({"format": CACHE_FORMAT, "emoji": kept, "skipped": skipped,
                           "font": str(font)}, ensure_ascii=False)
        buf = io.BytesIO()
        np.savez_compressed(buf, images=images, meta=np.array(meta),
                            digest=np.array(_digest(images, meta)))
        try:
            from rnnkit.checkpoint import atomic_write
            f.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(f, buf.getvalue())
        except OSError as e:  # a read-only home: work without the cache
            print(f"{f}: cannot write the emoji cache ({e})", file=sys.stderr)
        got = images, kept, skipped
    return (*got, f.name.split("-")[1])


def emoji_set(lang: str = "en", size: int = 32) -> Any:
    """The built-in set as :class:`~rnnkit.tasks.caption.data.Captions`: images
    ``(I, 3, size, size)`` in [0, 1], one CLDR caption each in ``lang``, names
    :func:`ident`; ``skipped`` counts emoji the font does not draw (and any without a name
    in ``lang``)."""
    from rnnkit.tasks.caption.data import Captions

    if lang not in LANGS:
        raise ValueError(f"--lang for the emoji set must be one of {', '.join(LANGS)}, "
                         f"got {lang!r}")
    images, kept, skipped, font_hash = load_images(size)
    caps, keep = [], []
    skipped = {**skipped, "no_name": 0}
    for k, e in enumerate(kept):
        n = name(e, lang)
        if not n:
            skipped["no_name"] += 1
            continue
        caps.append([n])
        keep.append(k)
    x = torch.from_numpy(images[keep]).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    ver = getattr(emoji_module(), "__version__", "unknown")
    return Captions(x, caps, [ident(kept[k]) for k in keep], skipped,
                    f"builtin:emoji:{lang}:{int(size)}px:emoji-{ver}:font-{font_hash}")
