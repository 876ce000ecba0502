"""The text classifier: token ids ``(B, T)`` → embedding ``(B, T, E)`` → rnnkit recurrent stack
with ``lengths`` (nothing past a text's end reaches the result) ``(B, T, D*H)`` → pooling over
time (``last``, ``mean``, ``max`` or learned ``attention``) ``(B, D*H)`` → linear ``(B, C)``.

The pooling also runs one chunk at a time (``pool_init`` / ``pool_update`` / ``pool_read``: a
fixed-size state whatever the number of chunks), which is what makes streaming exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit.layers import CELLS
from rnnkit.tasks.common import one_of

POOLS = ("last", "mean", "max", "attention")
State = Tensor | tuple[Tensor, Tensor] | None


def attention_scorer(D: int) -> nn.Module:
    """The attention pooling's score of a time step, ``v · tanh(W h_t + b)``: ``(..., D)`` ->
    ``(..., 1)``."""
    return nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, 1, bias=False))


class Classifier(nn.Module):
    """Embedding → recurrent stack → pooling → linear. ``forward(ids (B, T), lengths (B,))``
    returns logits ``(B, C)``. Padding id 0; a text with length 0 pools to a zero vector."""

    def __init__(self, vocab_size: int, num_classes: int, *, cell: str = "gru", embed: int = 128,
                 hidden: int = 256, layers: int = 1, bidirectional: bool = False,
                 pool: str = "max", dropout: float = 0.2) -> None:
        super().__init__()
        one_of("cell", cell, CELLS)
        one_of("pool", pool, POOLS)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.build_pooled(embed, num_classes, cell=cell, hidden=hidden, layers=layers,
                          bidirectional=bidirectional, pool=pool, dropout=dropout)

    def build_pooled(self, width: int, num_classes: int, *, cell: str, hidden: int,
                     layers: int, bidirectional: bool, pool: str, dropout: float) -> None:
        """The part after the input: the recurrent stack over ``width`` features (``rnn``),
        the pooling ``pool`` (``attn`` for attention), dropout and the linear head to
        ``num_classes`` logits (the sequence classifier builds the same)."""
        self.pool = pool
        self.rnn = CELLS[cell](width, hidden, num_layers=layers, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)
        D = self.rnn.output_size
        self.attn = attention_scorer(D) if pool == "attention" else None
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(D, num_classes)

    def stream_pool(self, what: str) -> dict[str, Tensor]:
        """The pooling state a stream starts from; a bidirectional model cannot stream (a
        ValueError: it reads each ``what``, a text or a sequence, backwards from its end)."""
        if self.rnn.bidirectional:
            raise ValueError(f"streaming needs a unidirectional model: a bidirectional one reads "
                             f"each {what} backwards from its end, which a live stream does not "
                             f"have yet; train with --no-bidirectional")
        return self.pool_init(self.head.weight)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        x = self.drop(self.embed(ids))                                   # (B, T, E)
        out, state = self.rnn(x, lengths=lengths.clamp(min=1))           # (B, T, D*H)
        return self.head(self.drop(self.pooled(out, state, lengths)))    # (B, C)

    def pooled(self, out: Tensor, state: State, lengths: Tensor) -> Tensor:
        """``out`` ``(B, T, D)`` (zero past each length), final ``state`` → ``(B, D)``."""
        B, T, _ = out.shape
        valid = torch.arange(T, device=out.device).view(1, T) < lengths.view(B, 1)  # (B, T)
        if self.pool == "last":   # final state of the top layer (both directions)
            h = state[0] if isinstance(state, tuple) else state          # (L*D, B, H)
            v = torch.cat(list(h[-self.rnn.num_directions:]), -1)
        elif self.pool == "mean":
            v = out.sum(1) / lengths.clamp(min=1).view(B, 1).to(out.dtype)
        elif self.pool == "max":
            v = out.masked_fill(~valid.unsqueeze(-1), -math.inf).amax(1)
        else:
            s = self.attn(out).squeeze(-1).masked_fill(~valid, -math.inf)  # (B, T)
            v = (torch.softmax(s, 1).nan_to_num(0.0).unsqueeze(-1) * out).sum(1)
        return torch.where((lengths > 0).view(B, 1), v, torch.zeros_like(v))

    # The same pooling, updated one chunk at a time (unidirectional stacks only): a dict of
    # fixed-size tensors, whatever the number of chunks.
    def pool_init(self, like: Tensor) -> dict[str, Tensor]:
        D = self.rnn.output_size
        z = like.new_zeros(1, D)
        ps = {"n": like.new_zeros(())}
        if self.pool == "mean":
            ps["sum"] = z
        elif self.pool == "max":
            ps["max"] = z.fill_(-math.inf)
        elif self.pool == "attention":
            ps.update(m=like.new_full((), -math.inf), z=like.new_zeros(()), acc=z)
        return ps

    def pool_update(self, ps: dict[str, Tensor], out: Tensor) -> dict[str, Tensor]:
        """Fold a chunk's outputs ``(1, t, D)`` into the pooling state (a new dict)."""
        ps = {**ps, "n": ps["n"] + out.shape[1]}
        if self.pool == "mean":
            ps["sum"] = ps["sum"] + out.sum(1)
        elif self.pool == "max":
            ps["max"] = torch.maximum(ps["max"], out.amax(1))
        elif self.pool == "attention":   # online softmax: rescale to the new running maximum
            s = self.attn(out).squeeze(-1)[0]                                 # (t,)
            m = torch.maximum(ps["m"], s.max())
            w = torch.exp(s - m)
            scale = torch.exp(ps["m"] - m)
            ps.update(m=m, z=ps["z"] * scale + w.sum(),
                      acc=ps["acc"] * scale + (w.view(1, -1, 1) * out).sum(1))
        return ps

    def pool_read(self, ps: dict[str, Tensor], state: State) -> Tensor:
        """Pooled vector ``(1, D)`` of everything folded in so far (zeros before any token)."""
        if float(ps["n"]) == 0:
            return torch.zeros(1, self.rnn.output_size)
        if self.pool == "last":
            h = state[0] if isinstance(state, tuple) else state
            return h[-1]
        if self.pool == "mean":
            return ps["sum"] / ps["n"]
        if self.pool == "max":
            return ps["max"]
        return ps["acc"] / ps["z"]
