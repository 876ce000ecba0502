"""The sequence classifier: input ``(B, T, F)`` vectors, or frames ``(B, T, H, W, C)`` →
per-feature normalisation (training statistics, saved with the weights) → for frames, a small
CNN applied to every frame with shared weights ``(B, T, E)`` → rnnkit recurrent stack with
``lengths`` ``(B, T, D*H)`` → pooling over time (the text classifier's poolings, the same
functions, also one chunk at a time) ``(B, D*H)`` → linear ``(B, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rnnkit.layers import CELLS
from rnnkit.tasks.classify.model import POOLS, Classifier
from rnnkit.tasks.common import he_init, one_of


class FrameCNN(nn.Module):
    """A small CNN for one frame, applied to every frame alone (the batch and time axes are
    folded together): ``(B, T, H, W, C)`` → ``(B, T, out)``. Three 3×3 convolutions (16, 32,
    32 channels, ReLU, 2×2 max-pooling after the first two), average-pooled to a 4×4 grid (so
    where things are survives), then linear and ReLU; He-initialised (``tasks.common.he_init``)."""

    def __init__(self, channels: int, out: int = 64) -> None:
        super().__init__()
        self.out_features = out
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(32 * 16, out), nn.ReLU())
        he_init(self.net)

    def forward(self, x: Tensor) -> Tensor:
        B, T, H, W, C = x.shape
        y = self.net(x.reshape(B * T, H, W, C).permute(0, 3, 1, 2))      # (B*T, out)
        return y.reshape(B, T, -1)


class SequenceClassifier(nn.Module):
    """``forward(x (B, T, *step), lengths (B,))`` → logits ``(B, C)``; ``step`` is ``(F,)``
    or ``(H, W, C)``. ``frame_encoder``: a user module ``(B, T, H, W, C)`` → ``(B, T, E)``
    with an ``out_features`` attribute (default: :class:`FrameCNN` for frames)."""

    # the text classifier's pooling, reused as is: it reads self.pool, self.rnn, self.attn
    pooled = Classifier.pooled
    pool_init = Classifier.pool_init
    pool_update = Classifier.pool_update
    pool_read = Classifier.pool_read
    build_pooled = Classifier.build_pooled
    stream_pool = Classifier.stream_pool

    def __init__(self, step_shape: Sequence[int], num_classes: int, *, cell: str = "gru",
                 hidden: int = 64, layers: int = 1, bidirectional: bool = False,
                 pool: str = "last", dropout: float = 0.1, embed: int = 64,
                 frame_encoder: nn.Module | None = None) -> None:
        super().__init__()
        one_of("cell", cell, CELLS)
        one_of("pool", pool, POOLS)
        step_shape = tuple(step_shape)
        if len(step_shape) not in (1, 3):
            raise ValueError(f"a time step must be a vector (F,) or a frame (H, W, C), got "
                             f"shape {step_shape}")
        self.step_shape = step_shape
        C = step_shape[-1]
        self.register_buffer("mean", torch.zeros(C))
        self.register_buffer("std", torch.ones(C))
        if len(step_shape) == 3:
            self.encoder = frame_encoder if frame_encoder is not None else FrameCNN(C, embed)
            width = self.encoder.out_features
        else:
            self.encoder, width = None, C
        self.build_pooled(width, num_classes, cell=cell, hidden=hidden, layers=layers,
                          bidirectional=bidirectional, pool=pool, dropout=dropout)

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def features(self, x: Tensor) -> Tensor:
        """Normalised steps ``(B, T, *step)`` → the recurrent stack's input ``(B, T, E)``."""
        if tuple(x.shape[2:]) != self.step_shape:
            raise ValueError(f"expected input (B, T, {', '.join(map(str, self.step_shape))}), "
                             f"got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        return x if self.encoder is None else self.encoder(x)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out, state = self.rnn(self.features(x), lengths=lengths)          # (B, T, D*H)
        return self.head(self.drop(self.pooled(out, state, lengths)))     # (B, C)
