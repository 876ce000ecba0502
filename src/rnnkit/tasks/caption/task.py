"""The captioner in the trainer's protocol: teacher-forced cross-entropy over (image, caption)
pairs of the training images; validation loss, chrF, BLEU and exact match of greedy captions
(the best checkpoint is kept by chrF)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.data import Tokenizer, build_tokenizer, tokenizer_from_json
from rnnkit.tasks.caption.data import CaptionStream, Split, collate, load_captions, make_split
from rnnkit.tasks.caption.metrics import caption_scores
from rnnkit.tasks.caption.model import build_model, caption_ids
from rnnkit.tasks.common import resumed_split, without


def load_split(s: dict[str, Any]) -> Split:
    """The split of a run's ``settings``."""
    data = load_captions(s.get("data"), size=s.get("data_size", 3000),
                         image_size=s.get("image_size"), lang=s.get("lang", "en"))
    return make_split(data, test_fraction=s["test_fraction"],
                      valid_fraction=s["valid_fraction"], seed=s["split_seed"])


class CaptionTask:
    """What :func:`rnnkit.train.train` needs, from a :class:`Split`, the run's ``settings``
    and the model config. Word tokenizer trained on the training captions; word ids
    ``0 .. V-1``, then BOS ``V`` and EOS ``V + 1``."""

    name = "caption"
    unit = "captions"
    loss_label = "cross-entropy (nats per caption token)"

    def __init__(self, split: Split, settings: dict[str, Any], model_cfg: dict[str, Any],
                 tok: Tokenizer | None = None) -> None:
        self.split = split
        s = self.settings = settings
        d = split.data
        self.tok = tok or build_tokenizer("word", [c for i in split.train for c in d.captions[i]],
                                          min_freq=s.get("min_freq", 1), lowercase=True)
        V = self.tok.vocab_size
        self.bos, self.eos = V, V + 1
        self.model_cfg = {**model_cfg, "vocab": V + 2, "bos": V, "eos": V + 1,
                          "image_size": list(d.images.shape[2:])}
        self.pairs = [(i, self.tok.encode(c)[:s["max_len"]]) for i in split.train
                      for c in d.captions[i]]
        self.pairs = [(i, c) for i, c in self.pairs if c]
        n = s.get("eval_images") or len(split.valid)
        self.eval_idx = split.valid[:n]
        self.batch_size, self.seed = s["batch_size"], s["seed"]
        self.steps_per_epoch = math.ceil(len(self.pairs) / self.batch_size)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CaptionTask:
        s = config["settings"]
        split = resumed_split(load_split(s), s, "images", "images")
        model = without(config["model"], "vocab", "bos", "eos", "image_size")
        return cls(split, s, model, tokenizer_from_json(config["tokenizer"]))

    def build_model(self) -> nn.Module:
        return build_model(self.model_cfg)

    def batches(self, rank: int, world: int) -> CaptionStream:
        return CaptionStream(self.split.data.images, self.pairs, self.batch_size, self.seed,
                             self.bos, self.eos, rank, world)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], carry: Any
             ) -> tuple[Tensor, None, int]:
        """Summed token cross-entropy over this rank's rows / (global tokens / world): the
        mean over processes is the global batch's mean per token."""
        logits = model(batch["images"], batch["y_in"])
        tot = F.cross_entropy(logits.flatten(0, 1), batch["y_out"].flatten(), ignore_index=0,
                              reduction="sum")
        return tot / batch["tokens"], None, len(batch["y_in"])

    def nll(self, model: nn.Module, idx: list[int], batch_size: int = 128) -> float:
        """Teacher-forced nats per caption token (EOS included) over every caption of the
        images ``idx``."""
        d = self.split.data
        pairs = [(i, self.tok.encode(c)[:self.settings["max_len"]]) for i in idx
                 for c in d.captions[i]]
        pairs = [(i, c) for i, c in pairs if c]
        dev = next(model.parameters()).device
        tot, n = 0.0, 0
        with torch.no_grad():
            for k in range(0, len(pairs), batch_size):
                p = pairs[k:k + batch_size]
                b = collate(d.images[[i for i, _ in p]], [c for _, c in p], self.bos, self.eos)
                lg = model(b["images"].to(dev), b["y_in"].to(dev))
                y = b["y_out"].to(dev)
                tot += float(F.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=0,
                                             reduction="sum"))
                n += int((y != 0).sum())
        return tot / max(n, 1)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        d = self.split.data
        idx = self.eval_idx
        hyps = [self.tok.decode(h.tokens) for h in caption_ids(
            model, d.images[idx], max_len=self.settings["max_len"])]
        refs = [[self.norm(c) for c in d.captions[i]] for i in idx]
        m = caption_scores(hyps, refs, self.settings["lang"])
        return {"loss": self.nll(model, idx), "chrf": m["chrf"], "bleu": m["bleu"],
                "exact": m["exact"]}

    def norm(self, caption: str) -> str:
        """A reference as the model can write it: its words, lowercased, joined by spaces."""
        return " ".join(self.tok.split(caption))

    def config(self) -> dict[str, Any]:
        sp = self.split
        return {"task": self.name, "model": self.model_cfg, "settings": self.settings,
                "tokenizer": self.tok.to_json(),
                "data": {"train": len(sp.train), "valid": len(sp.valid), "test": len(sp.test),
                         "pairs": len(self.pairs), "skipped": sp.record["skipped"]}}
