"""Every kernel, bit for bit against outputs and gradients saved from the code before the kernel
restructuring (issue 13): reference, fused, fast with the C kernels, fast on its torch fallback,
the scans of minGRU/minLSTM (native, chunked, log) and the stepper, on every family (RNN tanh
and relu, LSTM, GRU in both reset forms, LayerNormLSTM with and without recurrent dropout and
zoneout, minGRU, minLSTM) and a fixed set of small shapes: 1-2 layers, one or two directions,
with and without lengths, bias on and off, inter-layer dropout, gate recording. For each case
it compares (``torch.equal``, CPU float32: a sha256 of each tensor's bytes, and the values
themselves for the smallest configurations) the outputs, the final states, the recorded gates
and the gradients of a fixed random projection of them w.r.t. the input, the initial state and
every parameter.

The file ``tests/data/kernel_golden.safetensors`` was written once, from the code before the
change, with::

    PYTHONPATH=src python tests/test_kernel_golden.py --write

Bits depend on the CPU's instruction set (the C kernels' AVX-512/AVX2 branches, oneDNN's and
MKL's code paths, which differ between CPU vendors at the same capability) and on torch's
version, all stored in the file's metadata: on another CPU capability, vendor or torch the test
skips (saying why) instead of failing. (The file was written on an AMD EPYC; its vendor was
added to the metadata later, the tensors unchanged: on an Intel Xeon with AVX-512 the reference
RNN's output differed by 9e-8.) All cases run with one
torch thread (and the C cases also with two, on a batch both threads share).
"""

from __future__ import annotations

import hashlib
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import rnnkit
from rnnkit.kernels import native

GOLDEN = Path(__file__).parent / "data" / "kernel_golden.safetensors"
I, H, T = 4, 10, 6

FAMILIES = {
    "rnn_tanh": (rnnkit.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, {}),
    "gru": (rnnkit.GRU, {}),
    "gru_reset_before": (rnnkit.GRU, {"reset_after": False}),
    "layernorm_lstm": (rnnkit.LayerNormLSTM, {}),
    "layernorm_lstm_drop": (rnnkit.LayerNormLSTM, {"recurrent_dropout": 0.25, "zoneout": 0.2}),
    "mingru": (rnnkit.MinGRU, {}),
    "minlstm": (rnnkit.MinLSTM, {}),
}
# name: (num_layers, bidirectional, batch, lengths, bias, dropout, record, threads)
CONFIGS = {
    "l1": (1, False, 3, None, True, 0.0, False, 1),
    "l1_bi_len": (1, True, 3, [6, 2, 4], True, 0.0, False, 1),
    "l2_bi_nobias": (2, True, 3, None, False, 0.0, False, 1),
    "l2_len_drop": (2, False, 4, [3, 6, 1, 6], True, 0.3, False, 1),
    "l2_bi_len_rec": (2, True, 3, [5, 6, 2], True, 0.0, True, 1),
    "wide_t2": (1, True, 20, list(range(6, 0, -1)) * 3 + [6, 6], True, 0.0, False, 2),
}
MIN = ("mingru", "minlstm")
# The file keeps, per case, a sha256 of each tensor's bytes, and the values themselves for these
# (smallest) configurations, so that it stays small (~200 kB) and a difference there is legible.
FULL_CONFIGS = ("l1", "l2")


@contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def without_c():
    """The fast path, the scans and the stepper on their torch fallback, as without a compiler
    (``RNNKIT_NATIVE=0``)."""
    saved = native.lib
    native.lib = lambda: None
    try:
        yield
    finally:
        native.lib = saved


def variants(family: str) -> list[tuple[str, str, dict]]:
    """``(name, kernel, layer options)`` of every kernel that serves ``family``."""
    if family in MIN:
        return [("reference", "reference", {}), ("scan_native", "scan", {"scan": "native"}),
                ("scan_chunked", "scan", {"scan": "chunked"}),
                ("scan_log", "scan", {"scan": "log"})]
    out = [("reference", "reference", {}), ("fast_c", "fast", {}), ("fast_torch", "fast", {})]
    if family in ("rnn_tanh", "rnn_relu", "lstm", "gru"):
        out.append(("fused", "fused", {}))
    return out


def make(family: str, kernel: str, opts: dict, layers: int, bidir: bool, bias: bool,
         dropout: float) -> rnnkit.layers.Recurrent:
    cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    return cls(I, H, num_layers=layers, bidirectional=bidir, bias=bias, dropout=dropout,
               kernel=kernel, **extra, **opts)


def run_case(family: str, kernel: str, opts: dict, cfg: tuple) -> dict[str, torch.Tensor]:
    layers, bidir, B, lengths, bias, dropout, record, nthreads = cfg
    layer = make(family, kernel, opts, layers, bidir, bias, dropout)
    D = 2 if bidir else 1
    n_state = len(layer.state_names)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, I, generator=g).requires_grad_(True)
    st = tuple(torch.randn(layers * D, B, H, generator=g).requires_grad_(True)
               for _ in range(n_state))
    lens = None if lengths is None else torch.tensor(lengths)
    torch.manual_seed(2)  # the dropout and zoneout masks
    with threads(nthreads):
        recs: dict[str, torch.Tensor] = {}
        arg = st if n_state == 2 else st[0]
        if record:
            with rnnkit.record(layer, detach=False) as rec:
                out, fin = layer(x, arg, lengths=lens)
            recs = {n: rec.only[n] for n in rec.only.names}
        else:
            out, fin = layer(x, arg, lengths=lens)
        fin = fin if isinstance(fin, tuple) else (fin,)
        vals = {"out": out, **{f"state{i}": f for i, f in enumerate(fin)},
                **{f"rec_{n}": v for n, v in recs.items()}}
        loss = sum((v * torch.randn(v.shape, generator=g)).sum() for v in vals.values())
        loss.backward()
    res = {k: v.detach() for k, v in vals.items()}
    res["grad_x"] = x.grad
    for i, s in enumerate(st):
        res[f"grad_state{i}"] = s.grad
    for n, p in layer.named_parameters():
        res[f"grad_{n}"] = p.grad
    return res


def run_stepper(family: str, use_c: bool) -> dict[str, torch.Tensor]:
    layer = make(family, "auto", {}, 2, False, True, 0.0).eval()
    B = 3
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(T, B, I, generator=g)
    stepper = layer.stepper(B)
    state = None
    res = {}
    with threads(1):
        for t in range(T):
            h, state = stepper(xs[t], state)
            res[f"h{t}"] = h.clone()
    for i, s in enumerate(state if isinstance(state, tuple) else (state,)):
        res[f"state{i}"] = s.clone()
    return res


def cases() -> list[str]:
    out = []
    for family in FAMILIES:
        for vname, _, _ in variants(family):
            for cname, cfg in CONFIGS.items():
                if vname == "fused" and cfg[6]:
                    continue  # the fused kernel cannot record gates
                out.append(f"{family}/{vname}/{cname}")
        if family != "layernorm_lstm_drop":
            out += [f"{family}/stepper_c/l2", f"{family}/stepper_torch/l2"]
    return out


def compute(case: str) -> dict[str, torch.Tensor]:
    family, vname, cname = case.split("/")
    torch_only = vname.endswith("_torch")
    with without_c() if torch_only else contextmanager(lambda: (yield))():
        if vname.startswith("stepper"):
            return run_stepper(family, not torch_only)
        kernel, opts = next((k, o) for n, k, o in variants(family) if n == vname)
        return run_case(family, kernel, opts, CONFIGS[cname])


def cpu_vendor() -> str:
    """``vendor_id`` of ``/proc/cpuinfo`` (MKL and oneDNN take other code paths on another
    vendor's CPU at the same capability), or ``"unknown"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def meta() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "vendor": cpu_vendor()}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN} missing: write it with python {__file__} --write")
    from safetensors import safe_open

    with safe_open(str(GOLDEN), "pt") as f:
        saved = f.metadata() or {}
    if {k: saved.get(k) for k in meta()} != meta():
        pytest.skip(f"golden file written on {saved}, this is {meta()}: bits differ by design")
    if native.lib() is None:
        pytest.skip("no C compiler for rnnkit's kernels: the C cases cannot run")
    return load_file(str(GOLDEN))


def digest(v: torch.Tensor) -> torch.Tensor:
    """sha256 of a tensor's dtype, shape and bytes, ``(32,)`` uint8: equal digests mean
    ``torch.equal`` (and equal bits even for NaN and -0.0)."""
    h = hashlib.sha256(f"{v.dtype} {tuple(v.shape)} ".encode())
    h.update(v.detach().contiguous().numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


def digests(res: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(1 + n, 32)``: the digest of the sorted names, then each tensor's, in name order."""
    names = digest(torch.frombuffer(bytearray(" ".join(sorted(res)).encode()), dtype=torch.uint8))
    return torch.stack([names, *(digest(res[k]) for k in sorted(res))])


@pytest.mark.parametrize("case", cases())
def test_kernel_bit_for_bit(case, golden):
    got = compute(case)
    for k, v in got.items():
        full = golden.get(f"{case}/{k}")
        if full is not None:  # a readable difference where the values themselves are kept
            assert v.dtype == full.dtype and torch.equal(v, full), (
                f"{case}/{k}: max diff {(v - full).abs().max().item():.3g}")
    want, have = golden[case], digests(got)
    assert torch.equal(have[0], want[0]), f"{case}: other tensors than saved: {sorted(got)}"
    bad = [k for k, a, b in zip(sorted(got), have[1:], want[1:], strict=True)
           if not torch.equal(a, b)]
    assert not bad, f"{case}: bits differ from the golden file in {bad}"


def write() -> None:
    assert native.lib() is not None, "the golden file needs the C kernels"
    data = {}
    for case in cases():
        res = compute(case)
        data[case] = digests(res)
        if case.split("/")[2] in FULL_CONFIGS:
            data.update({f"{case}/{k}": v.detach().contiguous() for k, v in res.items()})
    GOLDEN.parent.mkdir(exist_ok=True)
    save_file(data, str(GOLDEN), metadata=meta())
    print(f"wrote {len(data)} tensors, {GOLDEN.stat().st_size} bytes to {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write")
    write()
