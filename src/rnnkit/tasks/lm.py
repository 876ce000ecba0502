"""Character-level language model: ``rnnkit train lm``, ``rnnkit sample``, ``rnnkit eval``.

Model: embedding -> rnnkit RNN/LSTM/GRU stack -> linear head (optionally tied to the
embedding). Training: truncated BPTT over ``batch`` rows, each row reading its own contiguous
slice of the training text, ``seq`` tokens per step, the recurrent state carried from one batch
to the next (detached by the trainer). Validation: nats and bits per token over the whole
validation text, read as ``eval_rows`` contiguous slices that each carry their state through.

Without ``--data`` the corpus is the code of the running Python's standard library (generated
files and character-mapping tables left out), split by file: every held-out file is validation,
the training text is capped at ``--max-chars``. ``--cell ngram --order K`` fits an interpolated
Kneser–Ney n-gram on the same split instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import rnnkit
from rnnkit import checkpoint as ckpt
from rnnkit.data import (
    Tokenizer,
    build_tokenizer,
    join_docs,
    load_corpus,
    read_text_file,
    split_by_file,
    stdlib_corpus,
    tokenizer_from_json,
)
from rnnkit.data.text import spread_select
from rnnkit.tasks.ngram import NGramLM, max_order
from rnnkit.train import TrainConfig, pick_device, train

LN2 = math.log(2)
CELLS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}


# -- model ---------------------------------------------------------------------------------------
class CharLM(nn.Module):
    """``x`` ``(B, T)`` ids -> logits ``(B, T, V)`` and the new recurrent state."""

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden: int = 512, layers: int = 1,
                 emb: int = 64, dropout: float = 0.0, tie: bool = False) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)} (or ngram), got {cell!r}")
        if tie and emb != hidden:
            raise ValueError(f"--tie needs the embedding size to equal the hidden size, got "
                             f"emb={emb}, hidden={hidden}")
        self.emb = nn.Embedding(vocab_size, emb)
        self.rnn = CELLS[cell](emb, hidden, num_layers=layers,
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
    return CharLM(m["vocab_size"], m["cell"], m["hidden"], m["layers"], m["emb"], m["dropout"],
                  m["tie"])


# -- data ----------------------------------------------------------------------------------------
@dataclass
class LMData:
    tokenizer: Tokenizer
    train: Tensor  # (N,) int64 ids
    valid: Tensor  # (M,) int64 ids
    source: dict[str, Any]  # how to read the same split again (stored in config.json)


def read_split(source: dict[str, Any]) -> tuple[str, str]:
    """(train text, validation text) for ``source``: ``{"data": path or None, "max_chars",
    "valid_fraction", "split_seed"}``. One file = its last ``valid_fraction`` is validation; a
    folder = split by file; ``max_chars`` caps the training text. No path = the Python standard
    library's code (:func:`~rnnkit.data.text.stdlib_corpus`: generated files and
    character-mapping tables left out), split by file over the whole library: validation is
    every held-out file, training the other files taken in spread order
    (:func:`~rnnkit.data.text.spread_select`) up to ``max_chars``."""
    path, cap, frac = source.get("data"), source.get("max_chars"), source["valid_fraction"]
    seed = source.get("split_seed", 0)
    if path is None:
        docs = stdlib_corpus()
        if len(docs) < 2:
            raise ValueError("the standard-library corpus is empty on this Python installation; "
                             "give --data PATH")
        tr, va = split_by_file(docs, frac, seed=seed)
        if cap is not None:
            tr = spread_select(tr, cap + 2, size=lambda t: len(t) + 2)  # + "\n\n" between
            if not tr:
                raise ValueError(f"--max-chars {cap:,} is too small: no standard-library file "
                                 f"fits")
        return join_docs(tr), join_docs(va)
    tr, va = split_by_file(load_corpus(path), frac, seed=seed)
    train_text, valid_text = join_docs(tr), join_docs(va)
    if cap is not None and len(train_text) > cap:
        train_text = train_text[:cap]
    return train_text, valid_text


def load_data(source: dict[str, Any], tokenizer: str | dict[str, Any] = "char",
              min_freq: int = 1) -> LMData:
    """Read the split and encode it (training a tokenizer of that kind on the training text,
    or rebuilding a saved one from its JSON)."""
    train_text, valid_text = read_split(source)
    if isinstance(tokenizer, dict):
        tok = tokenizer_from_json(tokenizer)
    else:
        if tokenizer not in ("char", "jamo"):
            raise ValueError(f"--tokenizer must be 'char' or 'jamo' for the language model, got "
                             f"{tokenizer!r}")
        tok = build_tokenizer(tokenizer, [train_text], min_freq=min_freq)
    tr = torch.tensor(tok.encode(train_text), dtype=torch.long)
    va = torch.tensor(tok.encode(valid_text), dtype=torch.long)
    if len(va) < 2:
        raise ValueError(f"the validation text has {len(va)} token(s); it needs at least 2 "
                         f"(give more text or a larger validation fraction)")
    return LMData(tok, tr, va, source)


class TokenStream:
    """Truncated-BPTT batches: ``rows`` contiguous slices of ``ids``, this rank's share of them.

    ``next()`` -> ``{"x": (rows/world, seq+1) ids, "reset": bool tensor}``; consecutive batches
    continue each row where the previous one stopped; at the end of a slice every row starts
    over (``reset`` tells the task to drop the carried state)."""

    def __init__(self, ids: Tensor, rows: int, seq: int, rank: int = 0, world: int = 1) -> None:
        if rows % world:
            raise ValueError(f"--batch {rows} must be divisible by the number of processes "
                             f"({world})")
        n = (len(ids) - 1) // rows
        if n < seq + 1:
            raise ValueError(f"the training text has {len(ids)} tokens; one batch of {rows} rows "
                             f"× {seq + 1} tokens needs at least {rows * (seq + 1) + 1}. Use "
                             f"more text, a smaller --batch or a smaller --seq")
        mine = range(rank * rows // world, (rank + 1) * rows // world)
        self.x = torch.stack([ids[r * n: r * n + n + 1] for r in mine])  # (rows/world, n+1)
        self.seq, self.pos, self.epoch = seq, 0, 0

    def __next__(self) -> dict[str, Tensor]:
        reset = self.pos == 0
        if self.pos + self.seq + 1 > self.x.shape[1]:
            self.pos, self.epoch, reset = 0, self.epoch + 1, True
        chunk = self.x[:, self.pos: self.pos + self.seq + 1]
        self.pos += self.seq
        return {"x": chunk, "reset": torch.tensor(reset)}

    def __iter__(self) -> TokenStream:
        return self

    def state_dict(self) -> dict[str, int]:
        return {"pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.pos, self.epoch = d["pos"], d["epoch"]


# -- the task ------------------------------------------------------------------------------------
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
        TokenStream(data.train, batch, seq)  # fail early: corpus shorter than one batch

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
        return {"loss": nats, "bpc": nats / LN2}

    def config(self) -> dict[str, Any]:
        return {"task": "lm", "model": self.model_cfg, "tokenizer": self.data.tokenizer.to_json(),
                "data": {**self.data.source, "train_tokens": len(self.data.train),
                         "valid_tokens": len(self.data.valid)},
                "batch": self.batch, "seq": self.seq, "eval_rows": self.eval_rows,
                "precision": self.precision}


# -- loading a run, sampling ---------------------------------------------------------------------
def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, Tokenizer, dict]:
    """(model in eval mode, tokenizer, config) of a run folder (best/, else last/) or a
    checkpoint folder."""
    d = ckpt.resolve(run_dir)
    config = ckpt.load_config(d)
    if config.get("task") != "lm":
        raise ValueError(f"{run_dir} is a {config.get('task')!r} run, not a language model")
    m = config["model"]
    if m["cell"] == "ngram":
        tensors, _ = ckpt.read_tensors(d / ckpt.MODEL)
        model: nn.Module = NGramLM.from_state(tensors, m["vocab_size"], m["order"])
    else:
        model = ckpt.load_weights(build_model(m), d).to(device)
    return model.eval(), tokenizer_from_json(config["tokenizer"]), config


StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]


@torch.no_grad()
def generate(model: nn.Module, tok: Tokenizer, prime: str = "", length: int = 500,
             temperature: float = 0.8, top_k: int | None = None, seed: int | None = None,
             step: StepFn | None = None) -> Iterator[str]:
    """Yield text as it is produced: the prime is read once, then one ``step`` per token,
    carrying the recurrent state. ``temperature <= 0`` is greedy (argmax). ``step(ids (1,),
    state) -> (logits (1, V), state)`` defaults to ``model.step`` (swap in a faster kernel)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top-k must be >= 1, got {top_k}")
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


def sample_text(run_dir: str | Path, **kw: Any) -> str:
    model, tok, _ = load_run(run_dir)
    return "".join(generate(model, tok, **kw))


# -- command line --------------------------------------------------------------------------------
# Defaults: tuned for `rnnkit train lm` (the stdlib corpus, 4.25 minutes on two CPU cores, the
# same budget for every candidate, README): an LSTM 1x512 with dropout 0.1, AdamW 3e-3, bf16
# mixed precision where the CPU has it (~4,300 steps) beat 1x256 (~7,000 steps), 1x640 and
# 1x768, without dropout or with 0.2. Validation over 0.75 M characters costs ~5.5 s at 1x512,
# hence an evaluation every 1,000 steps.
MODEL_DEFAULTS = {"cell": "lstm", "hidden": 512, "layers": 1, "emb": 64, "dropout": 0.1,
                  "tie": False, "order": 6}
DATA_DEFAULTS = {"tokenizer": "char", "max_chars": 3_000_000, "valid_fraction": 0.1,
                 "min_freq": 1}
TRAIN_DEFAULTS = {"batch": 32, "seq": 100, "lr": 3e-3, "minutes": 4.25, "eval_every": 1000,
                  "eval_rows": 16, "precision": "auto"}


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


def register_train(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser(
        "lm", help="character-level language model (default corpus: Python's stdlib source)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", help="UTF-8 text file or folder (default: the Python standard library)")
    a("--tokenizer", choices=["char", "jamo"], help="char (default) or jamo (Korean)")
    a("--max-chars", type=int, help="cap on the training text (default: 3,000,000 for the stdlib "
      "corpus, none for --data)")
    a("--min-freq", type=int, help="characters seen fewer times become <unk> (default 1)")
    a("--cell", choices=[*CELLS, "ngram"], help="lstm (default), gru, rnn, or ngram (baseline)")
    a("--hidden", type=int, help="hidden units per layer (default 512)")
    a("--layers", type=int, help="stacked layers (default 1)")
    a("--emb", type=int, help="embedding size (default 64)")
    a("--dropout", type=float, help="dropout on embeddings, between layers and before the head "
      "(default 0.1)")
    a("--tie", action="store_true", default=None, help="tie the head to the embedding "
      "(needs --emb equal to --hidden)")
    a("--order", type=int, help="n-gram order for --cell ngram (default 6)")
    a("--batch", type=int, help="rows per batch (global, over all processes; default 32)")
    a("--seq", type=int, help="BPTT length in tokens (default 100)")
    a("--steps", type=int, help="optimizer steps (budget)")
    a("--minutes", type=float, help="wall-clock budget including evaluation (default 4.25 "
      "when --steps is not given)")
    a("--lr", type=float, default=TRAIN_DEFAULTS["lr"])
    a("--weight-decay", type=float, default=0.0)
    a("--warmup", type=int, default=50)
    a("--clip", type=float, default=1.0, help="gradient-norm clipping (0 = off)")
    a("--eval-every", type=int, help="steps between evaluations (default 1000)")
    a("--eval-rows", type=int, help="parallel slices the validation text is read in (16)")
    a("--precision", choices=["auto", "fp32", "bf16"], help="bf16: bfloat16 mixed precision "
      "for the training forward/backward pass (weights, optimizer and evaluation stay float32). "
      "auto (default): bf16 on a CPU with native bfloat16 instructions (avx512_bf16 or AMX), "
      "fp32 elsewhere (GPUs included)")
    a("--log-every", type=int, default=20)
    a("--seed", type=int, default=0)
    a("--out", help="run folder (default runs/lm-<cell>-<time>)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    a("--baseline-order", type=int, default=9, help="also fit an n-gram of this order (capped "
      "to what 64-bit keys allow: 9 up to 118 symbols, 8 up to 215) on the same split and print "
      "its bits/char (0 = skip)")
    a("--sample-length", type=int, default=400, help="characters sampled at the end (0 = none)")
    a("--no-progress", action="store_true")
    p.set_defaults(func=run_train)


def _pick(args: argparse.Namespace, key: str, defaults: dict[str, Any]) -> Any:
    v = getattr(args, key)
    return defaults[key] if v is None else v


def _check_resume_args(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Options that define the model or data cannot change on --resume."""
    saved = {**config["model"], **{k: config[k] for k in ("batch", "seq", "eval_rows")},
             "data": config["data"].get("data"), "max_chars": config["data"].get("max_chars"),
             "tokenizer": config["tokenizer"]["kind"],
             "precision": config.get("precision", "fp32")}
    for key, have in saved.items():
        given = getattr(args, key, None)
        if given is None or key == "vocab_size":
            continue
        if key == "data":
            given, have = str(Path(given).resolve()), str(have) if have else have
        if key == "precision":
            given = resolve_precision(given)
        if given != have:
            raise ValueError(f"--{key.replace('_', '-')} {given} conflicts with the run being "
                             f"resumed ({key} = {have}); a resumed run keeps its model and "
                             f"data. Start a new run (--out) to change them")


def run_train(args: argparse.Namespace) -> int:
    if args.resume:
        config = ckpt.load_config(args.resume)
        if config.get("task") != "lm":
            raise ValueError(f"{args.resume} is a {config.get('task')!r} run, not a language "
                             f"model")
        _check_resume_args(args, config)
        data = load_data(config["data"], config["tokenizer"])
        if len(data.train) != config["data"]["train_tokens"]:
            raise ValueError(f"the corpus of {args.resume} changed since the run started "
                             f"({len(data.train)} training tokens now, "
                             f"{config['data']['train_tokens']} then); cannot resume exactly")
        model_cfg = {k: v for k, v in config["model"].items() if k != "vocab_size"}
        over = {k: getattr(args, k) for k in ("steps", "minutes") if getattr(args, k)}
        tcfg = TrainConfig.from_json(config["train"], out=args.resume, resume=True,
                                     progress=not args.no_progress, **over)
        task = LMTask(data, model_cfg, config["batch"], config["seq"], config["eval_rows"],
                      config.get("precision", "fp32"))
        return _fit_and_report(task, tcfg, args, baseline=0)

    model_cfg = {k: _pick(args, k, MODEL_DEFAULTS) for k in MODEL_DEFAULTS}
    source = {"data": str(Path(args.data).resolve()) if args.data else None,
              "max_chars": args.max_chars if args.max_chars is not None
              else (DATA_DEFAULTS["max_chars"] if args.data is None else None),
              "valid_fraction": DATA_DEFAULTS["valid_fraction"], "split_seed": 0}
    t = time.perf_counter()
    data = load_data(source, _pick(args, "tokenizer", DATA_DEFAULTS),
                     _pick(args, "min_freq", DATA_DEFAULTS))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"corpus: {'Python stdlib' if args.data is None else args.data} — "
              f"{len(data.train):,} training / {len(data.valid):,} validation tokens, "
              f"vocabulary {data.tokenizer.vocab_size} ({time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
    if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("under torchrun give --out, so that every process names the same run "
                         "folder")
    out = args.out or f"runs/lm-{model_cfg['cell']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if model_cfg["cell"] == "ngram":
        return _fit_ngram(data, model_cfg["order"], out)
    model_cfg.pop("order")
    steps = args.steps
    minutes = args.minutes if args.minutes is not None else (
        None if steps is not None else TRAIN_DEFAULTS["minutes"])
    tcfg = TrainConfig(out=out, steps=steps, minutes=minutes, lr=args.lr,
                       weight_decay=args.weight_decay, warmup=args.warmup,
                       grad_clip=args.clip or None,
                       eval_every=_pick(args, "eval_every", TRAIN_DEFAULTS),
                       log_every=args.log_every, seed=args.seed, progress=not args.no_progress)
    task = LMTask(data, model_cfg, _pick(args, "batch", TRAIN_DEFAULTS),
                  _pick(args, "seq", TRAIN_DEFAULTS), _pick(args, "eval_rows", TRAIN_DEFAULTS),
                  resolve_precision(_pick(args, "precision", TRAIN_DEFAULTS), tcfg.device))
    return _fit_and_report(task, tcfg, args, baseline=args.baseline_order)


def _fit_ngram(data: LMData, order: int, out: str) -> int:
    if (Path(out) / "best" / ckpt.MODEL).is_file():
        raise ValueError(f"{out} already holds a run; choose another output folder")
    t = time.perf_counter()
    model = NGramLM.fit(data.train, data.tokenizer.vocab_size, order)
    nats = model.nll(data.valid)
    config = {"task": "lm", "model": {"cell": "ngram", "order": order,
                                      "vocab_size": data.tokenizer.vocab_size},
              "tokenizer": data.tokenizer.to_json(),
              "data": {**data.source, "train_tokens": len(data.train),
                       "valid_tokens": len(data.valid)}}
    metrics = {"loss": nats, "bpc": nats / LN2}
    ckpt.save(Path(out) / "best", model, config, {"step": 0, "metrics": metrics})
    ckpt.atomic_write(Path(out) / ckpt.CONFIG, json.dumps(config, indent=1))
    print(f"n-gram (order {order}, interpolated Kneser–Ney): validation "
          f"{nats:.4f} nats/char = {nats / LN2:.4f} bits/char "
          f"({time.perf_counter() - t:.1f} s); saved in {out}")
    return 0


def _fit_and_report(task: LMTask, tcfg: TrainConfig, args: argparse.Namespace,
                    baseline: int) -> int:
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    base = None
    if baseline and main:
        t = time.perf_counter()
        baseline = min(baseline, max_order(task.data.tokenizer.vocab_size))
        ng = NGramLM.fit(task.data.train, task.data.tokenizer.vocab_size, baseline)
        base = ng.nll(task.data.valid) / LN2
        print(f"n-gram baseline (order {baseline}, Kneser–Ney) on the same split: "
              f"{base:.3f} bits/char ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    m = task.model_cfg
    budget = " / ".join(([f"{tcfg.steps} steps"] if tcfg.steps else []) +
                        ([f"{tcfg.minutes:g} minutes"] if tcfg.minutes else []))
    if main:
        print(f"training {m['cell'].upper()} {m['layers']}×{m['hidden']} (emb {m['emb']}, "
              f"dropout {m['dropout']:g}, {task.precision}) for {budget} → {tcfg.out}",
              file=sys.stderr)
    res = train(task, tcfg)
    if not main:
        return 0
    model, tok, _ = load_run(res.run_dir, device=str(pick_device()))
    if args.sample_length:
        prime = "def " if task.data.source.get("data") is None else ""
        print(f"\n--- sample (temperature 0.8) from {res.run_dir} ---")
        for piece in generate(model, tok, prime=prime, length=args.sample_length, seed=0):
            print(piece, end="", flush=True)
        print("\n---")
    best = res.best or res.metrics
    print(f"validation: {best['bpc']:.3f} bits/char ({best['loss']:.4f} nats/char) at step "
          f"{best.get('step', res.step)} of {res.step}, {res.elapsed / 60:.1f} min; run folder "
          f"{res.run_dir}")
    if base is not None:
        print(f"n-gram baseline (order {baseline}): {base:.3f} bits/char; the network is "
              f"{base - best['bpc']:.3f} bits/char {'below' if best['bpc'] < base else 'above'} "
              f"it")
    return 0


def evaluate_cli(args: argparse.Namespace) -> int:
    model, tok, config = load_run(args.run_dir, device=str(pick_device()))
    ids = torch.tensor(tok.encode(read_text_file(args.data)), dtype=torch.long)
    if len(ids) < 2:
        raise ValueError(f"{args.data} has {len(ids)} token(s); need at least 2 to evaluate")
    unk = int((ids == tok.unk_id).sum())
    if isinstance(model, NGramLM):
        nats = model.nll(ids)
    else:
        nats = model.nll(ids, rows=args.batch or config.get("eval_rows", 16))
    print(f"{args.data}: {nats / LN2:.4f} bits/char ({nats:.4f} nats/char) over "
          f"{len(ids) - 1:,} predictions" + (f"; {unk} unknown character(s) mapped to <unk>"
                                            if unk else ""))
    return 0


def sample_cli(args: argparse.Namespace) -> int:
    model, tok, _ = load_run(args.run_dir, device=str(pick_device()))
    for piece in generate(model, tok, args.prime, args.length, args.temperature, args.top_k,
                          args.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
