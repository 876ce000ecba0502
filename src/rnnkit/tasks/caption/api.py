"""A trained captioner from Python::

    cap = rnnkit.load("runs/caption-...")        # or rnnkit.tasks.caption.load
    cap.caption(["photo.png"], beam=5)           # ['three seven one']
    cap.caption(images)                          # a (B, 3, H, W) tensor in [0, 1], or arrays
    cap.attention("photo.png")                   # (words, weights (T, N), grid (h, w))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit import checkpoint as ckpt
from rnnkit.data import Tokenizer, tokenizer_from_json
from rnnkit.seq2seq import Hypothesis
from rnnkit.tasks.caption.data import read_image, resize, to_rgb
from rnnkit.tasks.caption.metrics import caption_scores
from rnnkit.tasks.caption.model import Captioner, build_model, caption_ids
from rnnkit.tasks.common import run_config


class ImageCaptioner:
    """A trained :class:`~rnnkit.tasks.caption.model.Captioner` with its word tokenizer
    (see :func:`load`)."""

    def __init__(self, model: Captioner, tok: Tokenizer, config: dict[str, Any]) -> None:
        self.model, self.tok, self.config = model.eval(), tok, config
        s = config.get("settings", {})
        self.max_len, self.lang = s.get("max_len", 30), s.get("lang", "en")
        self.alpha = s.get("alpha", 0.0)

    def images(self, images: Any) -> Tensor:
        """Paths, ``(H, W[, C])`` arrays, ``(3, H, W)`` / ``(B, 3, H, W)`` tensors →
        ``(B, 3, H, W)`` at the model's image size (resized, grayscale/RGBA converted)."""
        size = self.model.image_size
        if isinstance(images, (str, Path)):
            images = [images]
        if isinstance(images, Tensor):
            x = images.float()
            if x.dim() == 3:
                x = x[None]
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
            return torch.stack([resize(i, size) for i in x]) if x.shape[0] else x
        out = []
        for i, im in enumerate(images):
            if isinstance(im, (str, Path)):
                out.append(read_image(im, size))
            elif isinstance(im, Tensor) and im.dim() == 3 and im.shape[0] == 3:
                out.append(resize(im.float(), size))
            else:
                out.append(resize(torch.from_numpy(to_rgb(np.asarray(im), f"image {i}")), size))
        if not out:
            raise ValueError("expected at least one image, got none")
        return torch.stack(out)

    def hypotheses(self, images: Any, beam: int = 5, attention: bool = False
                   ) -> list[Hypothesis]:
        return caption_ids(self.model, self.images(images), beam=beam, alpha=self.alpha,
                           max_len=self.max_len, attention=attention)

    def caption(self, images: Any, beam: int = 5) -> list[str]:
        """One caption per image; ``beam=1`` is greedy decoding."""
        return [self.tok.decode(h.tokens) for h in self.hypotheses(images, beam)]

    def attention(self, image: Any, beam: int = 1) -> tuple[list[str], Tensor, tuple[int, int]]:
        """(words with ``</s>`` last, weights ``(T, N)`` over the grid, the grid's
        ``(h, w)`` when it is the project's CNN, else ``(1, N)``)."""
        h = self.hypotheses([image] if not isinstance(image, Tensor) or image.dim() == 3
                            else image[:1], beam, attention=True)[0]
        if h.attention is None:
            raise ValueError("this model has no attention (it was trained with --decoder "
                             "show-tell)")
        words = [self.tok.decode([i]) for i in h.tokens]
        words = [*words, "</s>"] if len(words) < h.attention.shape[0] else words
        N = h.attention.shape[1]
        H, W = self.model.image_size
        k = len(self.config["model"].get("channels", ()))
        gh, gw = -(-H // 2 ** k), -(-W // 2 ** k)
        grid = (gh, gw) if gh * gw == N else (1, N)
        return words, h.attention[:len(words)], grid

    def evaluate(self, images: Any, refs: Sequence[Sequence[str]], beam: int = 5
                 ) -> dict[str, Any]:
        """chrF, BLEU (sacrebleu) and exact match of the captions of ``images`` against
        their references (a list of captions per image)."""
        hyps = self.caption(images, beam=beam)
        refs = [[" ".join(self.tok.split(c)) for c in r] for r in refs]
        return {**caption_scores(hyps, refs, self.lang), "n": len(hyps), "beam": beam}


def load(run_dir: str | Path, device: str = "cpu") -> ImageCaptioner:
    """The captioner of a run folder (its ``best/`` checkpoint) or a checkpoint folder."""
    src, cfg = run_config(run_dir, "caption", "a captioning model")
    model = ckpt.build_checked(lambda: build_model(cfg["model"]), src)
    return ImageCaptioner(model.to(device), tokenizer_from_json(cfg["tokenizer"]), cfg)
