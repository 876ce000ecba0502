"""The character language model: embedding -> rnnkit recurrent stack -> linear head.

``CharLM(vocab_size, cell, hidden, layers, embed, dropout, tie)`` maps token ids ``(B, T)`` to
next-token logits ``(B, T, V)`` and the new recurrent state; ``step`` is one token per row
(generation), ``nll`` scores a whole text with its history carried in the state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data import Tokenizer
from rnnkit.layers import CELLS
from rnnkit.tasks.lm.ngram import NGramLM


class CharLM(nn.Module):
    """``x`` ``(B, T)`` ids -> logits ``(B, T, V)`` and the new recurrent state."""

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden: int = 512, layers: int = 1,
                 embed: int = 64, dropout: float = 0.0, tie: bool = False) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)} (or ngram), got {cell!r}")
        if tie and embed != hidden:
            raise ValueError(f"--tie needs the embedding size to equal the hidden size, got "
                             f"embed={embed}, hidden={hidden}")
        self.emb = nn.Embedding(vocab_size, embed)
        self.rnn = CELLS[cell](embed, hidden, num_layers=layers,
                               dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        out, state = self.rnn(self.drop(self.emb(x)), state)  # (B, T, H)
        return self.head(self.drop(out)), state

    def step(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One token per row: ``ids`` ``(B,)`` -> logits ``(B, V)`` for the next one. In eval
        mode without autograd it runs the layer's stepper (weights prepared once, no per-call
        overhead: the generation fast path); otherwise the layer itself on ``(B, 1)``."""
        if self.training or torch.is_grad_enabled():
            logits, state = self(ids[:, None], state)
            return logits[:, 0], state
        h, state = self.rnn.stepper(len(ids))(self.emb(ids), state)
        return self.head(h), state

    @torch.no_grad()
    def nll(self, ids: Tensor, rows: int = 16, chunk: int = 1000, warmup: int = 200) -> float:
        """Mean nats per token of ``ids[1:]``, every token scored once with its whole history
        carried in the state, read as ``rows`` parallel contiguous slices (in chunks of
        ``chunk`` tokens). Slice r >= 1 first reads the ``warmup`` tokens before it, unscored,
        so its state is warm when scoring starts; slice 0 starts at the start of the text.
        ``rows=1`` is the plain sequential pass."""
        dev = next(self.parameters()).device
        n = len(ids) - 1  # predictions
        W = warmup if n > warmup + 2 * rows else 0
        rows = max(1, min(rows, n - W))
        L = -(-(n - W) // rows)  # scored tokens per slice r >= 1; slice 0 scores W + L
        padded = torch.full((W + rows * L + 1,), Tokenizer.pad_id, dtype=torch.long)
        padded[: n + 1] = ids
        idx = torch.arange(rows)[:, None] * L + torch.arange(W + L)[None]  # (rows, W+L)
        x, y = padded[idx], padded[idx + 1].clone()
        y[idx >= n] = -100  # past the end
        y[1:, :W] = -100  # warm-up of slices r >= 1
        x, y = x.to(dev), y.to(dev)
        total, state = 0.0, None
        for s in range(0, W + L, chunk):
            logits, state = self(x[:, s: s + chunk], state)
            total += float(nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y[:, s: s + chunk].flatten(), ignore_index=-100,
                reduction="sum"))
        return total / n


def build_model(m: dict[str, Any]) -> nn.Module:
    """The model described by ``config["model"]`` (untrained)."""
    if m["cell"] == "ngram":
        return NGramLM(m["vocab_size"], m["order"])
    return CharLM(m["vocab_size"], m["cell"], m["hidden"], m["layers"],
                  m.get("embed", m.get("emb")), m["dropout"], m["tie"])
