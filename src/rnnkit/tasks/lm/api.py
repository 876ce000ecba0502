"""A trained language model from Python::

    lm = rnnkit.load("runs/lm-lstm-...")        # or rnnkit.tasks.lm.load
    lm.sample("def ", length=200, temperature=0.8, seed=0)
    for piece in lm.generate("def "): ...        # text as it is produced
    lm.bits_per_char(open("f.py").read())
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit import checkpoint as ckpt
from rnnkit.data import Tokenizer, tokenizer_from_json
from rnnkit.tasks.common import run_config
from rnnkit.tasks.lm.model import build_model
from rnnkit.tasks.lm.ngram import NGramLM
from rnnkit.tasks.lm.task import bits_per_char

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer, dict]:
    """(model in eval mode, tokenizer, config) of a run folder (best/, else last/) or a
    checkpoint folder."""
    d, config = run_config(run_dir, "lm", "a language model")
    m = config.get("model")
    if not isinstance(m, dict) or "cell" not in m:
        raise ValueError(f"{d / ckpt.CONFIG} has no model description ('model' with 'cell')")
    if m["cell"] == "ngram":
        tensors, _ = ckpt.read_tensors(d / ckpt.MODEL)
        model: nn.Module = NGramLM.from_state(tensors, m["vocab_size"], m["order"])
    else:
        model = ckpt.build_checked(lambda: build_model(m), d).to(device)
    return model.eval(), tokenizer_from_json(config["tokenizer"]), config


@torch.no_grad()
def generate(model: nn.Module, tok: Tokenizer, prime: str = "", length: int = 500,
             temperature: float = 0.8, top_k: int | None = None, seed: int | None = None,
             step: StepFn | None = None) -> Iterator[str]:
    """Yield text as it is produced: the prime is read once, then one ``step`` per token,
    carrying the recurrent state. ``temperature <= 0`` is greedy (argmax). ``step(ids (1,),
    state) -> (logits (1, V), state)`` defaults to ``model.step`` (swap in a faster kernel)."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be >= 1, got {top_k}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    step = step or model.step
    dev = next(iter(model.buffers()), next(model.parameters(), None))
    dev = dev.device if dev is not None else torch.device("cpu")
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed if seed is not None else int(time.time_ns() % 2**62))
    ids = tok.encode(prime)
    if not ids:  # start as at the beginning of a line
        nl = tok.encode("\n")
        ids = nl if nl and nl[0] != tok.unk_id else [2 if tok.vocab_size > 2 else 0]
    else:
        yield prime
    logits, state = None, None
    for i in ids:  # the prime, once (a full forward would do the same; see the tests)
        logits, state = step(torch.tensor([i], device=dev), state)
    dec = tok.stream_decoder()
    for k in range(length):
        lg = logits[0].float().clone()
        lg[[tok.pad_id, tok.unk_id]] = -math.inf  # never emit padding or the unknown marker
        if temperature <= 0:
            nxt = int(lg.argmax())
        else:
            lg = lg / temperature
            if top_k is not None and top_k < lg.numel():
                lg[lg < torch.topk(lg, top_k).values[-1]] = -math.inf
            nxt = int(torch.multinomial(torch.softmax(lg, -1), 1, generator=gen))
        piece = dec.feed(nxt)
        if piece:
            yield piece
        if k + 1 < length:
            logits, state = step(torch.tensor([nxt], device=dev), state)
    rest = dec.flush()
    if rest:
        yield rest


class LanguageModel:
    """A trained language model with its tokenizer (see :func:`load`)."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, config: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config

    def generate(self, prime: str = "", length: int = 500, temperature: float = 0.8,
                 top_k: int | None = None, seed: int | None = None) -> Iterator[str]:
        return generate(self.model, self.tokenizer, prime, length, temperature, top_k, seed)

    def sample(self, prime: str = "", length: int = 500, temperature: float = 0.8,
               top_k: int | None = None, seed: int | None = None) -> str:
        """``prime`` followed by ``length`` generated tokens."""
        return "".join(self.generate(prime, length, temperature, top_k, seed))

    def nats_per_token(self, text: str, rows: int | None = None) -> tuple[float, int]:
        """(mean nats per predicted token, number of tokens) of ``text``."""
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        if len(ids) < 2:
            raise ValueError(f"the text has {len(ids)} token(s); need at least 2 to score it")
        if isinstance(self.model, NGramLM):
            return self.model.nll(ids), len(ids)
        return self.model.nll(ids, rows=rows or self.config.get("eval_rows", 16)), len(ids)

    def bits_per_char(self, text: str, rows: int | None = None) -> float:
        """Bits per character of ``text`` (token losses summed over its characters)."""
        nats, n = self.nats_per_token(text, rows)
        return bits_per_char(nats, n, len(text))


def load(run_dir: str | Path, device: str = "cpu") -> LanguageModel:
    """The language model of a run folder (its ``best/`` checkpoint) or a checkpoint folder."""
    return LanguageModel(*load_run(run_dir, device))


def sample_text(run_dir: str | Path, **kw: Any) -> str:
    return load(run_dir).sample(**kw)
