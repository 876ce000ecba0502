"""The translation model: :class:`rnnkit.seq2seq.Seq2Seq` (encoder–decoder with attention,
source ids ``(B, S)`` → target logits ``(B, T, V)``), built from a run's model config, and
decoding of token-id lists in length-sorted batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rnnkit.seq2seq import (
    Hypothesis,
    Seq2Seq,
    beam_search,
    greedy_search,
    length_penalty,
    max_lengths,
)
from rnnkit.tasks.translate.data import collate


def build_model(cfg: dict[str, Any]) -> Seq2Seq:
    """``cfg``: ``src_vocab``, ``tgt_vocab``, ``bos``, ``eos`` and :class:`Seq2Seq`'s
    keyword arguments."""
    cfg = dict(cfg)
    return Seq2Seq(cfg.pop("src_vocab"), cfg.pop("tgt_vocab"), **cfg)


@torch.no_grad()
def translate_ids(model: Seq2Seq, srcs: Sequence[list[int]], *, beam: int = 1,
                  alpha: float = 0.6, n_best: int = 1, ratio: float = 2.0, extra: int = 10,
                  block_ngram: int = 0, batch_size: int = 64, attention: bool = False,
                  candidates: Sequence[list[int]] | None = None) -> list[list[Hypothesis]]:
    """Decode every source (a non-empty id list): greedy for ``beam == 1`` (then ``n_best``
    must be 1), else beam search; at most ``ratio * len(source) + extra`` tokens each. Never
    emits padding, ``<unk>`` or BOS. ``candidates``: per source one more target (token ids;
    empty for none, e.g. a translation memory's match), scored by the model by teacher
    forcing like a finished hypothesis (log-probability with EOS, over the length penalty
    under beam search) and ranked among the searched ones. Returns per source its
    hypotheses, best first (model put in eval mode and back)."""
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
    if candidates is not None:
        _rank_candidates(model, srcs, candidates, out, beam, alpha, n_best, attention,
                         batch_size)
    model.train(was)
    return out


@torch.no_grad()
def score_targets(model: Seq2Seq, srcs: Sequence[list[int]], tgts: Sequence[list[int]],
                  batch_size: int = 64) -> list[float]:
    """Teacher-forced log-probability of each target given its source, EOS included (the
    model in the mode it is in: eval for decoding and evaluation)."""
    out: list[float] = []
    dev = next(model.parameters()).device
    for k in range(0, len(srcs), batch_size):
        b = collate(srcs[k:k + batch_size], tgts[k:k + batch_size], model.bos, model.eos)
        b = {key: v.to(dev) for key, v in b.items()}
        lp = model(b["src"], b["src_len"], b["y_in"]).float()              # (B, T, V)
        if not model.copies:                                              # logits
            lp = torch.log_softmax(lp, -1)
        y = b["y_out"]
        out += (lp.gather(-1, y[..., None])[..., 0] * (y != 0)).sum(1).tolist()
    return out


def _rank_candidates(model: Seq2Seq, srcs: Sequence[list[int]],
                     candidates: Sequence[list[int]], out: list[list[Hypothesis]], beam: int,
                     alpha: float, n_best: int, attention: bool, batch_size: int) -> None:
    """Put each source's candidate among its hypotheses ``out`` (in place), by score."""
    if len(candidates) != len(srcs):
        raise ValueError(f"expected one candidate per source, got {len(candidates)} for "
                         f"{len(srcs)} sources")
    forbid = {0, 1, model.bos, model.eos}
    idx = [i for i, c in enumerate(candidates) if c and not forbid & set(c)]
    lps = score_targets(model, [srcs[i] for i in idx], [candidates[i] for i in idx],
                        batch_size)
    for i, lp in zip(idx, lps, strict=True):
        toks = list(candidates[i])
        if any(h.tokens == toks for h in out[i]):
            continue
        score = lp if beam == 1 else lp / length_penalty(len(toks) + 1, alpha)
        if len(out[i]) >= n_best and score <= out[i][n_best - 1].score:
            continue
        h = Hypothesis(toks, lp, score)
        if attention:   # its teacher-forced weights (len + 1, S), as decoding would give
            b = collate([srcs[i]], [toks], model.bos, model.eos)
            h.attention = model.attention_weights(b["src"], b["src_len"], b["y_in"])[0]
        out[i] = sorted([*out[i], h], key=lambda x: -x.score)[:n_best]
