"""rnnkit export RUN --onnx model.onnx: the trained model of a run folder as an ONNX graph.

The graph takes what the task's model takes, with dynamic batch and time axes:

  classify   ids (B, T) int64, lengths (B,) int64  ->  logits (B, C)
  lm         ids (B, T) int64, h (and c) (L, B, H)  ->  logits (B, T, V), h_n (c_n)
             (start from zero state; feed h_n back to continue a text: streaming)
  longrange  x (B, T, I) float32                    ->  y (B, T, O)

--step FILE also writes the recurrent stack's one-step graph (x (B, E), state -> y (B, H),
state), for unidirectional models. After writing, the graph is run with onnxruntime on a
fresh batch (other batch size and lengths than the export example) and compared with PyTorch;
the largest difference is printed (--no-verify skips it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit.export import export_onnx, export_onnx_step, run_onnx
from rnnkit.tasks.args import parser_kwargs


def _example(model: nn.Module, B: int, T: int, g: torch.Generator
             ) -> tuple[tuple[torch.Tensor, ...], list[str], list[str]]:
    """Inputs for ``model`` (batch ``B``, time ``T``), input names and output names."""
    from rnnkit.tasks.classify.model import Classifier
    from rnnkit.tasks.lm.model import CharLM
    from rnnkit.tasks.longrange.model import LongRangeModel

    if isinstance(model, Classifier):
        V = model.embed.num_embeddings
        ids = torch.randint(1, V, (B, T), generator=g)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        ids[torch.arange(T)[None] >= lengths[:, None]] = 0
        return (ids, lengths), ["ids", "lengths"], ["logits"]
    if isinstance(model, CharLM):
        rnn = model.rnn
        ids = torch.randint(0, model.emb.num_embeddings, (B, T), generator=g)
        st = tuple(torch.randn(rnn.num_layers, B, rnn.hidden_size, generator=g)
                   for _ in rnn.state_names)
        return ((ids, st[0] if len(st) == 1 else st), ["ids", *rnn.state_names],
                ["logits", *(f"{n}_n" for n in rnn.state_names)])
    if isinstance(model, LongRangeModel):
        return (torch.randn(B, T, model.rnn.input_size, generator=g),), ["x"], ["y"]
    raise ValueError(f"rnnkit export knows the models of the classify, lm and longrange tasks; "
                     f"got a {type(model).__name__}")


def _flat(args: tuple[Any, ...]) -> list[torch.Tensor]:
    return [t for a in args for t in ((a,) if isinstance(a, torch.Tensor) else a)]


def export_run(run_dir: str | Path, onnx_path: str | Path, *, step: str | Path | None = None,
               verify: bool = True) -> dict[str, Any]:
    """Export the trained model of ``run_dir`` (see the module docstring); returns
    ``{"onnx", "inputs", "outputs", "max_abs_diff"?, "step"?}``."""
    from rnnkit.tasks import load

    api = load(run_dir)
    model = getattr(api, "model", None)
    if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
        raise ValueError(f"{run_dir}: its model ({type(model).__name__}) is not a neural "
                         f"network; only recurrent models are exported")
    model = model.float().eval()
    g = torch.Generator().manual_seed(0)
    args, in_names, out_names = _example(model, 2, 5, g)
    bt, b = {0: "batch", 1: "time"}, {0: "batch"}
    axes = {n: bt for n in ("ids", "x", "y")} | {"lengths": b, "logits": b if isinstance(
        args[-1], torch.Tensor) and args[-1].dim() == 1 else bt}
    axes |= {n: {1: "batch"} for n in ("h", "c", "h_n", "c_n")}
    axes = {n: axes[n] for n in in_names + out_names}
    path = export_onnx(model, args, onnx_path, input_names=in_names, output_names=out_names,
                       dynamic_axes=axes)
    info: dict[str, Any] = {"onnx": str(path), "inputs": in_names, "outputs": out_names}
    if verify:
        args, _, _ = _example(model, 7, 23, g)
        with torch.no_grad():
            want = model(*args)
        want = [want] if isinstance(want, torch.Tensor) else _flat(want)
        got = run_onnx(path, *_flat(args))
        info["max_abs_diff"] = max(float((torch.from_numpy(a) - w).abs().max())
                                   for a, w in zip(got, want, strict=True))
    if step is not None:
        rnn = getattr(model, "rnn", None)
        if rnn is None:
            raise ValueError(f"{type(model).__name__} has no recurrent stack to step")
        info["step"] = str(export_onnx_step(rnn, step))
    return info


def _run(args: argparse.Namespace) -> int:
    info = export_run(args.run_dir, args.onnx, step=args.step, verify=not args.no_verify)
    line = f"wrote {info['onnx']}: inputs {', '.join(info['inputs'])} -> outputs " \
           f"{', '.join(info['outputs'])}"
    if "max_abs_diff" in info:
        line += f"; onnxruntime vs PyTorch on a fresh batch (7 x 23): max |diff| " \
                f"{info['max_abs_diff']:.1e}"
    if "step" in info:
        line += f"; step graph {info['step']}"
    print(line)
    if args.json:
        print(json.dumps(info), file=sys.stderr)
    return 0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="run folder (uses best/, else last/) or checkpoint folder")
    p.add_argument("--onnx", required=True, metavar="FILE", help="where to write the graph")
    p.add_argument("--step", metavar="FILE", help="also write the recurrent stack's one-step "
                   "graph (unidirectional models)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the onnxruntime-against-PyTorch check after writing")
    p.add_argument("--json", action="store_true", help="also print what was written as JSON "
                   "(to stderr)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``rnnkit export`` to the ``rnnkit`` command's subparsers."""
    p = sub.add_parser("export", help="export a trained run to ONNX",
                       **parser_kwargs(__doc__))
    add_args(p)
    p.set_defaults(func=_run)
