"""The translator in the trainer's protocol: teacher-forced cross-entropy (label smoothing
optional) over length-bucketed pair batches; validation loss, chrF and BLEU of greedy
translations (the best checkpoint is kept by chrF)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.data import Tokenizer, build_tokenizer, tokenizer_from_json
from rnnkit.tasks.common import resumed_split, without
from rnnkit.tasks.translate.data import (
    PairStream,
    Split,
    make_split,
    read_pairs,
    synthetic_pairs,
)
from rnnkit.tasks.translate.memory import Memory, with_match
from rnnkit.tasks.translate.metrics import scores
from rnnkit.tasks.translate.model import build_model, score_targets, translate_ids


def load_split(s: dict[str, Any]) -> Split:
    """The split of a run's ``settings`` (a file, or the built-in corpus)."""
    pairs = (read_pairs(s["data"], s.get("source_column"), s.get("target_column"))
             if s.get("data") else synthetic_pairs(s.get("synthetic_size", 8000), 0))
    return make_split(pairs, test_fraction=s["test_fraction"],
                      valid_fraction=s["valid_fraction"], seed=s["split_seed"])


def cut(ids: list[int], max_len: int | None) -> tuple[list[int], bool]:
    """``ids`` cut to ``max_len`` tokens, and whether it was cut."""
    if max_len is None or len(ids) <= max_len:
        return ids, False
    return ids[:max_len], True


def encode_sources(tok: Tokenizer, texts: Sequence[str], max_len: int | None,
                   memory: Memory | None = None, tgt_tok: Tokenizer | None = None,
                   training: bool = False) -> tuple[list[list[int]], list[bool]]:
    """Encoder inputs of ``texts``: their ids (``[<unk>]`` for a text with none), or under
    a translation ``memory`` :func:`~rnnkit.tasks.translate.memory.with_match` of them, the
    separator of each match's similarity band and the ``tgt_tok`` ids of the match, each part
    cut to ``max_len``; and per text whether anything was cut. ``training``: ``texts`` are the
    memory's own sources (none matched with itself)."""
    out, was_cut = [], []
    matches, seps = memory.lookup(texts, training) if memory else (None, None)
    for i, a in enumerate(texts):
        x, c = cut(tok.encode(a), max_len)
        x = x or [tok.unk_id]
        if memory is not None:
            assert tgt_tok is not None and matches is not None and seps is not None
            y, c2 = cut(tgt_tok.encode(matches[i]), max_len)
            x, c = with_match(x, y, tok.vocab_size, seps[i], memory.n_sep), c or c2
        out.append(x)
        was_cut.append(c)
    return out, was_cut


class TranslateTask:
    """What :func:`rnnkit.train.train` needs, from a :class:`Split`, the run's ``settings``
    and the model config; tokenizers are trained on the training pairs (or given, on
    resume). Target ids: the tokenizer's ``0 .. V-1``, then BOS ``V`` and EOS ``V + 1``."""

    name = "translate"
    unit = "sentences"
    loss_label = "cross-entropy (nats per target token)"

    def __init__(self, split: Split, settings: dict[str, Any], model_cfg: dict[str, Any],
                 src_tok: Tokenizer | None = None, tgt_tok: Tokenizer | None = None) -> None:
        s = self.settings = settings
        self.split = split
        # --fuzzy: the translation memory of the training pairs (memory.py)
        self.memory = (Memory(*split.train, min_sim=s.get("fuzzy_min", 0.5),
                              bands=s.get("fuzzy_bands") or ()) if s.get("fuzzy") else None)
        self.tgt_tok = tgt_tok or build_tokenizer(s["tgt_tokenizer"], split.train[1],
                                                  vocab_size=s.get("tgt_vocab_size"),
                                                  min_freq=s.get("min_freq", 1))
        # --copy-source: the source is read in the target's pieces, so its ids are target
        # ids the decoder can copy (option names, placeholders, file names)
        self.src_tok = self.tgt_tok if s.get("copy_source") else (
            src_tok or build_tokenizer(s["src_tokenizer"], split.train[0],
                                       vocab_size=s.get("src_vocab_size"),
                                       min_freq=s.get("min_freq", 1)))
        V = self.tgt_tok.vocab_size
        self.bos, self.eos = V, V + 1
        n_sep = self.memory.n_sep if self.memory else 0
        n_src = self.src_tok.vocab_size + (n_sep + V if self.memory else 0)
        self.model_cfg = {**model_cfg, "src_vocab": n_src,
                          "tgt_vocab": V + 2, "bos": V, "eos": V + 1}
        if self.memory and s.get("copy"):   # the match's pieces: ids Vs + n_sep + t
            self.model_cfg["copy_offset"] = self.src_tok.vocab_size + n_sep
        if s.get("copy_source"):            # the source's pieces: target ids 2 .. V - 1
            self.model_cfg["copy_below"] = V
        if self.memory:
            sha = self.memory.sha256()
            if s.setdefault("memory_sha256", sha) != sha:
                raise ValueError(f"the training pairs of {s.get('data')} differ from the ones "
                                 f"this run's translation memory was made of; cannot resume")
        self.cut: dict[str, int] = {"train": 0, "valid": 0}
        self.train = self._encode("train", *split.train)
        self.valid = self._encode("valid", *split.valid)
        n = s.get("eval_sentences") or len(self.valid[0])
        self.eval_part = (self.valid[0][:n], split.valid[1][:n], self.valid[1][:n])
        self.batch_size, self.seed = s["batch_size"], s["seed"]
        self.steps_per_epoch = math.ceil(len(self.train[0]) / self.batch_size)

    def _encode(self, name: str, src: list[str], tgt: list[str]
                ) -> tuple[list[list[int]], list[list[int]]]:
        m = self.settings.get("max_len")
        es, was_cut = encode_sources(self.src_tok, src, m, self.memory, self.tgt_tok,
                                     training=name == "train")
        et = []
        for b, c in zip(tgt, was_cut, strict=True):
            y, c2 = cut(self.tgt_tok.encode(b), m)
            et.append(y)
            self.cut[name] = self.cut.get(name, 0) + (c or c2)
        return es, et

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TranslateTask:
        s = config["settings"]
        split = resumed_split(load_split(s), s, "rows", "pairs")
        return cls(split, s, without(config["model"], "src_vocab", "tgt_vocab", "bos", "eos",
                                     "copy_offset", "copy_below"),
                   tokenizer_from_json(config["src_tokenizer"]),
                   tokenizer_from_json(config["tgt_tokenizer"]))

    def build_model(self) -> nn.Module:
        return build_model(self.model_cfg)

    def batches(self, rank: int, world: int) -> PairStream:
        return PairStream(*self.train, self.batch_size, self.seed, self.bos, self.eos, rank,
                          world)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], carry: Any
             ) -> tuple[Tensor, None, int]:
        # logits, or log p under --copy (which cross_entropy's log_softmax leaves as it is)
        logits = model(batch["src"], batch["src_len"], batch["y_in"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["y_out"].flatten(), ignore_index=0,
                               label_smoothing=self.settings.get("label_smoothing", 0.0))
        return loss, None, len(batch["src_len"])

    def nll(self, model: nn.Module, src: list[list[int]], tgt: list[list[int]],
            batch_size: int = 128) -> float:
        """Teacher-forced nats per target token (EOS included): :func:`score_targets`."""
        lp = score_targets(model, src, tgt, batch_size)
        return -sum(lp) / max(sum(len(t) + 1 for t in tgt), 1)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        src, refs, tgt = self.eval_part
        hyps = [self.tgt_tok.decode(h[0].tokens) for h in translate_ids(
            model, src, ratio=self.settings["max_ratio"], extra=self.settings["max_extra"])]
        m = scores(hyps, refs, self.settings["target_lang"])
        return {"loss": self.nll(model, src, tgt), "chrf": m["chrf"], "bleu": m["bleu"]}

    def config(self) -> dict[str, Any]:
        sp = self.split
        return {"task": self.name, "model": self.model_cfg, "settings": self.settings,
                "src_tokenizer": self.src_tok.to_json(), "tgt_tokenizer": self.tgt_tok.to_json(),
                "data": {"train": len(sp.train[0]), "valid": len(sp.valid[0]),
                         "test": len(sp.test[0]), "skipped": sp.record["skipped"],
                         "cut": self.cut, "columns": sp.record["columns"]}}
