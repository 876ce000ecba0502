"""The language model in the trainer's protocol: next-token cross-entropy over truncated-BPTT
batches, the recurrent state carried between batches; validation in nats per token and bits per
*character* (the sum of the token losses over the validation text's characters, so a jamo
tokenizer's score is comparable with a character one's)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.tasks.lm.data import LMData, TokenStream, load_data
from rnnkit.tasks.lm.model import build_model
from rnnkit.train import pick_device

LN2 = math.log(2)


def bits_per_char(nats_per_token: float, n_tokens: int, n_chars: int) -> float:
    """Bits per character of a text of ``n_chars`` characters and ``n_tokens`` tokens scored
    at ``nats_per_token`` over its ``n_tokens - 1`` predictions: the token losses summed over
    the characters (equal to nats / ln 2 for a character tokenizer)."""
    return nats_per_token * (n_tokens - 1) / max(1, n_chars - 1) / LN2


class LMTask:
    """Task protocol of :mod:`rnnkit.train` for a recurrent character language model."""

    name = "lm"

    def __init__(self, data: LMData, model: dict[str, Any], batch: int = 32, seq: int = 100,
                 eval_rows: int = 16, precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.data, self.batch, self.seq, self.eval_rows = data, batch, seq, eval_rows
        self.precision = precision
        self.model_cfg = {**model, "vocab_size": data.tokenizer.vocab_size}
        self.unit = "chars" if data.tokenizer.kind == "char" else "tokens"
        per = "char" if data.tokenizer.kind == "char" else data.tokenizer.kind
        self.loss_label = f"cross-entropy (nats per {per})"
        self.baselines: dict[str, float] = {}
        TokenStream(data.train, batch, seq)  # fail early: corpus shorter than one batch
        self.steps_per_epoch = max(1, (len(data.train) - 1) // (batch * seq))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LMTask:
        """The task of a saved run: same split (checked unchanged), same tokenizer."""
        data = load_data(config["data"], config["tokenizer"])
        if len(data.train) != config["data"]["train_tokens"]:
            raise ValueError(f"the corpus changed since the run started ({len(data.train)} "
                             f"training tokens now, {config['data']['train_tokens']} then); "
                             f"cannot resume exactly")
        model = {k: v for k, v in config["model"].items() if k != "vocab_size"}
        return cls(data, model, config["batch"], config["seq"], config["eval_rows"],
                   config.get("precision", "fp32"))

    def build_model(self) -> nn.Module:
        return build_model(self.model_cfg)

    def batches(self, rank: int, world: int) -> TokenStream:
        return TokenStream(self.data.train, self.batch, self.seq, rank, world)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], carry: Any
             ) -> tuple[Tensor, Any, int]:
        x = batch["x"]
        # bf16: mixed precision for the training forward (and so backward) pass only; the
        # weights, the optimizer and every evaluation stay float32
        with torch.autocast(x.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            logits, carry = model(x[:, :-1], None if bool(batch["reset"]) else carry)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        return loss, carry, x[:, 1:].numel()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        nats = model.nll(self.data.valid, rows=self.eval_rows)
        return {"loss": nats, "bpc": bits_per_char(nats, len(self.data.valid),
                                                    self.data.valid_chars)}

    def config(self) -> dict[str, Any]:
        return {"task": "lm", "model": self.model_cfg, "tokenizer": self.data.tokenizer.to_json(),
                "data": {**self.data.source, "train_tokens": len(self.data.train),
                         "valid_tokens": len(self.data.valid),
                         "valid_chars": self.data.valid_chars},
                "batch": self.batch, "seq": self.seq, "eval_rows": self.eval_rows,
                "precision": self.precision}


def native_bf16() -> bool:
    """True on an x86 CPU with bfloat16 instructions (avx512_bf16 or AMX), as Linux reports
    them in /proc/cpuinfo; False elsewhere (there bf16 would be emulated, slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(precision: str, device: str = "auto") -> str:
    """``auto`` -> ``bf16`` when training runs on a CPU with native bfloat16, else ``fp32``."""
    if precision != "auto":
        return precision
    return "bf16" if pick_device(device).type == "cpu" and native_bf16() else "fp32"
