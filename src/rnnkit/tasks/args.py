"""The command line's shared parts: the training and model flags every ``rnnkit train TASK``
has (defined once, here), checked value types, and a help formatter that renders plain text.

Every numeric flag is checked when it is parsed: a value out of range, NaN or infinite is an
``argparse`` error (exit code 2) naming the flag, never a traceback. Flags left out are
``None``, so a task can tell a given flag from its own default (and ``--resume`` can refuse a
flag that contradicts the saved run); each flag's help shows the task's default.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import textwrap
from collections.abc import Callable
from typing import Any


# -- checked value types ------------------------------------------------------------------------
def number(kind: type = float, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, what: str = "") -> Callable[[str], Any]:
    """An ``argparse`` type: ``kind`` (int or float), finite, in ``[lo, hi]`` (``(lo, hi]``
    with ``lo_open``); the error names the expected range and the value given."""
    if not what:
        rng = []
        fmt = "{:,}" if kind is int else "{:g}"
        if lo is not None:
            rng.append(f"{'>' if lo_open else '>='} {fmt.format(lo)}")
        if hi is not None:
            rng.append(f"<= {fmt.format(hi)}")
        what = ("an integer" if kind is int else "a number") + (
            " " + " and ".join(rng) if rng else "")

    def check(v: Any, s: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
        return v

    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        return check(v, s)

    def check_value(v: Any) -> Any:
        """The same check for a value read back from a run's config (a JSON number)."""
        ok = isinstance(v, int) if kind is int else isinstance(v, int | float)
        if isinstance(v, bool) or not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
        return check(v, repr(v))

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    parse.check_value = check_value  # type: ignore[attr-defined]
    return parse


MAX_INT = 2**31 - 1  # every count and size fits a C int (and a tensor dimension)
POS_INT = number(int, lo=1, hi=MAX_INT)
NONNEG_INT = number(int, lo=0, hi=MAX_INT)
WIDTH = number(int, lo=1, hi=2**14)  # units, embedding and vector sizes
LAYERS = number(int, lo=1, hi=256)
BATCH = number(int, lo=1, hi=2**20)
THREADS = number(int, lo=1, hi=4096)
LR = number(float, lo=0, hi=10, lo_open=True)
DECAY = number(float, lo=0, hi=10)
BEAM = number(int, lo=1, hi=1000)
PENALTY = number(float, lo=0, hi=10)  # a length penalty's exponent
GENERATED = number(int, lo=1, hi=10**6)  # tokens generated in one call
POS_FLOAT = number(float, lo=0, lo_open=True)
NONNEG_FLOAT = number(float, lo=0)
FRACTION = number(float, lo=0, hi=1)
DROPOUT = number(float, lo=0, hi=0.99, what="a dropout probability in [0, 0.99]")
SEED = number(int, lo=0, hi=2**63 - 1, what="a seed in [0, 2^63)")


# -- help that reads as plain text --------------------------------------------------------------
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data):`~?([^`]+)`")


def plain(doc: str | None) -> str:
    """A docstring as plain text for ``--help``: no ``double backticks``, no reST roles,
    ``*`` bullets as ``-``."""
    if not doc:
        return ""
    s = textwrap.dedent(doc).strip()
    s = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], s)
    s = s.replace("``", "")
    return re.sub(r"(?m)^(\s*)\* ", r"\1- ", s)


class Formatter(argparse.HelpFormatter):
    """Wraps help to the terminal width (at most 100 columns), keeps the description's
    paragraphs and bullet lists, and shows each flag's default where the help does not."""

    def __init__(self, prog: str) -> None:
        width = min(100, shutil.get_terminal_size((80, 24)).columns) - 2
        super().__init__(prog, width=width, max_help_position=30)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in re.split(r"\n\s*\n", text.strip()):
            items = re.split(r"\n(?=\s*- )", para)  # one bullet per item
            for item in items:
                m = re.match(r"(\s*- )", item)
                lead = m.group(1) if m else ""
                body = " ".join(item[len(lead):].split())
                out.append(textwrap.fill(body, width, initial_indent=indent + lead,
                                         subsequent_indent=indent + " " * len(lead)))
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default  # 0 is a default to show; None, False (a switch) are not
        if "(default" in h or d is None or d is False or d == argparse.SUPPRESS or \
                action.option_strings == [] or isinstance(action, argparse._VersionAction):
            return h
        return f"{h} (default: {action.default})" if h else f"default: {action.default}"


def parser_kwargs(description: str | None) -> dict[str, Any]:
    return {"description": plain(description), "formatter_class": Formatter}


# -- the shared training and model flags --------------------------------------------------------
def _dflt(defaults: dict[str, Any], key: str, fmt: str = "{}") -> str:
    v = defaults.get(key)
    return "" if v is None else f" (default: {fmt.format(v)})"


def add_train_args(p: argparse.ArgumentParser, defaults: dict[str, Any], *,
                   epochs: bool = False) -> None:
    """The training flags of every ``rnnkit train TASK``, with this task's ``defaults``
    shown in the help (the values are ``None`` when a flag is left out)."""
    g = p.add_argument_group("training (the same flags for every task)")
    a = g.add_argument
    a("--out", metavar="DIR", help="run folder" + (
        f" (default: {defaults['out']})" if defaults.get("out") else " (default: "
        "runs/<task>-<time>)"))
    a("--resume", nargs="?", const=True, metavar="RUN_DIR",
      help="continue the run in RUN_DIR (or --out) exactly where it stopped, with its own "
           "model, data and settings, towards its budget (give --steps/--minutes"
           + ("/--epochs" if epochs else "") + " for a larger total)")
    a("--restart", action="store_true",
      help="start over in --out, deleting the run it holds")
    a("--steps", type=POS_INT, help="budget: optimizer steps in all" + _dflt(defaults, "steps"))
    a("--minutes", type=POS_FLOAT, help="budget: wall-clock minutes of training and evaluation"
      + _dflt(defaults, "minutes", "{:g}"))
    if epochs:
        a("--epochs", type=POS_FLOAT, help="budget: passes over the training set"
          + _dflt(defaults, "epochs", "{:g}"))
    a("--batch-size", type=BATCH, metavar="N", help="examples per optimizer step, over all "
      "processes" + _dflt(defaults, "batch_size"))
    a("--batch", type=BATCH, dest="batch_size", help=argparse.SUPPRESS)  # old spelling
    a("--lr", type=LR, help="peak learning rate (AdamW; warmup, then cosine decay to "
      "a tenth)" + _dflt(defaults, "lr", "{:g}"))
    a("--weight-decay", type=DECAY, help="AdamW weight decay on matrices"
      + _dflt(defaults, "weight_decay", "{:g}"))
    a("--warmup", type=NONNEG_INT, metavar="STEPS", help="linear learning-rate warmup"
      + _dflt(defaults, "warmup"))
    a("--clip", type=NONNEG_FLOAT, help="gradient-norm clipping, 0 = off"
      + _dflt(defaults, "clip", "{:g}"))
    a("--eval-every", type=POS_INT, metavar="STEPS", help="steps between evaluations and "
      "checkpoints" + (_dflt(defaults, "eval_every") or (" (default: every epoch, at least 10 "
                                                          "times)" if epochs else "")))
    a("--log-every", type=POS_INT, metavar="STEPS", help="steps between progress lines"
      + _dflt(defaults, "log_every"))
    a("--seed", type=SEED, help="random seed of the model and the batches"
      + _dflt(defaults, "seed"))
    a("--device", help="auto (a GPU if there is one), cpu, cuda, cuda:N"
      + _dflt(defaults, "device"))
    a("--threads", type=THREADS, metavar="N", help="torch CPU threads (default: the cores "
      "free at start; OMP_NUM_THREADS when set)")
    a("--quiet", action="store_true", default=None,
      help="no progress bar or lines (evaluations still print)")
    a("--no-progress", action="store_true", dest="quiet", default=None, help=argparse.SUPPRESS)


MODEL_FLAGS = ("cell", "hidden", "layers", "embed", "dropout", "bidirectional")


def add_model_args(p: argparse.ArgumentParser, defaults: dict[str, Any], cells: list[str],
                   flags: tuple[str, ...] = MODEL_FLAGS) -> None:
    """The recurrent model's flags (those among ``flags``), for tasks whose model is a
    recurrent stack."""
    g = p.add_argument_group("model (the same flags for every task)")
    a = g.add_argument
    if "cell" in flags:
        a("--cell", choices=cells, metavar="CELL",
          help=f"recurrent layer: {', '.join(cells)}" + _dflt(defaults, "cell"))
    if "hidden" in flags:
        a("--hidden", type=WIDTH, metavar="H", help="units per layer and direction"
          + (_dflt(defaults, "hidden") or " (default: per problem)"))
    if "layers" in flags:
        a("--layers", type=LAYERS, metavar="L", help="stacked layers"
          + _dflt(defaults, "layers"))
    if "embed" in flags:
        a("--embed", type=WIDTH, metavar="E", help="embedding size" + _dflt(defaults, "embed"))
        a("--emb", type=WIDTH, dest="embed", help=argparse.SUPPRESS)  # old spelling
    if "dropout" in flags:
        a("--dropout", type=DROPOUT, help="dropout" + _dflt(defaults, "dropout", "{:g}"))
    if "bidirectional" in flags:
        a("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
          help="read each sequence both ways (not streamable)"
          + _dflt(defaults, "bidirectional"))


def add_split_args(g: Any, own: dict[str, Any], *, valid: str = "held out for validation",
                   test: str = "held out for testing", stratified: bool = False) -> None:
    """``--valid-fraction``, ``--test-fraction`` and ``--split-seed`` of a task that holds out
    a random split, each help ending in the task's default (from its own settings ``own``)."""
    a = g.add_argument
    a("--valid-fraction", type=FRACTION, help=valid + _dflt(own, "valid_fraction", "{:g}"))
    a("--test-fraction", type=FRACTION, help=test + _dflt(own, "test_fraction", "{:g}"))
    a("--split-seed", type=SEED, help="seed of the " + ("stratified splits" if stratified
                                                        else "split") + _dflt(own, "split_seed"))


def pick(args: argparse.Namespace, defaults: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``{key: flag value, or the default when the flag was left out}``."""
    return {k: (defaults.get(k) if getattr(args, k, None) is None else getattr(args, k))
            for k in keys}


def given(args: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """The flags among ``keys`` that were given on the command line."""
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
