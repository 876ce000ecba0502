"""Pictures of a captioner: a grid of images with their generated and true captions, and the
attention of each generated word over the image (attend decoder)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.tasks.common import font_for


def plot_grid(images: Tensor, hyps: Sequence[str], refs: Sequence[str], path: str | Path,
              cols: int = 4) -> None:
    """``images`` ``(B, 3, H, W)`` in a grid, each titled with its generated caption (top)
    and true caption (below)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B = images.shape[0]
    prop, _ = font_for([*hyps, *refs])  # Korean captions need a Hangul font
    cols = min(cols, B)
    rows = -(-B // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < B:
            ax.imshow(images[k].permute(1, 2, 0).clamp(0, 1).numpy())
            title = textwrap.fill(hyps[k], 38) + "\n" + textwrap.fill(f"(true: {refs[k]})", 38)
            ax.set_title(title, fontsize=8, fontproperties=prop)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_attention(cap: Any, image: Tensor, path: str | Path, beam: int = 1) -> None:
    """The image once per generated word (and ``</s>``), overlaid with that word's attention
    over the grid, upsampled to the image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    words, w, (gh, gw) = cap.attention(image, beam=beam)
    prop, _ = font_for(words)
    H, W = image.shape[1:]
    maps = F.interpolate(w.view(-1, 1, gh, gw).float(), size=(H, W), mode="bilinear",
                         align_corners=False)[:, 0] if gh > 1 else w.view(-1, 1, gw)
    n = len(words)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.2 * H / W + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.imshow(torch.as_tensor(maps[k]).numpy(), cmap="magma", alpha=0.55,
                  extent=(0, W, H, 0))
        ax.set_title(words[k], fontsize=9, fontproperties=prop)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
