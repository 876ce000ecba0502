"""``rnnkit explain``: a cell's parameter formula, its equations with every weight's shape, and
one step's gate values on a random input."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from rnnkit.cells import GRUCell, LSTMCell, RNNCell
from rnnkit.cells.base import Cell
from rnnkit.inspect.params import param_formula

EQUATIONS = {
    "rnn": [
        "h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)",
    ],
    "lstm": [
        "i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)      input gate",
        "f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)      forget gate",
        "g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)   cell candidate",
        "o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)      output gate",
        "c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                     cell state",
        "h_t = o_t ⊙ tanh(c_t)                               hidden state",
    ],
    "gru": [
        "r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)      reset gate",
        "z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)      update gate",
        "n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))   new state",
        "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}",
    ],
    "gru_reset_before": [
        "r_t = σ(W_ir x_t + W_hr h_{t-1} + b_r)              reset gate",
        "z_t = σ(W_iz x_t + W_hz h_{t-1} + b_z)              update gate",
        "n_t = tanh(W_in x_t + W_hn (r_t ⊙ h_{t-1}) + b_n)   new state",
        "h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}",
    ],
}


def make_cell(kind: str, input_size: int, hidden_size: int, reset_after: bool = True) -> Cell:
    if kind == "rnn":
        return RNNCell(input_size, hidden_size)
    if kind == "lstm":
        return LSTMCell(input_size, hidden_size)
    if kind == "gru":
        return GRUCell(input_size, hidden_size, reset_after=reset_after)
    raise ValueError(f"kind must be one of 'rnn', 'lstm', 'gru', got {kind!r}")


def _vec(v: torch.Tensor, k: int = 8) -> str:
    vals = " ".join(f"{x:+.3f}" for x in v[:k].tolist())
    return vals + (" …" if v.numel() > k else "")


def explain(kind: str, input_size: int, hidden_size: int, *, convention: str = "keras",
            reset_after: bool = True, seed: int = 0) -> str:
    """The text that ``rnnkit explain`` prints."""
    I, H = input_size, hidden_size
    cell = make_cell(kind, I, H, reset_after)
    out = [f"== {kind.upper()} with input_size={I}, hidden_size={H} ==", "", "Parameters:"]
    other = "torch" if convention == "keras" else "keras"
    for conv in (convention, other):
        f = param_formula(kind, I, H, convention=conv, reset_after=reset_after)
        out.append(f"  {conv:>5}: {f.formula}")
    out.append("  " + param_formula(kind, I, H, convention=convention,
                                    reset_after=reset_after).explanation)
    out += ["", "Equations (x_t: (B, I), h: (B, H), σ = sigmoid, ⊙ = element-wise product):"]
    key = "gru_reset_before" if kind == "gru" and not reset_after else kind
    out += ["  " + e for e in EQUATIONS[key]]
    out += ["", "Weights as rnnkit (and torch.nn) store them — gate blocks stacked on axis 0:"]
    for name, p in cell.named_parameters():
        out.append(f"  {name:<10} {tuple(p.shape)!s:<12} {p.numel():>8,} parameters")
    G = cell.num_gates
    if G > 1:
        names = {"lstm": "ifgo", "gru": "rzn"}[kind]
        blocks = ", ".join(f"W_i{g} = weight_ih[{k * H}:{(k + 1) * H}]"
                           for k, g in enumerate(names))
        out.append(f"  each stacks {G} blocks of {H} rows: {blocks}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, I, generator=g)
    state = tuple(0.5 * torch.randn(1, H, generator=g) for _ in cell.state_names)
    with torch.no_grad():
        new, gates = cell.step(x, state)
    out += ["", f"One step on a random input (seed {seed}); first units shown:",
            f"  {'x_t':<14}{_vec(x[0])}"]
    for name, v in zip(cell.state_names, state, strict=True):
        out.append(f"  {name + '_{t-1}':<14}{_vec(v[0])}")
    for name, v in gates.items():
        rng = f"(mean {v.mean():+.3f})"
        out.append(f"  {name:<14}{_vec(v[0])}  {rng}")
    for name, v in zip(cell.state_names, new, strict=True):
        out.append(f"  {name + '_t':<14}{_vec(v[0])}")
    return "\n".join(out)


NEXT = ("next: train one on text with `rnnkit train lm --cell {kind} --minutes 1`, then "
        "`rnnkit sample RUN --prime 'def '` (RUN: the folder its last line names)")


def _run(a: argparse.Namespace) -> None:
    print(explain(a.kind, a.input_size, a.hidden_size, convention=a.convention,
                  reset_after=not a.reset_before, seed=a.seed))
    print()
    print(NEXT.format(kind=a.kind))


def register(sub: argparse._SubParsersAction, size: Any = int, seed: Any = int,
             **kwargs: object) -> None:
    """``rnnkit explain``; ``size`` and ``seed`` parse the sizes and the seed (the CLI gives
    its checked types), ``kwargs`` go to ``add_parser`` (the CLI's description and help
    formatter)."""
    p = sub.add_parser("explain", help="formula, equations, weight shapes and one step of a cell",
                       **kwargs)
    p.add_argument("kind", choices=["rnn", "lstm", "gru"], help="the cell")
    p.add_argument("--input-size", type=size, default=6, help="features per time step")
    p.add_argument("--hidden-size", type=size, default=16, help="units")
    p.add_argument("--convention", choices=["keras", "torch"], default="keras",
                   help="parameter count as Keras counts it (one bias per gate) or as torch.nn "
                        "does (two)")
    p.add_argument("--reset-before", action="store_true",
                   help="GRU: Cho et al. 2014 form (Keras reset_after=False)")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the weights and input")
    p.set_defaults(func=_run)
