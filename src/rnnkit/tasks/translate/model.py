"""The translation model: :class:`rnnkit.seq2seq.Seq2Seq` (encoder–decoder with attention,
source ids ``(B, S)`` → target logits ``(B, T, V)``), built from a run's model config, and
decoding of token-id lists in length-sorted batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rnnkit.seq2seq import Hypothesis, Seq2Seq, beam_search, greedy_search, max_lengths
from rnnkit.tasks.translate.data import collate


def build_model(cfg: dict[str, Any]) -> Seq2Seq:
    """``cfg``: ``src_vocab``, ``tgt_vocab``, ``bos``, ``eos`` and :class:`Seq2Seq`'s
    keyword arguments."""
    cfg = dict(cfg)
    return Seq2Seq(cfg.pop("src_vocab"), cfg.pop("tgt_vocab"), **cfg)


@torch.no_grad()
def translate_ids(model: Seq2Seq, srcs: Sequence[list[int]], *, beam: int = 1,
                  alpha: float = 0.6, n_best: int = 1, ratio: float = 2.0, extra: int = 10,
                  block_ngram: int = 0, batch_size: int = 64, attention: bool = False
                  ) -> list[list[Hypothesis]]:
    """Decode every source (a non-empty id list): greedy for ``beam == 1`` (then ``n_best``
    must be 1), else beam search; at most ``ratio * len(source) + extra`` tokens each. Never
    emits padding, ``<unk>`` or BOS. Returns per source its hypotheses, best first (model put
    in eval mode and back)."""
    if any(len(s) == 0 for s in srcs):
        raise ValueError("every source needs at least one token (got an empty one)")
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    forbid = (0, 1, model.bos)
    order = sorted(range(len(srcs)), key=lambda i: len(srcs[i]))
    out: list[list[Hypothesis]] = [[] for _ in srcs]
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        b = collate([srcs[i] for i in idx], None, model.bos, model.eos)
        src, src_len = b["src"].to(dev), b["src_len"].to(dev)
        lens = max_lengths(src_len, ratio, extra)
        if beam == 1 and n_best == 1:
            step, st = model.decoding(src, src_len)
            res = [[h] for h in greedy_search(step, st, lens, bos=model.bos, eos=model.eos,
                                               forbid=forbid, attention=attention)]
        else:
            step, st = model.decoding(src, src_len, repeat=beam)
            res = beam_search(step, st, lens, beam=beam, bos=model.bos, eos=model.eos,
                              alpha=alpha, n_best=n_best, block_ngram=block_ngram,
                              forbid=forbid, attention=attention)
        for i, r in zip(idx, res, strict=True):
            out[i] = r
    model.train(was)
    return out
