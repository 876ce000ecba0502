"""Builds, caches and loads rnnkit's C kernels, and lays out weights the way they read them.

The C lives in real files under ``csrc/`` (package data): ``common.h`` (OpenMP macros,
activations, per-thread workspace, row ranges, the put helpers), ``panel.h`` (the panel
product), one ``.c`` per cell family (``lstm.c``, ``gru.c``, ``rnn.c``, ``layernorm_lstm.c``,
``minrnn.c``), ``bf16.c`` (LSTM, GRU and RNN in bfloat16 on AVX512-BF16, compiled for that ISA
alone where the compiler knows it: :func:`bf16_capable`, :func:`pack_bf16`) and
``kernels.c``, the one translation unit that includes them: one compile, one library. What
each entry point computes is written above it in C; it is called only through
:mod:`rnnkit.kernels.bindings` (typed, checked arguments).

Why whole sequences in C: per time step an LSTM has one small product ``(B, H) @ (H, 4H)`` and
six to eight elementwise ops; through torch each is a call with a fixed cost, as large as the
arithmetic at ``B = 32, H = 256``. One C call runs all ``T`` steps: each thread of torch's
OpenMP team owns fixed blocks of batch rows for the whole sequence (a row's state at ``t``
needs only its own state at ``t - 1``, so the threads never wait for each other), multiplies
them against weights packed once into panels of :data:`PW` columns (:func:`pack`; an AVX-512
FMA kernel, 8 rows x 32 columns) and applies the cell's elementwise math while the step's rows
are in cache. The weight gradients stay one large oneDNN product over all steps
(:func:`rnnkit.kernels.gemm.products_t`), for which the backward writes its operand transposed.

:func:`lib` compiles ``csrc/kernels.c`` with the system C compiler (``$CC`` or ``cc``; ``-O3``,
AVX-512 or AVX2/FMA as torch reports them, no ``-ffast-math``; constants as ``-D`` defines,
:data:`DEFINES`) into ``$RNNKIT_CACHE`` (default ``~/.cache/rnnkit``) as
``rnnkit-kernels-<key>.so``, the key a hash of every source file, the compiler and the flags,
and loads it with ctypes. Built with ``-fopenmp`` where that links, the loops run on torch's
own OpenMP thread team (``libgomp.so.1`` resolves to the copy torch has loaded). Without a
compiler, or with ``RNNKIT_NATIVE=0``, :func:`lib` returns ``None`` and the kernels run the
same math in torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

PW = 32  # the C products' panel width: columns per packed panel, two AVX-512 vectors

CSRC = Path(__file__).parent / "csrc"  # the C sources (package data)
MAIN = "kernels.c"  # the one translation unit: #includes every other file in CSRC
DEFINES = {"PW": PW}  # constants the C reads, passed as -D defines


def sources() -> dict[str, str]:
    """Every C source file's text by name (``kernels.c`` includes the others)."""
    return {f.name: f.read_text() for f in sorted(CSRC.iterdir()) if f.suffix in (".c", ".h")}


def defines() -> list[str]:
    return [f"-D{k}={v}" for k, v in DEFINES.items()]



def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first: AVX-512 or AVX2/FMA as torch reports this CPU, then
    plain; each first with OpenMP (``-fopenmp``: the library then needs ``libgomp.so.1``, which
    resolves to the one torch has loaded, so the C loops share torch's thread team), then
    without."""
    base = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared",
            "-std=c99"]  # -fopenmp-simd: the `omp simd` reductions only, no OpenMP runtime
    sets = []
    if platform.machine() in ("x86_64", "AMD64"):
        cap = torch.backends.cpu.get_cpu_capability()
        if cap == "AVX512":  # 16 lanes: the step's exp/tanh take half the time of AVX2's 8
            sets.append([*base, "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
                         "-mprefer-vector-width=512"])
        if cap in ("AVX2", "AVX512"):
            sets.append([*base, "-mavx2", "-mfma"])
    return [s for isa in [*sets, base] for s in (["-fopenmp", *isa], isa)]


def cache_key(cc: str, flags: list[str]) -> str:
    """Hash of every source file (name and text), the compiler and the flags (defines too)."""
    h = hashlib.sha256()
    for name, text in sources().items():
        h.update(f"{name}\0{text}\0".encode())
    h.update(f"{cc}\0{' '.join(flags)}".encode())
    return h.hexdigest()[:16]


def compile_command(cc: str, flags: list[str], out: Path) -> list[str]:
    """The command that builds the library from :data:`CSRC` into ``out``."""
    libs = [f for f in flags if f.startswith("-l")]
    cflags = [f for f in flags if not f.startswith("-l")]
    return [cc, *cflags, *defines(), str(CSRC / MAIN), "-o", str(out), *libs, "-lm"]


def _build(cc: str, flags: list[str], cache_dir: Path) -> Path:
    so = cache_dir / f"rnnkit-kernels-{cache_key(cc, [*flags, *defines()])}.so"
    if not so.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            out = Path(tmp) / "rnnkit-kernels.so"
            subprocess.run(compile_command(cc, flags, out), check=True, capture_output=True,
                           timeout=120)
            os.replace(out, so)  # atomic: concurrent builds are harmless
    return so


@cache
def lib() -> ctypes.CDLL | None:
    """The compiled library, or ``None`` when it cannot be built (or ``RNNKIT_NATIVE=0``). Its
    functions are called only through :mod:`rnnkit.kernels.bindings`, which declares their
    argument types."""
    if os.environ.get("RNNKIT_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC", "cc")
    cache_dir = Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit"))
    lib = None
    for flags in _flag_sets():
        try:
            lib = ctypes.CDLL(str(_build(cc, flags, cache_dir)))
            break
        except (OSError, subprocess.SubprocessError):
            continue
    if lib is not None:  # the bfloat16 products on AMX tiles where they run (bf16_amx)
        lib.rnnkit_bf16_amx(ctypes.c_int(int(os.environ.get("RNNKIT_AMX", "1") != "0")))
    return lib



def pack(m: Tensor) -> Tensor:
    """``m`` ``(K, N)`` laid out as the C products read it: ``(ceil(N / PW), K, PW)``, panels of
    ``PW`` columns, the last zero padded."""
    K, N = m.shape
    panels = -(-N // PW)
    z = m.new_zeros(K, panels * PW)
    z[:, :N] = m
    return z.view(K, panels, PW).transpose(0, 1).contiguous()


def pack_units(w: Tensor) -> Tensor:
    """A gate-stacked weight ``w`` ``(4H, K)`` (torch.nn's layout, gates i, f, g, o) as
    :func:`pack` lays out ``w^T`` but with its columns unit-interleaved: panel ``j`` holds gates
    i, f, g, o of ``u = PW / 4`` units from ``u j`` (zero past ``H``), so one panel holds every
    gate of its units. A bias ``(4H,)`` comes back as ``(ceil(H / u) * PW,)`` in the same
    order."""
    z = _interleave(w)
    return z if w.dim() == 1 else pack(z.t())


def pack_units_rows(t: Tensor) -> Tensor:
    """Rows of gate pre-activations ``t`` ``(N, 4H)`` (gates i, f, g, o) in the column order of
    :func:`pack_units` (its bias order): ``(N, ceil(H / u) * PW)``, zero padded."""
    return _interleave(t.t()).t().contiguous()


def _interleave(w: Tensor) -> Tensor:
    """``w`` ``(4H, ...)``, gate-stacked, with its rows unit-interleaved and zero padded:
    ``(ceil(H / u) * PW, ...)``, ``u = PW / 4`` units of all four gates per ``PW`` rows."""
    H, u = w.shape[0] // 4, PW // 4
    units = -(-H // u) * u
    z = w.new_zeros(4, units, *w.shape[1:])
    z[:, :H] = w.reshape(4, H, *w.shape[1:])
    z = z.view(4, units // u, u, *w.shape[1:]).transpose(0, 1)  # (panels, gate, u, K)
    return z.reshape(units * 4, *w.shape[1:])


def pack_bf16(m: Tensor) -> Tensor:
    """``m`` ``(K, N)`` laid out as the bfloat16 C products read it (``csrc/bf16.c``):
    ``(ceil(N / PW), ceil(K / 2), 2 PW)`` bfloat16, panels of ``PW`` columns holding each
    column's rows ``k`` and ``k + 1`` side by side (the pair one AVX512-BF16 dot product reads),
    zero padded; rounded to nearest even, as ``m.bfloat16()`` rounds."""
    K, N = m.shape
    panels, K2 = -(-N // PW), -(-K // 2)
    z = m.new_zeros(2 * K2, panels * PW, dtype=torch.bfloat16)
    z[:K, :N] = m
    return z.view(K2, 2, panels, PW).permute(2, 0, 3, 1).reshape(panels, K2, 2 * PW)


def bf16_capable() -> bool:
    """Whether the bfloat16 C kernels run here: the library is built with them (a compiler
    that knows AVX512-BF16) and this CPU has the instructions; ``RNNKIT_BF16=0`` says no (to
    run, and test, the float32 fallback)."""
    if os.environ.get("RNNKIT_BF16", "1") == "0":
        return False
    return _bf16_built()


def bf16_class() -> str:
    """This CPU's bfloat16 class, a key of ``auto``'s table (:func:`rnnkit.kernels.table_key`):
    ``"amx"`` where it has AMX tiles (oneDNN, hence torch.nn's bf16 kernel, multiplies on
    them), else ``"avx512bf16"`` (the dot-product instructions rnnkit's bf16 kernels use)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "amx" if amx is not None and amx() else "avx512bf16"


@cache
def _bf16_built() -> bool:
    lib_ = lib()
    return lib_ is not None and bool(lib_.rnnkit_bf16_supported())


def bf16_amx(on: bool | None = None) -> bool:
    """Whether the bfloat16 kernels' products run on AMX tiles (``csrc/bf16.c``,
    ``rows_mm_amx``) rather than on the AVX512-BF16 dot products alone; ``on`` switches them
    (``True`` takes effect only where the CPU has AMX-TILE and AMX-BF16 and Linux grants the
    tile state). On by default where they can run; ``RNNKIT_AMX=0`` starts with them off."""
    lib_ = lib()
    if lib_ is None:
        return False
    return bool(lib_.rnnkit_bf16_amx(ctypes.c_int(-1 if on is None else int(on))))


def usable(*tensors: Tensor) -> bool:
    """Whether the C kernels can run on these tensors (CPU float32) and are built."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and (
        lib() is not None)
