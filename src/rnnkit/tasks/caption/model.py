r"""The captioner: a small CNN image encoder (written here, no pretrained weights) feeding the
decoder of :mod:`rnnkit.seq2seq` (the same :class:`~rnnkit.seq2seq.Decoder`, greedy and beam
search as translation).

Shapes: ``B`` images ``(B, 3, H, W)`` (floats in ``[0, 1]``), the encoder's feature grid
``(B, N, D)`` (``N = h * w`` grid positions of ``D`` features), the image vector ``(B, Z)``,
captions ``(B, T)`` of word ids, logits ``(B, T, V)``.

Two decoders over the same encoder:

* ``show-tell`` (Vinyals et al. 2015, in the cs231n form): the image vector
  ``v = relu(W_fc flatten(grid) + b)`` is the decoder's initial state through the bridge,
  ``h_0 = tanh(W_b v + b_b)`` (and ``c_0`` for an LSTM); no attention (``attention="none"``).
* ``bridge_act="linear"`` (the CLI default): ``h_0 = W_b v + b_b`` without the tanh (cs231n's
  ``h0 = features W_proj + b_proj``).
* ``vector_norm=True`` (on for every new CLI run): ``v = LayerNorm(W_fc flatten(grid) + b)``
  instead of the ReLU, so the bridge's tanh does not saturate (it did: the same ``h_0`` for
  every image, show-tell then a language model).
* ``feature_norm=True``: the grid is layer-normalised per position (over ``D``) before both
  (on by default for the built-in emoji set).
* ``attend`` (Xu et al. 2015, "Show, Attend and Tell"): the same initial state, and at every
  word additive attention over the ``N`` grid positions (the seq2seq decoder's ``memory``,
  every position real), with input feeding.

Any ``nn.Module`` mapping ``(B, 3, H, W)`` to ``(B, N, D)`` can replace the CNN
(``encoder=``; its ``D`` is read from one forward pass on a blank image of ``image_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.seq2seq import (
    BRIDGE_ACTS,
    Decoder,
    DecodeState,
    Hypothesis,
    beam_search,
    greedy_search,
)
from rnnkit.tasks.common import he_init, one_of

DECODERS = ("show-tell", "attend")


class CNNEncoder(nn.Module):
    """``(B, C, H, W)`` → feature grid ``(B, N, D)``: per stage two 3×3 convolutions (padding
    1) with ReLU, then 2×2 max-pooling with ``ceil_mode`` (so odd sizes keep their border);
    ``N = ceil(H / 2^k) * ceil(W / 2^k)`` for ``k`` stages, ``D = channels[-1]``. No batch
    norm: every image is encoded on its own (batch independent). He-initialised."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        if not channels:
            raise ValueError("the CNN needs at least one stage (channels), got none")
        layers: list[nn.Module] = []
        c = in_channels
        for d in channels:
            layers += [nn.Conv2d(c, d, 3, padding=1), nn.ReLU(), nn.Conv2d(d, d, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c = d
        self.net = nn.Sequential(*layers)
        he_init(self.net)  # PyTorch's default starves a ReLU stack
        self.in_channels = in_channels
        self.output_size = int(channels[-1])

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be (B, {self.in_channels}, H, W), got shape "
                             f"{tuple(images.shape)}")
        g = self.net(images)                                              # (B, D, h, w)
        return g.flatten(2).transpose(1, 2)                               # (B, N, D)


class Captioner(nn.Module):
    """Image encoder + :class:`rnnkit.seq2seq.Decoder`. ``forward(images (B, 3, H, W),
    y_in (B, T))`` → logits ``(B, T, V)`` (teacher forcing: ``y_in`` = BOS + caption).
    ``blind=True`` zeroes the image features: the model is then a language model over
    captions (the decoder gets the same input for every image)."""

    def __init__(self, vocab_size: int, *, bos: int, eos: int, image_size: Sequence[int],
                 decoder: str = "attend", cell: str = "lstm", embed: int = 64,
                 hidden: int = 128, layers: int = 1, channels: Sequence[int] = (32, 64, 128),
                 image_vector: int = 256, attn_size: int | None = None, dropout: float = 0.0,
                 encoder: nn.Module | None = None, feature_norm: bool = False,
                 vector_norm: bool = False, bridge_act: str = "tanh") -> None:
        super().__init__()
        one_of("decoder", decoder, DECODERS)
        one_of("bridge_act", bridge_act, BRIDGE_ACTS)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) >= 1, got {tuple(image_size)}")
        self.bos, self.eos, self.kind = bos, eos, decoder
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.encoder = encoder if encoder is not None else CNNEncoder(channels)
        with torch.no_grad():
            g = self.encoder(torch.zeros(1, 3, *self.image_size))
        if g.dim() != 3:
            raise ValueError(f"the image encoder must return (B, N, D), got shape "
                             f"{tuple(g.shape)}")
        self.grid, self.features = int(g.shape[1]), int(g.shape[2])
        # LayerNorm of each grid position's D features (per image: batch independent); dense
        # colour pictures (the emoji set) otherwise grow the ReLU stack's features until the
        # bridge's tanh and the LSTM gates saturate and every caption is the same
        self.feature_norm = nn.LayerNorm(self.features) if feature_norm else None
        self.fc = nn.Linear(self.grid * self.features, image_vector)
        # vector_norm: v = LayerNorm(W_fc flatten(grid) + b) instead of the ReLU: unnormalised,
        # v grows until the bridge's tanh saturates (|h_0| = |c_0| = 1 for every image), no
        # gradient reaches the image and show-tell learns only a language model
        self.vector_norm = nn.LayerNorm(image_vector) if vector_norm else None
        self.drop = nn.Dropout(dropout)
        self.decoder = Decoder(vocab_size, memory_size=self.features, summary_size=image_vector,
                               embed=embed, hidden=hidden, layers=layers, cell=cell,
                               attention="additive" if decoder == "attend" else "none",
                               attn_size=attn_size, input_feed=decoder == "attend",
                               bridge="linear", dropout=dropout, bridge_act=bridge_act)

    def encode(self, images: Tensor, blind: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``(memory (B, N, D), mask (B, N) all True, image vector (B, Z))``."""
        if images.dim() != 4 or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"expected images (B, 3, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got shape {tuple(images.shape)}")
        g = self.encoder(images)                                          # (B, N, D)
        if self.feature_norm is not None:
            g = self.feature_norm(g)
        if blind:
            g = torch.zeros_like(g)
        v = self.fc(self.drop(g.flatten(1)))                               # (B, Z)
        v = F.relu(v) if self.vector_norm is None else self.vector_norm(v)
        mask = torch.ones(g.shape[:2], dtype=torch.bool, device=g.device)
        return self.drop(g), mask, v

    def forward(self, images: Tensor, y_in: Tensor, blind: bool = False) -> Tensor:
        return self.decoder(y_in, *self.encode(images, blind))[0]

    def attention_weights(self, images: Tensor, y_in: Tensor) -> Tensor | None:
        """Teacher-forced attention ``(B, T, N)`` (None for show-tell)."""
        return self.decoder(y_in, *self.encode(images))[1]

    @torch.no_grad()
    def decoding(self, images: Tensor, repeat: int = 1) -> tuple[Any, DecodeState]:
        """``(step, state)`` for :func:`rnnkit.seq2seq.greedy_search` / ``beam_search``."""
        memory, mask, v = self.encode(images)
        return self.decoder.step, self.decoder.start(memory, mask, v, repeat)


def build_model(cfg: dict[str, Any]) -> Captioner:
    """``cfg``: ``vocab`` and :class:`Captioner`'s keyword arguments."""
    cfg = dict(cfg)
    return Captioner(cfg.pop("vocab"), **cfg)


@torch.no_grad()
def caption_ids(model: Captioner, images: Tensor, *, beam: int = 1, alpha: float = 0.0,
                max_len: int = 30, batch_size: int = 64, attention: bool = False
                ) -> list[Hypothesis]:
    """The best caption of every image ``(B, 3, H, W)``: greedy for ``beam == 1``, else beam
    search (the seq2seq decoder's); at most ``max_len`` words, never padding, ``<unk>`` or
    BOS. Model put in eval mode and back."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    forbid = (0, 1, model.bos)
    out: list[Hypothesis] = []
    for k in range(0, images.shape[0], batch_size):
        x = images[k:k + batch_size].to(dev)
        lens = [max_len] * x.shape[0]
        if beam == 1:
            step, st = model.decoding(x)
            out += greedy_search(step, st, lens, bos=model.bos, eos=model.eos, forbid=forbid,
                                 attention=attention)
        else:
            step, st = model.decoding(x, repeat=beam)
            out += [h[0] for h in beam_search(step, st, lens, beam=beam, bos=model.bos,
                                              eos=model.eos, alpha=alpha, forbid=forbid,
                                              attention=attention)]
    model.train(was)
    return out
