"""The attention matrix of one translation as a PNG (source pieces on the x axis, target
pieces on the y axis), with a font that has Hangul/CJK when the machine has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnkit.tasks.common import font_for


def plot_attention(tr: Any, text: str, png: str | Path, beam: int = 1) -> str:
    """Draw ``tr.attention(text)``; returns a note for the user ('' or why glyphs may be
    missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tgt, src, w = tr.attention(text, beam=beam)
    prop, note = font_for(tgt + src)
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
