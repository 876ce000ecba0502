"""A trained translator from Python::

    tr = rnnkit.load("runs/translate-...")         # or rnnkit.tasks.translate.load
    tr.translate(["Save the file"], beam=5)        # ['파일 저장']
    tr.translate(["Save the file"], beam=5, n_best=3)   # [[best, second, third]]
    tr.attention("Save the file")                  # (tokens, source pieces, weights (T, S))
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from rnnkit import checkpoint as ckpt
from rnnkit.data import Tokenizer, tokenizer_from_json
from rnnkit.seq2seq import Hypothesis, Seq2Seq
from rnnkit.tasks.common import run_config
from rnnkit.tasks.translate.memory import SEP_TEXT, Memory
from rnnkit.tasks.translate.metrics import scores
from rnnkit.tasks.translate.model import build_model, translate_ids
from rnnkit.tasks.translate.task import encode_sources


class Translator:
    """A trained encoder–decoder with its source and target tokenizers (see :func:`load`)."""

    def __init__(self, model: Seq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 config: dict[str, Any], memory: Memory | None = None) -> None:
        self.model, self.src_tok, self.tgt_tok, self.config = model.eval(), src_tok, tgt_tok, \
            config
        s = config.get("settings", {})
        self.max_len = s.get("max_len")
        self.ratio, self.extra = s.get("max_ratio", 2.0), s.get("max_extra", 10)
        self.lang = s.get("target_lang", "other")
        self.cut = 0  # sources cut to max_len by the last call
        self.memory = memory  # the translation memory of a --fuzzy run

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Encoder inputs (with each text's fuzzy match for a model trained with a
        translation memory), cut to ``max_len`` (counted in ``self.cut``); unknown characters
        become ``<unk>``; an empty text is a ValueError."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text {i} is empty; expected a sentence to translate")
        texts = [t.strip() for t in texts]
        out, was_cut = encode_sources(self.src_tok, texts, self.max_len, self.memory,
                                      self.tgt_tok)
        self.cut = sum(was_cut)
        return out

    def source_pieces(self, ids: Sequence[int]) -> list[str]:
        """How each encoder input id reads (the separator before a fuzzy match as ‖, the
        match's pieces as the target tokenizer's)."""
        sep = self.src_tok.vocab_size
        n = self.memory.n_sep if self.memory else 0
        return [self.src_tok.decode([i]) if i < sep or self.memory is None else
                SEP_TEXT if i < sep + n else self.tgt_tok.decode([i - sep - n])
                for i in ids]

    def match_ids(self, ids: Sequence[int]) -> list[int]:
        """The fuzzy match's target ids inside an encoder input (empty without a memory or
        without a match)."""
        if self.memory is None:
            return []
        first = self.src_tok.vocab_size + self.memory.n_sep
        return [i - first for i in ids if i >= first]

    def hypotheses(self, texts: Sequence[str], beam: int = 5, n_best: int = 1,
                   alpha: float = 0.6, block_ngram: int = 0, attention: bool = False,
                   match_candidate: bool = True) -> list[list[Hypothesis]]:
        """Per text its ``n_best`` hypotheses, best first. ``match_candidate`` (a model with
        a translation memory): the fuzzy match itself is one more candidate, scored by the
        model like the searched ones, so the model can keep a match it finds better than
        its own repairs."""
        if isinstance(texts, str):
            raise ValueError("expected a list of texts, got one string (wrap it in a list)")
        if beam < 1 or not 1 <= n_best <= beam:
            raise ValueError(f"need beam >= 1 and 1 <= n_best <= beam, got beam {beam}, "
                             f"n_best {n_best}")
        ids = self.encode(texts)
        cand = ([self.match_ids(x) for x in ids] if match_candidate and self.memory
                else None)
        return translate_ids(self.model, ids, beam=beam, alpha=alpha, n_best=n_best,
                             ratio=self.ratio, extra=self.extra, block_ngram=block_ngram,
                             attention=attention, candidates=cand)

    def translate(self, texts: Sequence[str], beam: int = 5, n_best: int = 1,
                  alpha: float = 0.6, block_ngram: int = 0, match_candidate: bool = True
                  ) -> list[str] | list[list[str]]:
        """Translations of ``texts``: one string each, or with ``n_best > 1`` a list of the
        ``n_best`` best, best first. ``beam=1`` is greedy decoding. ``match_candidate``: see
        :meth:`hypotheses`."""
        hs = self.hypotheses(texts, beam, n_best, alpha, block_ngram,
                             match_candidate=match_candidate)
        dec = [[self.tgt_tok.decode(h.tokens) for h in hyp] for hyp in hs]
        return [d[0] for d in dec] if n_best == 1 else dec

    def attention(self, text: str, beam: int = 1) -> tuple[list[str], list[str], Tensor]:
        """(target pieces with ``</s>`` last, source pieces, weights ``(T, S)``) of the best
        translation of ``text``."""
        h = self.hypotheses([text], beam, attention=True)[0][0]
        if h.attention is None:
            raise ValueError("this model has no attention (it was trained with --attention "
                             "none)")
        src = self.source_pieces(self.encode([text])[0])
        tgt = [self.tgt_tok.decode([i]) for i in h.tokens]
        tgt = [*tgt, "</s>"] if len(tgt) < h.attention.shape[0] else tgt
        return tgt, src, h.attention[:len(tgt)]

    def evaluate(self, src: Sequence[str], refs: Sequence[str], beam: int = 5,
                 alpha: float = 0.6, match_candidate: bool = True) -> dict[str, Any]:
        """chrF and BLEU (sacrebleu, with signatures) of the translations of ``src``."""
        hyps = self.translate(src, beam=beam, alpha=alpha, match_candidate=match_candidate)
        return {**scores(hyps, refs, self.lang), "n": len(src), "beam": beam}


def load(run_dir: str | Path, device: str = "cpu") -> Translator:
    """The translator of a run folder (its ``best/`` checkpoint) or a checkpoint folder."""
    src, cfg = run_config(run_dir, "translate", "a translation model")
    model = ckpt.build_checked(lambda: build_model(cfg["model"]), src)
    s = cfg.get("settings", {})
    memory = (Memory.load(src, s.get("memory_sha256"), s.get("fuzzy_min", 0.5),
                          s.get("fuzzy_bands") or ()) if s.get("fuzzy") else None)
    return Translator(model.to(device), tokenizer_from_json(cfg["src_tokenizer"]),
                      tokenizer_from_json(cfg["tgt_tokenizer"]), cfg, memory)


def warn_cut(tr: Translator) -> None:
    if tr.cut:
        print(f"rnnkit: {tr.cut} source(s) longer than {tr.max_len} tokens were cut",
              file=sys.stderr)
