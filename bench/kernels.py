"""rnnkit's kernels against their peers, measured in one run: the README's speed table.

    python bench/kernels.py                  # CPU, 2 threads: about 2-3 minutes on 2 cores
    python bench/kernels.py --device cuda    # on a GPU (peer: cuDNN)
    python bench/kernels.py --quick          # tiny sizes, a minute: checks the script

Every row times two (or three) programs on the same inputs, interleaved (A, B, A, B, ...) so
that both see the same machine load, and reports the median of each and their ratio
``speed = peer time / rnnkit time`` (> 1: rnnkit is faster). Both run in this one process with
glibc told to keep freed memory for reuse, as the ``rnnkit`` command does
(:mod:`rnnkit.runtime`; ``--glibc-default-malloc`` measures without it). Rows:

* ``auto``: ``kernel="auto"`` (whatever it dispatches to) vs the faster of ``kernel="fused"``
  (torch.nn's kernel) and ``kernel="fast"`` in the same race, and vs torch.nn, RNN/LSTM/GRU,
  forward and forward+backward, 1x256 and 2x512; ``--write-table`` writes the measured table
  ``auto`` ships with (``src/rnnkit/kernels/auto_table.py``);
* ``fast``: the own fast path vs torch.nn, and vs the textbook eager loop over the cells
  (``kernel="reference"``), forward+backward; also the GRU with its reset gate before the
  product (``reset_after=False``), which ``auto`` runs on the fast path;
* ``bf16``: training steps under bfloat16 autocast (LSTM 1x512 and 2x512, GRU and RNN 1x512),
  rnnkit's bfloat16 C kernel (AVX512-BF16) vs torch.nn under the same autocast, and vs
  rnnkit's float32 fast path;
* ``record``: recording every gate (``rnnkit.record``) vs the same fast path not recording;
* ``layernorm``: LayerNormLSTM (own fast path) vs torch.nn.LSTM of the same size;
* ``lengths``: lengths uniform in [T/10, T], rnnkit with ``lengths=`` vs
  ``pack_padded_sequence`` + torch.nn + ``pad_packed_sequence`` (and checks equal results);
* ``minrnn``: MinGRU/MinLSTM parallel training (scan) vs torch.nn.GRU/LSTM, T = 256 ... 4096;
* ``sample``: characters/s generating from a 2x512 character LSTM at batch 1 (embedding,
  layers, head, sampling) with rnnkit's stepper vs torch.nn.LSTM called once per step and vs
  two ``nn.LSTMCell`` under ``torch.inference_mode``;
* ``flops``: achieved GFLOP/s of an LSTM training step (torch.nn and the fast path) as a
  fraction of this machine's measured matmul GFLOP/s (2048² float32, the faster of torch.mm
  and oneDNN).

Prints a markdown table (with the issue's targets), and writes it as JSON and a PNG chart
(``--out``, default ``bench/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.kernels import scan
from rnnkit.runtime import keep_freed_memory

ROWS: list[dict] = []


# -- timing ----------------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def race(fns: list[Callable[[], object]], reps: int, dev: torch.device, warmup: int = 2
         ) -> list[float]:
    """Median seconds of each function, run interleaved ``reps`` times after ``warmup``. The
    order rotates every repetition, so that no program always runs right after the same one
    (on small calls, the one before decides what is still in cache)."""
    for f in fns:
        for _ in range(warmup):
            f()
    sync(dev)
    times: list[list[float]] = [[] for _ in fns]
    n = len(fns)
    for r in range(reps):
        for k in [(r + j) % n for j in range(n)]:
            t = time.perf_counter()
            fns[k]()
            sync(dev)
            times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def train_step(model: nn.Module, x: torch.Tensor, **kw: object) -> Callable[[], None]:
    def f() -> None:
        out = model(x, **kw)[0]
        out.sum().backward()
    return f


def fwd(model: nn.Module, x: torch.Tensor, **kw: object) -> Callable[[], None]:
    def f() -> None:
        with torch.no_grad():
            model(x, **kw)
    return f


def row(section: str, config: str, ours: float, peer: float, peer_name: str,
        target: float | None, unit: str = "ms", note: str = "") -> None:
    ratio = peer / ours if unit == "ms" else ours / peer
    ROWS.append({"section": section, "config": config, "rnnkit": ours, "peer": peer,
                 "peer_name": peer_name, "unit": unit, "speed": ratio, "target": target,
                 "ok": None if target is None else ratio >= target, "note": note})
    scale = 1e3 if unit == "ms" else 1.0
    ok = "" if target is None else ("  ok" if ratio >= target else "  BELOW TARGET")
    print(f"  {section:10s} {config:38s} rnnkit {ours * scale:9.2f} {unit:7s} {peer_name:22s}"
          f" {peer * scale:9.2f}  speed {ratio:5.2f}x{ok} {note}", flush=True)


# -- sections --------------------------------------------------------------------------------
def torch_twin(cls: type, I: int, H: int, L: int, dev: torch.device) -> tuple[nn.Module, nn.Module]:
    ref = {rnnkit.RNN: nn.RNN, rnnkit.LSTM: nn.LSTM, rnnkit.GRU: nn.GRU}[cls](
        I, H, L, batch_first=True).to(dev)
    return ref, cls.from_torch(ref).to(dev)


AUTO_FAMILIES = ((rnnkit.RNN, "rnn_tanh"), (rnnkit.LSTM, "lstm"), (rnnkit.GRU, "gru"))


def bench_auto(a: argparse.Namespace, dev: torch.device) -> None:
    """``auto`` vs the faster of ``fused`` and ``fast`` on the same call (one race of three);
    with ``--write-table`` the fused/fast times become ``rnnkit/kernels/auto_table.py``, the
    table ``auto`` reads (run the section again to see ``auto`` on the new table)."""
    from rnnkit.kernels import native, size_class, table_key

    x = torch.randn(a.batch, a.T, a.E, device=dev, requires_grad=True)
    xs = torch.randn(1, 16, a.E, device=dev)  # a streamed chunk: the table's "tiny" class
    table: dict[str, dict[str, float]] = {}

    def measure(cls: type, mode: str, L: int, H: int, what: str, prog: Callable, key: str,
                inp: torch.Tensor, reps: int, label: str) -> None:
        """One race of auto, fused and fast on ``inp``: two rows and the table's entry."""
        ref, auto = torch_twin(cls, a.E, H, L, dev)
        fused = cls.from_torch(ref, kernel="fused").to(dev)
        fast = cls.from_torch(ref, kernel="fast").to(dev)
        t = race([prog(auto, inp), prog(fused, inp), prog(fast, inp)], reps, dev)
        peer = "fused" if t[1] <= t[2] else "fast"
        name = f"{cls.__name__} {L}x{H} {what}{label}"
        row("auto", name, t[0], min(t[1], t[2]), f"max(fused, fast): {peer}", 0.97,
            note=f"[{auto.last_kernel}] fused {t[1] * 1e3:.2f} / fast {t[2] * 1e3:.2f} ms")
        row("auto", f"{name} vs torch.nn", t[0], t[1], "torch.nn (fused)", None,
            note=f"[{auto.last_kernel}]")
        if "autocast" in label:  # the key auto looks up, taken under the same autocast
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                k = "|".join(table_key(auto, inp))
        else:
            dtype = str(inp.dtype).removeprefix("torch.")
            k = f"{dev.type}|{dtype}|{mode}|{key}|{size_class(H, inp.shape[0] * inp.shape[1])}"
        table[k] = {"fused": round(t[1], 6), "fast": round(t[2], 6)}

    for cls, mode in AUTO_FAMILIES:
        for L, H in a.sizes:
            for what, prog, key in (("forward", fwd, "infer"), ("fwd+bwd", train_step, "train")):
                measure(cls, mode, L, H, what, prog, key, x, a.reps, "")
        L, H = a.sizes[0]  # the tiny class: inference only, at the first size, more reps
        measure(cls, mode, L, H, "forward", fwd, "infer", xs, a.reps * 4, ", B=1 T=16")
    if dev.type == "cpu" and native.bf16_capable():  # bf16 autocast: rnnkit's vs torch.nn's
        for cls, mode in AUTO_FAMILIES:
            for L, H in [*a.sizes, *[s for s in a.bf16_sizes if s not in a.sizes]]:
                measure(cls, mode, L, H, "fwd+bwd", autocast_step, "train", x,
                        max(3, a.reps // 2), f", bf16 autocast ({native.bf16_class()})")
    if a.write_table:
        path = Path(rnnkit.__file__).parent / "kernels" / "auto_table.py"
        head = path.read_text().split("SOURCE = ")[0]
        src = (f"{platform.machine()} {dev.type}, {a.threads} threads, {os.cpu_count()} cores, "
               f"B={a.batch}, T={a.T}, E={a.E}, torch {torch.__version__}, "
               f"{time.strftime('%Y-%m-%d')}: bench/kernels.py --only auto --write-table")
        body = "".join(f"    {k!r}: {v!r},\n" for k, v in sorted(table.items()))
        # adjacent string literals, each line within ruff's length
        lines = "".join(f"    {p!r}\n" for p in textwrap.wrap(src, 80, drop_whitespace=False))
        path.write_text(f"{head}SOURCE = (\n{lines})\n\nTABLE: dict[str, dict[str, float]] = "
                        f"{{\n{body}}}\n")
        print(f"  wrote {path}", flush=True)


def bench_fast(a: argparse.Namespace, dev: torch.device) -> None:
    x = torch.randn(a.batch, a.T, a.E, device=dev, requires_grad=True)
    for cls in (rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN):
        for L, H in a.sizes:
            if cls is not rnnkit.LSTM and (L, H) != a.sizes[0]:
                continue
            ref, _ = torch_twin(cls, a.E, H, L, dev)
            fast = cls.from_torch(ref, kernel="fast").to(dev)
            eager = cls.from_torch(ref, kernel="reference").to(dev)
            t = race([train_step(fast, x), train_step(ref, x), train_step(eager, x)],
                     max(3, a.reps // 2), dev)
            name = f"{cls.__name__} {L}x{H} fwd+bwd"
            target = 0.85 if cls is rnnkit.LSTM else None
            row("fast", name, t[0], t[1], "torch.nn", target)
            row("fast", name, t[0], t[2], "eager loop (reference)", 1.25 if target else None)
    # Keras' other GRU (reset gate before the product): no fused kernel serves it, so `auto`
    # runs it on the fast path; its peers are the eager loop and torch.nn's (other) GRU
    L, H = a.sizes[0]
    ref, _ = torch_twin(rnnkit.GRU, a.E, H, L, dev)
    cho = rnnkit.GRU(a.E, H, num_layers=L, reset_after=False).to(dev)
    eager = rnnkit.GRU(a.E, H, num_layers=L, reset_after=False, kernel="reference").to(dev)
    eager.load_state_dict(cho.state_dict())
    t = race([train_step(cho, x), train_step(ref, x), train_step(eager, x)],
             max(3, a.reps // 2), dev)
    name = f"GRU reset_after=False {L}x{H} fwd+bwd"
    row("fast", name, t[0], t[1], "torch.nn.GRU (reset after)", None, note=f"[{cho.last_kernel}]")
    row("fast", name, t[0], t[2], "eager loop (reference)", None)


def bench_record(a: argparse.Namespace, dev: torch.device) -> None:
    x = torch.randn(a.batch, a.T, a.E, device=dev)
    for L, H in a.sizes:
        fast = rnnkit.LSTM(a.E, H, num_layers=L, kernel="fast").to(dev)

        def recorded(m: nn.Module = fast) -> None:
            with torch.no_grad(), rnnkit.record(m) as rec:
                m(x)
            assert rec.kernel == "fast"

        t = race([recorded, fwd(fast, x)], a.reps, dev)
        row("record", f"LSTM {L}x{H} forward, all gates", t[0], t[1], "fast, not recording",
            1 / 1.3)


def bench_layernorm(a: argparse.Namespace, dev: torch.device) -> None:
    x = torch.randn(a.batch, a.T, a.E, device=dev, requires_grad=True)
    for L, H in a.sizes:
        ln = rnnkit.LayerNormLSTM(a.E, H, num_layers=L).to(dev)
        ref = nn.LSTM(a.E, H, L, batch_first=True).to(dev)
        t = race([train_step(ln, x), train_step(ref, x)], a.reps, dev)
        row("layernorm", f"LayerNormLSTM {L}x{H} fwd+bwd", t[0], t[1], "torch.nn.LSTM", 0.7,
            note=f"[{ln.last_kernel}]")


def bench_lengths(a: argparse.Namespace, dev: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(a.T // 10, a.T + 1, (a.batch,), generator=g)
    x = torch.randn(a.batch, a.T, a.E, device=dev, requires_grad=True)
    for cls in (rnnkit.LSTM, rnnkit.GRU):
        L, H = a.sizes[0]
        ref, auto = torch_twin(cls, a.E, H, L, dev)
        fast = cls.from_torch(ref, kernel="fast").to(dev)

        def packed(ref: nn.Module = ref) -> tuple[torch.Tensor, object]:
            p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, st = ref(p)
            return pad_packed_sequence(out, batch_first=True, total_length=a.T)[0], st

        def packed_step() -> None:
            packed()[0].sum().backward()

        diff = (auto(x, lengths=lengths)[0] - packed()[0]).abs().max().item()
        diff = max(diff, (fast(x, lengths=lengths)[0] - packed()[0]).abs().max().item())
        t = race([train_step(auto, x, lengths=lengths), train_step(fast, x, lengths=lengths),
                  packed_step], a.reps, dev)
        name = f"{cls.__name__} {L}x{H} fwd+bwd"
        row("lengths", f"{name}, auto [{auto.last_kernel}]", t[0], t[2], "pack_padded + torch.nn",
            1.0, note=f"max |diff| {diff:.1e}")
        row("lengths", f"{name}, fast", t[1], t[2], "pack_padded + torch.nn", None)


def bench_minrnn(a: argparse.Namespace, dev: torch.device) -> None:
    H, B = a.sizes[0][1], a.min_batch
    for T in a.min_lengths:
        x = torch.randn(B, T, a.E, device=dev, requires_grad=True)
        reps = max(2, a.reps // 3)
        for ours_cls, peer_cls in ((rnnkit.MinGRU, nn.GRU), (rnnkit.MinLSTM, nn.LSTM)):
            ours = ours_cls(a.E, H).to(dev)  # scan="auto": one C pass on CPU, else chunked
            chunked = ours_cls(a.E, H, scan="chunked").to(dev)
            chunked.load_state_dict(ours.state_dict())
            peer = peer_cls(a.E, H, batch_first=True).to(dev)
            t = race([train_step(ours, x), train_step(chunked, x), train_step(peer, x)], reps,
                     dev, warmup=1)
            algo = scan.resolve(ours.scan, x)
            target = 5.0 if (ours_cls is rnnkit.MinGRU and T == max(a.min_lengths)) else None
            name = f"{ours_cls.__name__} 1x{H} B={B} T={T} fwd+bwd"
            row("minrnn", f"{name} [{ours.last_kernel}: {algo}]", t[0], t[2],
                f"torch.nn.{peer_cls.__name__}", target)
            if algo != "chunked":
                row("minrnn", f"{name} [{chunked.last_kernel}: chunked]", t[1], t[2],
                    f"torch.nn.{peer_cls.__name__}", None)


class CharLSTM(nn.Module):
    """Embedding -> 2-layer LSTM -> head, as a character LM: the sampling benchmark's model."""

    def __init__(self, V: int, E: int, H: int, L: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.lstm = nn.LSTM(E, H, L, batch_first=True)
        self.head = nn.Linear(H, V)


def bench_sample(a: argparse.Namespace, dev: torch.device) -> None:
    V, E, H, L, n = 96, 64, a.sample_size[1], a.sample_size[0], a.sample_chars
    torch.manual_seed(0)
    peer = CharLSTM(V, E, H, L).to(dev).eval()
    ours = rnnkit.LSTM.from_torch(peer.lstm).to(dev).eval()
    cells = [nn.LSTMCell(E if k == 0 else H, H).to(dev) for k in range(L)]
    for k, c in enumerate(cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(c, name).data.copy_(getattr(peer.lstm, f"{name}_l{k}"))

    def sampler(step: Callable) -> Callable[[], list[int]]:
        def run() -> list[int]:
            gen = torch.Generator(device=dev).manual_seed(0)
            tok, state, out = torch.zeros(1, dtype=torch.long, device=dev), None, []
            for _ in range(n):
                h, state = step(peer.emb(tok), state)
                p = torch.softmax(peer.head(h) / 0.8, -1)
                tok = torch.multinomial(p, 1, generator=gen)[0]
                out.append(int(tok))
            return out
        return run

    stepper = ours.stepper(1)

    def step_rnnkit(x: torch.Tensor, state: object) -> tuple:
        return stepper(x, state)

    def step_lstm(x: torch.Tensor, state: object) -> tuple:
        y, state = peer.lstm(x[:, None], state)
        return y[:, 0], state

    def step_cells(x: torch.Tensor, state: list | None) -> tuple:
        state = state or [None] * L
        new = []
        for k, c in enumerate(cells):
            h, cc = c(x) if state[k] is None else c(x, state[k])
            new.append((h, cc))
            x = h
        return x, new

    runs = {}

    def ours_run() -> None:
        with torch.inference_mode():
            runs["rnnkit"] = sampler(step_rnnkit)()

    def lstm_run() -> None:  # "default settings": no inference_mode, just no_grad as usual
        with torch.no_grad():
            runs["lstm"] = sampler(step_lstm)()

    def cells_run() -> None:
        with torch.inference_mode():
            runs["cells"] = sampler(step_cells)()

    t = race([ours_run, lstm_run, cells_run], max(3, a.reps // 2), dev, warmup=1)
    same = runs["rnnkit"] == runs["lstm"] == runs["cells"]
    cps = [n / s for s in t]
    note = "same characters" if same else "characters DIFFER"
    row("sample", f"LSTM {L}x{H} batch 1, chars/s", cps[0], cps[2],
        "2 nn.LSTMCell, inference", 1.0, unit="chars/s", note=note)
    row("sample", f"LSTM {L}x{H} batch 1, chars/s", cps[0], cps[1],
        "nn.LSTM per step", 5.0, unit="chars/s", note=note)


def matmul_gflops(dev: torch.device, n: int) -> tuple[float, float]:
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    from rnnkit.kernels import gemm
    t = race([lambda: a @ b, lambda: gemm.mm(a, b)], 5, dev)
    return 2 * n ** 3 / t[0] / 1e9, 2 * n ** 3 / t[1] / 1e9


def bench_flops(a: argparse.Namespace, dev: torch.device) -> dict:
    mm_torch, mm_dnn = matmul_gflops(dev, a.mm_size)
    peak = max(mm_torch, mm_dnn)
    print(f"  matmul {a.mm_size}²: torch.mm {mm_torch:.0f} GFLOP/s, oneDNN {mm_dnn:.0f} GFLOP/s",
          flush=True)
    x = torch.randn(a.batch, a.T, a.E, device=dev, requires_grad=True)
    out = {"matmul_torch_gflops": mm_torch, "matmul_onednn_gflops": mm_dnn}
    for L, H in a.sizes:
        ref, _ = torch_twin(rnnkit.LSTM, a.E, H, L, dev)
        fast = rnnkit.LSTM.from_torch(ref, kernel="fast").to(dev)
        flops = 0
        for k in range(L):  # forward: 2 * 4H * (I + H) per token; backward twice that
            flops += 3 * 2 * 4 * H * ((a.E if k == 0 else H) + H) * a.batch * a.T
        t = race([train_step(fast, x), train_step(ref, x)], a.reps, dev)
        for name, s in (("torch.nn", t[1]), ("fast", t[0])):
            g = flops / s / 1e9
            out[f"LSTM {L}x{H} {name}"] = g
            print(f"  flops      LSTM {L}x{H} fwd+bwd {name:9s} {g:6.1f} GFLOP/s = "
                  f"{g / peak:.0%} of the matmul peak ({peak:.0f})", flush=True)
    return out


# -- report ----------------------------------------------------------------------------------
def chart(path: Path, title: str) -> None:
    rows = [r for r in ROWS]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    labels = [f"{r['section']}: {r['config']} vs {r['peer_name']}" for r in rows]
    ys = range(len(rows))
    colors = ["#bbbbbb" if r["target"] is None else ("#2a9d8f" if r["ok"] else "#e76f51")
              for r in rows]
    ax.barh(list(ys), [r["speed"] for r in rows], color=colors)
    for y, r in zip(ys, rows, strict=True):
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", lw=1.5)
    ax.axvline(1.0, color="#555555", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed vs peer (peer time / rnnkit time; log scale); black tick = target")
    ax.set_title(title.replace("; ", "\n", 1), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown() -> str:
    lines = ["| section | configuration | rnnkit | peer | speed | target |",
             "|---|---|---:|---|---:|---:|"]
    for r in ROWS:
        scale = 1e3 if r["unit"] == "ms" else 1.0
        unit = "ms" if r["unit"] == "ms" else "chars/s"
        tgt = "" if r["target"] is None else f"≥ {r['target']:.2f}× {'✓' if r['ok'] else '✗'}"
        note = f" {r['note']}" if r["note"] else ""
        lines.append(f"| {r['section']} | {r['config']}{note} "
                     f"| {r['rnnkit'] * scale:.1f} {unit} | {r['peer_name']}: "
                     f"{r['peer'] * scale:.1f} | **{r['speed']:.2f}×** | {tgt} |")
    return "\n".join(lines)


def autocast_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A training step (forward and backward) under bfloat16 autocast, as ``--precision bf16``
    trains."""
    def f() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = model(x)[0]
        out.float().sum().backward()
    return f


def bench_bf16(a: argparse.Namespace, dev: torch.device) -> None:
    """LSTM training steps under bf16 autocast: rnnkit (``auto``: the bfloat16 C kernel where
    the CPU has AVX512-BF16) vs torch.nn.LSTM under the same autocast (oneDNN's bf16 kernel),
    and vs rnnkit's float32 fast path (no autocast)."""
    from rnnkit.kernels import native

    if dev.type != "cpu" or not native.bf16_capable():
        print("  skipped: the bfloat16 kernels run on a CPU with AVX512-BF16", flush=True)
        return
    x = torch.randn(a.batch, a.T, a.E, device=dev, requires_grad=True)
    for cls in (rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN):
        for L, H in a.bf16_sizes:
            if cls is not rnnkit.LSTM and (L, H) != a.bf16_sizes[0]:
                continue
            ref, ours = torch_twin(cls, a.E, H, L, dev)
            f32 = cls.from_torch(ref, kernel="fast").to(dev)
            t = race([autocast_step(ours, x), autocast_step(ref, x), train_step(f32, x)],
                     max(3, a.reps // 2), dev)
            name = f"{cls.__name__} {L}x{H} fwd+bwd, bf16 autocast"
            row("bf16", name, t[0], t[1], "torch.nn bf16 autocast",
                1.2 if cls is rnnkit.LSTM else None, note=f"[{ours.last_kernel.runs}]")
            row("bf16", name, t[0], t[2], "rnnkit float32 fast", None)


SECTIONS = {"auto": bench_auto, "fast": bench_fast, "bf16": bench_bf16, "record": bench_record,
            "layernorm": bench_layernorm, "lengths": bench_lengths, "minrnn": bench_minrnn,
            "sample": bench_sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per program")
    ap.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}, flops")
    ap.add_argument("--write-table", action="store_true", help="write the auto section's "
                    "fused/fast times to rnnkit/kernels/auto_table.py (what kernel=auto reads)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--out", default="bench/results", help="folder for the JSON and PNG")
    ap.add_argument("--glibc-default-malloc", action="store_true",
                    help="leave glibc's malloc returning freed blocks to the system (then every "
                         "step page-faults its large buffers anew, both programs alike)")
    a = ap.parse_args()
    if a.quick and a.write_table:
        ap.error("--write-table needs the real sizes, not --quick")
    # both programs run in this process: as the rnnkit command does, keep freed memory for reuse
    keep = False if a.glibc_default_malloc else keep_freed_memory()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    a.batch, a.T, a.E = 32, 100, 64
    a.sizes = [(1, 256), (2, 512)]
    a.bf16_sizes = [(1, 512), (2, 512)]
    a.min_lengths, a.min_batch = [256, 1024, 4096], 16
    a.sample_size, a.sample_chars, a.mm_size = (2, 512), 300, 2048
    if a.quick:
        a.batch, a.T, a.reps = 4, 20, 3
        a.sizes = a.bf16_sizes = [(1, 32), (2, 48)]
        a.min_lengths, a.min_batch = [64, 256], 4
        a.sample_size, a.sample_chars, a.mm_size = (2, 64), 30, 256
    torch.manual_seed(0)
    dev_name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                else f"{platform.processor() or platform.machine()} CPU, {a.threads} threads")
    header = (f"rnnkit kernels bench — torch {torch.__version__}, {dev_name}, "
              f"{os.cpu_count()} cores; B={a.batch}, T={a.T}, E={a.E} unless noted; "
              f"malloc keeps freed memory: {'yes' if keep else 'no'}")
    print(header, flush=True)
    wanted = a.only.split(",") if a.only else [*SECTIONS, "flops"]
    t0 = time.perf_counter()
    flops = {}
    for name in wanted:
        t = time.perf_counter()
        print(f"[{name}]", flush=True)
        if name == "flops":
            flops = bench_flops(a, dev)
        else:
            SECTIONS[name](a, dev)
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    total = time.perf_counter() - t0
    table = markdown()
    print("\n" + table + f"\n\n{header}; total {total / 60:.1f} min")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if a.quick else dev.type
    (out / f"kernels-{tag}.json").write_text(json.dumps(
        {"header": header, "torch": torch.__version__, "device": dev_name,
         "threads": a.threads, "python": sys.version.split()[0], "seconds": total,
         "keep_freed_memory": keep,
         "shapes": {"batch": a.batch, "T": a.T, "E": a.E, "sizes": a.sizes},
         "rows": ROWS, "flops": flops}, indent=1))
    (out / f"kernels-{tag}.md").write_text(table + "\n")
    if ROWS:
        chart(out / f"kernels-{tag}.png", header)
    print(f"wrote {out}/kernels-{tag}.json, .md, .png")


if __name__ == "__main__":
    main()
