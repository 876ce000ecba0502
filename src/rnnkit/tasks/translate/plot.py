"""The attention matrix of one translation as a PNG (source pieces on the x axis, target
pieces on the y axis), with a font that has Hangul/CJK when the machine has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnkit.tasks.translate.data import CJK


def cjk_font() -> str | None:
    """Path of an installed font with Hangul syllables and Han characters, or None."""
    from matplotlib import font_manager, ft2font

    for path in sorted(font_manager.findSystemFonts()):
        try:
            cmap = ft2font.FT2Font(path).get_charmap()
        except (OSError, RuntimeError):
            continue
        if 0xAC00 in cmap and 0x4E00 in cmap:
            return path
    return None


def plot_attention(tr: Any, text: str, png: str | Path, beam: int = 1) -> str:
    """Draw ``tr.attention(text)``; returns a note for the user ('' or why glyphs may be
    missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    tgt, src, w = tr.attention(text, beam=beam)
    note, prop = "", None
    if CJK.search("".join(tgt + src)):
        font = cjk_font()
        if font is None:
            note = " (no Hangul/CJK font is installed: those glyphs show as boxes)"
        else:
            prop = font_manager.FontProperties(fname=font)
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(src) + 2), max(3, 0.3 * len(tgt) + 1.5)))
    ax.imshow(w.float().numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(src)), [s if s.strip() else "␣" for s in src], fontproperties=prop,
                  rotation=90)
    ax.set_yticks(range(len(tgt)), [t if t.strip() else "␣" for t in tgt], fontproperties=prop)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return note
