"""Typed bindings of the C kernels (:mod:`rnnkit.kernels.native` builds and loads the library):
one Python function per C entry point, with the C function's name and arguments in its order.

Each checks every tensor it is given (dtype, CPU, contiguous, the exact shape the C reads or
writes, derived from the dimensions it is given) and raises a ``ValueError`` naming the
function, the argument, what was expected and what was given, before any address reaches C.
This is the only module that passes tensor addresses (``data_ptr()``) anywhere.

Shapes below: ``N`` packed rows, ``N = offs[T-1] + sizes[T-1]`` (``sizes``, ``offs`` ``(T,)``
int64: step ``t`` owns rows ``offs[t] .. offs[t] + sizes[t] - 1``, see
:class:`rnnkit.kernels.plan.Plan`), ``B`` sequences, ``H`` units, ``I`` input features.
``panels(K, M)`` is :func:`rnnkit.kernels.native.pack`'s layout of a ``(K, M)`` matrix,
``(ceil(M / PW), K, PW)``. The whole-sequence kernels raise ``MemoryError`` when a thread
could not allocate its buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable, Sequence
from functools import cache

import torch
from torch import Tensor

from rnnkit.kernels import native

F32, I64, BF16 = torch.float32, torch.int64, torch.bfloat16
_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float

# name: (argument types, result type); int results: 0, or 1 when a thread could not allocate
SIGNATURES: dict[str, tuple[list, type | None]] = {
    "rnnkit_threads": ([], _I),
    "lstm_seq_forward": ([_P] * 10 + [_L] * 4, _I),
    "lstm_seq_backward": ([_P] * 10 + [_L, _P, _P, _L, _L, _L, _L], _I),
    "lstm_stack_step": ([_P] * 8 + [_L] * 4, None),
    "lstm_stack_run": ([_P] * 10 + [_L] * 5, None),
    "gru_seq_forward": ([_P] * 8 + [_L] * 3, _I),
    "gru_seq_backward": ([_P] * 9 + [_L, _P, _P, _L, _L, _L], _I),
    "gru_cho_seq_forward": ([_P] * 8 + [_L] * 3, _I),
    "gru_cho_seq_backward": ([_P] * 10 + [_L] * 3, _I),
    "rnn_seq_forward": ([_P] * 6 + [_L] * 3 + [_I], _I),
    "rnn_seq_backward": ([_P] * 8 + [_L] * 3 + [_I], _I),
    "lnlstm_seq_forward": ([_P] * 21 + [_L] * 4 + [_F], _I),
    "lnlstm_seq_backward": ([_P] * 22 + [_L, _P, _P, _L, _L, _L, _L], _I),
    "minrnn_forward": ([_P] * 4 + [_L] * 3 + [_I], None),
    "minrnn_backward": ([_P] * 7 + [_L] * 3 + [_I], None),
    "rnnkit_bf16_supported": ([], _I),
    "rnnkit_bf16_amx": ([_I], _I),
    "pack_bf16": ([_P, _L, _L, _I, _P, _L, _L], None),
    "lstm_seq_forward_bf16": ([_P] * 11 + [_L] * 4, _I),
    "lstm_seq_backward_bf16": ([_P] * 10 + [_L, _P, _P, _L, _L, _L, _L], _I),
    "rnn_seq_forward_bf16": ([_P] * 9 + [_L] * 4 + [_I], _I),
    "rnn_seq_backward_bf16": ([_P] * 7 + [_L, _P, _P, _L, _L, _L, _L, _I], _I),
    "gru_seq_forward_bf16": ([_P] * 11 + [_L] * 4, _I),
    "gru_seq_backward_bf16": ([_P] * 11 + [_L, _P, _P, _L, _L, _L, _L], _I),
}


@cache
def _typed(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (args, res) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def _c() -> ctypes.CDLL:
    lib = native.lib()
    if lib is None:
        raise RuntimeError("rnnkit's C kernels are not built (no C compiler, or "
                           "RNNKIT_NATIVE=0): check native.usable() before calling a binding")
    return _typed(lib)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ptr(fn: str, name: str, t: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype = F32,
         optional: bool = False) -> int:
    """The address of ``t`` after checking it is a CPU, contiguous ``dtype`` tensor of
    ``shape`` (``optional``: ``None`` passes as a null pointer)."""
    if t is None and optional:
        return 0
    if not isinstance(t, Tensor):
        raise ValueError(f"{fn}: {name} must be a {_name(dtype)} tensor of shape {shape}, got "
                         f"{type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{fn}: {name} must be {_name(dtype)}, got {_name(t.dtype)}")
    if not t.is_cpu:
        raise ValueError(f"{fn}: {name} must be on the CPU, got {t.device}")
    if t.shape != shape:
        raise ValueError(f"{fn}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{fn}: {name} must be contiguous, got strides {t.stride()} for shape "
                         f"{tuple(t.shape)}")
    return t.data_ptr()


def panels(K: int, M: int) -> tuple[int, int, int]:
    """Shape of a ``(K, M)`` matrix packed by :func:`rnnkit.kernels.native.pack`."""
    return (-(-M // native.PW), K, native.PW)


def _rows(fn: str, sizes: Tensor, offs: Tensor, T: int, B: int) -> tuple[int, int, int]:
    """Addresses of ``sizes``, ``offs`` ``(T,)`` int64 and the number of packed rows ``N``
    they describe (what the C reads as ``offs[T-1] + sizes[T-1]``)."""
    ps, po = _ptr(fn, "sizes", sizes, (T,), I64), _ptr(fn, "offs", offs, (T,), I64)
    if T < 1 or B < 1:
        raise ValueError(f"{fn}: T and B must be at least 1, got T={T}, B={B}")
    first = int(sizes[0])
    if not 1 <= first <= B:
        raise ValueError(f"{fn}: sizes[0] must be in [1, B={B}], got {first}")
    return ps, po, int(offs[T - 1]) + int(sizes[T - 1])


def _done(failed: int, what: str, B: int, H: int) -> None:
    if failed == 2:
        raise RuntimeError(f"rnnkit's C {what} kernel is not built here (a compiler without "
                           f"AVX512-BF16): check native.bf16_capable() first")
    if failed:
        raise MemoryError(f"rnnkit's C {what} kernel could not allocate its per-thread buffers "
                          f"(B={B}, H={H}); try a smaller batch")


def versions(tensors: Iterable[Tensor]) -> tuple[tuple[int, int], ...]:
    """Changes when one of ``tensors`` is written in place (its version counter) or replaced
    (its address): whether weights packed for C are still those of the layer."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def threads() -> int:
    """Threads a parallel loop of the C kernels uses (torch.set_num_threads sets it)."""
    return _c().rnnkit_threads()


# -- LSTM (csrc/lstm.c) ------------------------------------------------------------------------
def lstm_seq_forward(X: Tensor, wx: Tensor | None, bias: Tensor | None, wh: Tensor,
                     HH: Tensor, CC: Tensor, G: Tensor, TC: Tensor, sizes: Tensor, offs: Tensor,
                     T: int, B: int, H: int, I: int) -> None:
    """LSTM forward over packed rows: ``X`` ``(N, I)``; ``wx`` ``panels(I, 4H)`` (``W_ih^T``),
    ``bias`` ``(4H,)``, ``wh`` ``panels(H, 4H)`` (``W_hh^T``); writes ``HH``, ``CC``
    ``(B + N, H)`` (after ``h0``, ``c0`` in their first ``B`` rows), gates ``G`` ``(N, 4H)``,
    ``TC`` ``(N, H)``. ``wx`` and ``bias`` None: ``X`` ``(N, 4H)`` is the input projection
    ``x W_ih^T + bias`` already (``I`` = 4H)."""
    f = "lstm_seq_forward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    if (wx is None) != (bias is None) or (wx is None and I != 4 * H):
        raise ValueError(f"{f}: a projected X needs wx and bias None and I = 4H = {4 * H}, got "
                         f"wx {'None' if wx is None else 'given'}, bias "
                         f"{'None' if bias is None else 'given'}, I {I}")
    _done(_c().lstm_seq_forward(
        _ptr(f, "X", X, (N, I)), _ptr(f, "wx", wx, panels(I, 4 * H), optional=True),
        _ptr(f, "bias", bias, (4 * H,), optional=True), _ptr(f, "wh", wh, panels(H, 4 * H)),
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "CC", CC, (B + N, H)),
        _ptr(f, "G", G, (N, 4 * H)), _ptr(f, "TC", TC, (N, H)), ps, po, T, B, H, I),
        "LSTM forward", B, H)


def lstm_seq_backward(G: Tensor, CC: Tensor, TC: Tensor, dY: Tensor, w: Tensor, run_h: Tensor,
                      run_c: Tensor, dAT: Tensor, dX: Tensor | None, db: Tensor, sizes: Tensor,
                      offs: Tensor, T: int, B: int, H: int, I: int) -> None:
    """LSTM backward: ``G`` ``(N, 4H)``, ``CC`` ``(B + N, H)``, ``TC``, ``dY`` ``(N, H)``;
    ``w`` ``panels(4H, H + I)`` (``[W_hh | W_ih]``; ``I = 0``: ``W_hh`` alone and ``dX`` None);
    ``run_h``, ``run_c`` ``(B, H)`` in and out; writes ``dAT`` ``(4H, N)``, ``dX`` ``(N, I)`` and
    adds to ``db`` ``(threads, 4H)``."""
    f = "lstm_seq_backward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    ndb = db.shape[0] if isinstance(db, Tensor) and db.dim() == 2 else 1
    _done(_c().lstm_seq_backward(
        _ptr(f, "G", G, (N, 4 * H)), _ptr(f, "CC", CC, (B + N, H)), _ptr(f, "TC", TC, (N, H)),
        _ptr(f, "dY", dY, (N, H)), _ptr(f, "w", w, panels(4 * H, H + I)),
        _ptr(f, "run_h", run_h, (B, H)), _ptr(f, "run_c", run_c, (B, H)),
        _ptr(f, "dAT", dAT, (4 * H, N)),
        _ptr(f, "dX", dX, (N, I)) if I else _ptr(f, "dX", dX, (N, 0), optional=True),
        _ptr(f, "db", db, (ndb, 4 * H)), ndb, ps, po, T, B, H, I), "LSTM backward", B, H)


def panels_bf16(K: int, M: int) -> tuple[int, int, int]:
    """Shape of a ``(K, M)`` matrix packed by :func:`rnnkit.kernels.native.pack_bf16`."""
    return (-(-M // native.PW), -(-K // 2), 2 * native.PW)


def pack_bf16(blocks: Sequence[Tensor], transposed: bool = False) -> Tensor:
    """:func:`rnnkit.kernels.native.pack_bf16` in C (``csrc/bf16.c``, one pass, equal to it):
    packs ``M = cat(blocks, 1)`` (each ``(K, n_i)``), or with ``transposed``
    ``M = cat(blocks, 0).t()`` (each ``(n_i, K)``: a weight read as its transpose, with no
    transposed copy). Blocks float32 (or converted), any layout (made contiguous)."""
    f = "pack_bf16"
    blocks = [b.detach().to(F32).contiguous() for b in blocks]
    K = blocks[0].shape[1 if transposed else 0]
    widths = [b.shape[0 if transposed else 1] for b in blocks]
    for i, b in enumerate(blocks):
        if b.dim() != 2 or b.shape[1 if transposed else 0] != K:
            want = "(n, K)" if transposed else "(K, n)"
            raise ValueError(f"{f}: blocks[{i}] must be {want} with K={K}, got "
                             f"{tuple(b.shape)}")
    N = sum(widths)
    out = torch.zeros(panels_bf16(K, N), dtype=BF16)
    po = _ptr(f, "dst", out, panels_bf16(K, N), BF16)
    n0 = 0
    for i, (b, n) in enumerate(zip(blocks, widths, strict=True)):
        shape = (n, K) if transposed else (K, n)
        _c().pack_bf16(_ptr(f, f"blocks[{i}]", b, shape), K, n, int(transposed), po, n0,
                       out.shape[0])
        n0 += n
    return out


def even(n: int) -> int:
    """``n`` rounded up to even: the width of a bfloat16 row the C kernels read in pairs."""
    return n + (n & 1)


def lstm_seq_forward_bf16(X: Tensor, wx: Tensor, bias: Tensor, wh: Tensor, HH: Tensor,
                          HB: Tensor, CC: Tensor, G: Tensor, TC: Tensor, sizes: Tensor,
                          offs: Tensor, T: int, B: int, H: int, I: int) -> None:
    """LSTM forward in bfloat16 (``csrc/bf16.c``): ``X`` ``(N, even(I))`` bfloat16; ``wx``
    ``panels_bf16(I, 4H)``, ``wh`` ``panels_bf16(H, 4H)`` bfloat16; ``bias`` ``(4H,)``;
    writes ``HH``, ``CC`` ``(B + N, H)`` and ``HB`` ``(B + N, even(H))`` bfloat16 (after
    ``h0``, ``c0``, ``bfloat16(h0)`` in their first ``B`` rows), ``G`` ``(N, 4H)``, ``TC``
    ``(N, H)``."""
    f = "lstm_seq_forward_bf16"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().lstm_seq_forward_bf16(
        _ptr(f, "X", X, (N, even(I)), BF16), _ptr(f, "wx", wx, panels_bf16(I, 4 * H), BF16),
        _ptr(f, "bias", bias, (4 * H,)), _ptr(f, "wh", wh, panels_bf16(H, 4 * H), BF16),
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "HB", HB, (B + N, even(H)), BF16),
        _ptr(f, "CC", CC, (B + N, H)), _ptr(f, "G", G, (N, 4 * H)), _ptr(f, "TC", TC, (N, H)),
        ps, po, T, B, H, I), "bfloat16 LSTM forward", B, H)


def lstm_seq_backward_bf16(G: Tensor, CC: Tensor, TC: Tensor, dY: Tensor, w: Tensor,
                           run_h: Tensor, run_c: Tensor, dAT: Tensor, dX: Tensor | None,
                           db: Tensor, sizes: Tensor, offs: Tensor, T: int, B: int, H: int,
                           I: int) -> None:
    """LSTM backward in bfloat16: as :func:`lstm_seq_backward` but ``w``
    ``panels_bf16(4H, H + I)`` bfloat16 and ``dAT`` ``(4H, N)`` bfloat16."""
    f = "lstm_seq_backward_bf16"
    ps, po, N = _rows(f, sizes, offs, T, B)
    ndb = db.shape[0] if isinstance(db, Tensor) and db.dim() == 2 else 1
    _done(_c().lstm_seq_backward_bf16(
        _ptr(f, "G", G, (N, 4 * H)), _ptr(f, "CC", CC, (B + N, H)), _ptr(f, "TC", TC, (N, H)),
        _ptr(f, "dY", dY, (N, H)), _ptr(f, "w", w, panels_bf16(4 * H, H + I), BF16),
        _ptr(f, "run_h", run_h, (B, H)), _ptr(f, "run_c", run_c, (B, H)),
        _ptr(f, "dAT", dAT, (4 * H, N), BF16),
        _ptr(f, "dX", dX, (N, I)) if I else _ptr(f, "dX", dX, (N, 0), optional=True),
        _ptr(f, "db", db, (ndb, 4 * H)), ndb, ps, po, T, B, H, I),
        "bfloat16 LSTM backward", B, H)


class StackWeights:
    """The weights of an LSTM stack packed for :func:`lstm_stack_step`, checked once: per layer
    ``wx[k]`` (``W_ih`` by :func:`rnnkit.kernels.native.pack_units`: ``(np, I_k, PW)``,
    ``np = ceil(H / (PW / 4))``, ``I_0 = I``, ``I_k = H`` above), ``wh[k]`` ``(np, H, PW)``,
    ``bias[k]`` ``(np * PW,)``. Holds the tensors while C reads them."""

    def __init__(self, wx: Sequence[Tensor], wh: Sequence[Tensor], bias: Sequence[Tensor],
                 I: int, H: int) -> None:
        f = "lstm_stack_step"
        L = len(wx)
        if L < 1 or len(wh) != L or len(bias) != L:
            raise ValueError(f"{f}: wx, wh, bias must hold one tensor per layer (L >= 1), got "
                             f"{len(wx)}, {len(wh)}, {len(bias)}")
        np_ = -(-H // (native.PW // 4))
        arr = ctypes.c_void_p * L
        self.tensors = (list(wx), list(wh), list(bias))
        self.wx = arr(*[_ptr(f, f"wx[{k}]", t, (np_, I if k == 0 else H, native.PW))
                        for k, t in enumerate(wx)])
        self.wh = arr(*[_ptr(f, f"wh[{k}]", t, (np_, H, native.PW)) for k, t in enumerate(wh)])
        self.bias = arr(*[_ptr(f, f"bias[{k}]", t, (np_ * native.PW,))
                          for k, t in enumerate(bias)])
        self.L, self.I, self.H, self.np = L, I, H, np_


def lstm_stack_step(x: Tensor, weights: StackWeights, h_prev: Tensor, c_prev: Tensor,
                    h: Tensor, c: Tensor, b: int) -> None:
    """One time step of an ``L``-layer LSTM stack: ``x`` ``(b, I)``; ``h_prev``, ``c_prev``
    ``(L, b, H)`` in, ``h``, ``c`` ``(L, b, H)`` out."""
    f = "lstm_stack_step"
    if not isinstance(weights, StackWeights):
        raise ValueError(f"{f}: weights must be a StackWeights, got {type(weights).__name__}")
    L, I, H = weights.L, weights.I, weights.H
    _c().lstm_stack_step(
        _ptr(f, "x", x, (b, I)), weights.wx, weights.wh, weights.bias,
        _ptr(f, "h_prev", h_prev, (L, b, H)), _ptr(f, "c_prev", c_prev, (L, b, H)),
        _ptr(f, "h", h, (L, b, H)), _ptr(f, "c", c, (L, b, H)), L, b, I, H)


def lstm_stack_run(x: Tensor | None, xp: Tensor | None, weights: StackWeights, h: Tensor,
                   c: Tensor, hs: Tensor, cs: Tensor, Y: Tensor, T: int, b: int) -> None:
    """``T`` steps of :func:`lstm_stack_step` in one call (a streamed chunk): ``x`` ``(T, b, I)``
    time-major, or ``xp`` ``(T, b, np * PW)`` layer 0's pre-activations ``x W_ih^T + bias``
    in :func:`rnnkit.kernels.native.pack_units`' order (the other None); ``h``, ``c``
    ``(L, b, H)`` the state in, and out after the chunk; ``Y`` ``(T, b, H)`` the top layer's
    ``h`` at every step; ``hs``, ``cs`` ``(L, b, H)`` scratch."""
    f = "lstm_stack_run"
    if not isinstance(weights, StackWeights):
        raise ValueError(f"{f}: weights must be a StackWeights, got {type(weights).__name__}")
    if (x is None) == (xp is None):
        raise ValueError(f"{f}: give exactly one of x and xp, got "
                         f"{'both' if x is not None else 'neither'}")
    L, I, H = weights.L, weights.I, weights.H
    st = (L, b, H)
    _c().lstm_stack_run(
        _ptr(f, "x", x, (T, b, I), optional=True),
        _ptr(f, "xp", xp, (T, b, weights.np * native.PW), optional=True), weights.wx, weights.wh,
        weights.bias, _ptr(f, "h", h, st), _ptr(f, "c", c, st), _ptr(f, "hs", hs, st),
        _ptr(f, "cs", cs, st), _ptr(f, "Y", Y, (T, b, H)), T, L, b, I, H)


# -- GRU (csrc/gru.c) --------------------------------------------------------------------------
def gru_seq_forward(xp: Tensor, wh: Tensor, bh: Tensor, HH: Tensor, G: Tensor, R: Tensor,
                    sizes: Tensor, offs: Tensor, T: int, B: int, H: int) -> None:
    """GRU, reset after the product: ``xp`` ``(N, 3H)``, ``wh`` ``panels(H, 3H)``, ``bh``
    ``(3H,)``; writes ``HH`` ``(B + N, H)``, gates ``G`` and products ``R`` ``(N, 3H)``."""
    f = "gru_seq_forward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().gru_seq_forward(
        _ptr(f, "xp", xp, (N, 3 * H)), _ptr(f, "wh", wh, panels(H, 3 * H)),
        _ptr(f, "bh", bh, (3 * H,)), _ptr(f, "HH", HH, (B + N, H)),
        _ptr(f, "G", G, (N, 3 * H)), _ptr(f, "R", R, (N, 3 * H)), ps, po, T, B, H),
        "GRU forward", B, H)


def gru_seq_backward(G: Tensor, R: Tensor, HH: Tensor, dY: Tensor, w: Tensor, run: Tensor,
                     dXP: Tensor, DQT: Tensor, db: Tensor, sizes: Tensor, offs: Tensor, T: int,
                     B: int, H: int) -> None:
    """GRU (reset after) backward: ``w`` ``panels(3H, H)`` (``W_hh``); ``run`` ``(B, H)`` in
    and out; writes ``dXP`` ``(N, 3H)``, ``DQT`` ``(3H, N)``, adds to ``db``
    ``(threads, 3H)``."""
    f = "gru_seq_backward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    ndb = db.shape[0] if isinstance(db, Tensor) and db.dim() == 2 else 1
    _done(_c().gru_seq_backward(
        _ptr(f, "G", G, (N, 3 * H)), _ptr(f, "R", R, (N, 3 * H)),
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "dY", dY, (N, H)),
        _ptr(f, "w", w, panels(3 * H, H)), _ptr(f, "run", run, (B, H)),
        _ptr(f, "dXP", dXP, (N, 3 * H)), _ptr(f, "DQT", DQT, (3 * H, N)),
        _ptr(f, "db", db, (ndb, 3 * H)), ndb, ps, po, T, B, H), "GRU backward", B, H)


def gru_cho_seq_forward(xp: Tensor, wrz: Tensor, wn: Tensor, HH: Tensor, G: Tensor, RH: Tensor,
                        sizes: Tensor, offs: Tensor, T: int, B: int, H: int) -> None:
    """GRU, reset before the product (Cho et al.): ``xp`` ``(N, 3H)``, ``wrz``
    ``panels(H, 2H)``, ``wn`` ``panels(H, H)``; writes ``HH`` ``(B + N, H)``, ``G``
    ``(N, 3H)``, ``RH`` ``(N, H)``."""
    f = "gru_cho_seq_forward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().gru_cho_seq_forward(
        _ptr(f, "xp", xp, (N, 3 * H)), _ptr(f, "wrz", wrz, panels(H, 2 * H)),
        _ptr(f, "wn", wn, panels(H, H)), _ptr(f, "HH", HH, (B + N, H)),
        _ptr(f, "G", G, (N, 3 * H)), _ptr(f, "RH", RH, (N, H)), ps, po, T, B, H),
        "GRU (reset before) forward", B, H)


def gru_cho_seq_backward(G: Tensor, HH: Tensor, dY: Tensor, wrz: Tensor, wn: Tensor,
                         run: Tensor, dA: Tensor, DAT: Tensor, sizes: Tensor, offs: Tensor,
                         T: int, B: int, H: int) -> None:
    """GRU (reset before) backward: ``wrz`` ``panels(2H, H)``, ``wn`` ``panels(H, H)``;
    ``run`` ``(B, H)`` in and out; writes ``dA`` ``(N, 3H)`` and ``DAT`` ``(3H, N)``."""
    f = "gru_cho_seq_backward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().gru_cho_seq_backward(
        _ptr(f, "G", G, (N, 3 * H)), _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "dY", dY, (N, H)),
        _ptr(f, "wrz", wrz, panels(2 * H, H)), _ptr(f, "wn", wn, panels(H, H)),
        _ptr(f, "run", run, (B, H)), _ptr(f, "dA", dA, (N, 3 * H)),
        _ptr(f, "DAT", DAT, (3 * H, N)), ps, po, T, B, H), "GRU (reset before) backward", B, H)


def gru_seq_forward_bf16(X: Tensor, wx: Tensor, bi: Tensor, wh: Tensor, bh: Tensor,
                         HH: Tensor, HB: Tensor, G: Tensor, R: Tensor, sizes: Tensor,
                         offs: Tensor, T: int, B: int, H: int, I: int) -> None:
    """GRU (reset after) in bfloat16 (``csrc/bf16.c``), input projection included: ``X``
    ``(N, even(I))`` bfloat16, ``wx`` ``panels_bf16(I, 3H)``, ``wh`` ``panels_bf16(H, 3H)``
    bfloat16, ``bi``, ``bh`` ``(3H,)``; writes ``HH`` ``(B + N, H)``, ``HB``
    ``(B + N, even(H))`` bfloat16 (after ``h0``), ``G`` and ``R`` ``(N, 3H)``."""
    f = "gru_seq_forward_bf16"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().gru_seq_forward_bf16(
        _ptr(f, "X", X, (N, even(I)), BF16), _ptr(f, "wx", wx, panels_bf16(I, 3 * H), BF16),
        _ptr(f, "bi", bi, (3 * H,)), _ptr(f, "wh", wh, panels_bf16(H, 3 * H), BF16),
        _ptr(f, "bh", bh, (3 * H,)), _ptr(f, "HH", HH, (B + N, H)),
        _ptr(f, "HB", HB, (B + N, even(H)), BF16), _ptr(f, "G", G, (N, 3 * H)),
        _ptr(f, "R", R, (N, 3 * H)), ps, po, T, B, H, I), "bfloat16 GRU forward", B, H)


def gru_seq_backward_bf16(G: Tensor, R: Tensor, HH: Tensor, dY: Tensor, wh: Tensor,
                          wx: Tensor | None, run: Tensor, DXT: Tensor, DQT: Tensor,
                          dX: Tensor | None, db: Tensor, sizes: Tensor, offs: Tensor, T: int,
                          B: int, H: int, I: int) -> None:
    """GRU (reset after) backward in bfloat16: ``wh`` ``panels_bf16(3H, H)`` (``W_hh``), ``wx``
    ``panels_bf16(3H, I)`` (``W_ih``; ``I = 0``: None, no ``dX``); ``run`` ``(B, H)`` in and
    out; writes ``DXT``, ``DQT`` ``(3H, N)`` bfloat16, ``dX`` ``(N, I)`` and adds to ``db``
    ``(threads, 6H)`` (``b_hh``'s gradient, then ``b_ih``'s)."""
    f = "gru_seq_backward_bf16"
    ps, po, N = _rows(f, sizes, offs, T, B)
    ndb = db.shape[0] if isinstance(db, Tensor) and db.dim() == 2 else 1
    _done(_c().gru_seq_backward_bf16(
        _ptr(f, "G", G, (N, 3 * H)), _ptr(f, "R", R, (N, 3 * H)),
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "dY", dY, (N, H)),
        _ptr(f, "wh", wh, panels_bf16(3 * H, H), BF16),
        _ptr(f, "wx", wx, panels_bf16(3 * H, I), BF16, optional=not I),
        _ptr(f, "run", run, (B, H)), _ptr(f, "DXT", DXT, (3 * H, N), BF16),
        _ptr(f, "DQT", DQT, (3 * H, N), BF16),
        _ptr(f, "dX", dX, (N, I)) if I else _ptr(f, "dX", dX, (N, 0), optional=True),
        _ptr(f, "db", db, (ndb, 6 * H)), ndb, ps, po, T, B, H, I),
        "bfloat16 GRU backward", B, H)


# -- RNN (csrc/rnn.c) --------------------------------------------------------------------------
def rnn_seq_forward(xp: Tensor, wh: Tensor, HH: Tensor, A: Tensor, sizes: Tensor, offs: Tensor,
                    T: int, B: int, H: int, relu: bool) -> None:
    """Elman RNN: ``xp`` ``(N, H)``, ``wh`` ``panels(H, H)``; writes ``HH`` ``(B + N, H)`` and
    the pre-activations ``A`` ``(N, H)``."""
    f = "rnn_seq_forward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().rnn_seq_forward(
        _ptr(f, "xp", xp, (N, H)), _ptr(f, "wh", wh, panels(H, H)),
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "A", A, (N, H)), ps, po, T, B, H, int(relu)),
        "RNN forward", B, H)


def rnn_seq_backward(HH: Tensor, dY: Tensor, w: Tensor, run: Tensor, dA: Tensor, DAT: Tensor,
                     sizes: Tensor, offs: Tensor, T: int, B: int, H: int, relu: bool) -> None:
    """Elman RNN backward: ``w`` ``panels(H, H)`` (``W_hh``); ``run`` ``(B, H)`` in and out;
    writes ``dA`` ``(N, H)`` and ``DAT`` ``(H, N)``."""
    f = "rnn_seq_backward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().rnn_seq_backward(
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "dY", dY, (N, H)), _ptr(f, "w", w, panels(H, H)),
        _ptr(f, "run", run, (B, H)), _ptr(f, "dA", dA, (N, H)), _ptr(f, "DAT", DAT, (H, N)),
        ps, po, T, B, H, int(relu)), "RNN backward", B, H)


def rnn_seq_forward_bf16(X: Tensor, wx: Tensor, bias: Tensor, wh: Tensor, HH: Tensor,
                         HB: Tensor, A: Tensor, sizes: Tensor, offs: Tensor, T: int, B: int,
                         H: int, I: int, relu: bool) -> None:
    """Elman RNN in bfloat16 (``csrc/bf16.c``): ``X`` ``(N, even(I))`` bfloat16, ``wx``
    ``panels_bf16(I, H)``, ``wh`` ``panels_bf16(H, H)`` bfloat16, ``bias`` ``(H,)``; writes
    ``HH`` ``(B + N, H)``, ``HB`` ``(B + N, even(H))`` bfloat16 (after ``h0`` in their first
    ``B`` rows) and the pre-activations ``A`` ``(N, H)``."""
    f = "rnn_seq_forward_bf16"
    ps, po, N = _rows(f, sizes, offs, T, B)
    _done(_c().rnn_seq_forward_bf16(
        _ptr(f, "X", X, (N, even(I)), BF16), _ptr(f, "wx", wx, panels_bf16(I, H), BF16),
        _ptr(f, "bias", bias, (H,)), _ptr(f, "wh", wh, panels_bf16(H, H), BF16),
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "HB", HB, (B + N, even(H)), BF16),
        _ptr(f, "A", A, (N, H)), ps, po, T, B, H, I, int(relu)), "bfloat16 RNN forward", B, H)


def rnn_seq_backward_bf16(HH: Tensor, dY: Tensor, w: Tensor, run: Tensor, DAT: Tensor,
                          dX: Tensor | None, db: Tensor, sizes: Tensor, offs: Tensor, T: int,
                          B: int, H: int, I: int, relu: bool) -> None:
    """Elman RNN backward in bfloat16: ``w`` ``panels_bf16(H, H + I)`` (``[W_hh | W_ih]``;
    ``I = 0``: ``W_hh`` alone, ``dX`` None); ``run`` ``(B, H)`` in and out; writes ``DAT``
    ``(H, N)`` bfloat16, ``dX`` ``(N, I)`` and adds to ``db`` ``(threads, H)``."""
    f = "rnn_seq_backward_bf16"
    ps, po, N = _rows(f, sizes, offs, T, B)
    ndb = db.shape[0] if isinstance(db, Tensor) and db.dim() == 2 else 1
    _done(_c().rnn_seq_backward_bf16(
        _ptr(f, "HH", HH, (B + N, H)), _ptr(f, "dY", dY, (N, H)),
        _ptr(f, "w", w, panels_bf16(H, H + I), BF16), _ptr(f, "run", run, (B, H)),
        _ptr(f, "DAT", DAT, (H, N), BF16),
        _ptr(f, "dX", dX, (N, I)) if I else _ptr(f, "dX", dX, (N, 0), optional=True),
        _ptr(f, "db", db, (ndb, H)), ndb, ps, po, T, B, H, I, int(relu)),
        "bfloat16 RNN backward", B, H)


# -- LayerNormLSTM (csrc/layernorm_lstm.c) -----------------------------------------------------
def lnlstm_seq_forward(X: Tensor, wx: Tensor, wh: Tensor, g_ih: Tensor, beta: Tensor,
                       g_hh: Tensor, g_c: Tensor, b_c: Tensor, drop: Tensor | None,
                       zone: Tensor | None, fill: Tensor, P: Tensor, R: Tensor, HH: Tensor,
                       CC: Tensor, G: Tensor, ST: Tensor, CPRE: Tensor, TC: Tensor,
                       sizes: Tensor, offs: Tensor, T: int, B: int, H: int, I: int,
                       eps: float) -> None:
    """LayerNormLSTM forward: ``X`` ``(N, I)``, ``wx`` ``panels(I, 4H)``, ``wh``
    ``panels(H, 4H)``, ``g_ih``, ``beta``, ``g_hh`` ``(4H,)``, ``g_c``, ``b_c`` ``(H,)``; the
    masks ``drop``, ``zone`` ``(N, H)`` or None, ``fill`` ``(2H,)``; writes ``P``, ``R``, ``G``
    ``(N, 4H)``, ``HH``, ``CC`` ``(B + N, H)``, ``ST`` ``(N, 6)``, ``CPRE``, ``TC``
    ``(N, H)``."""
    f = "lnlstm_seq_forward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    H4 = 4 * H
    _done(_c().lnlstm_seq_forward(
        _ptr(f, "X", X, (N, I)), _ptr(f, "wx", wx, panels(I, H4)),
        _ptr(f, "wh", wh, panels(H, H4)), _ptr(f, "g_ih", g_ih, (H4,)),
        _ptr(f, "beta", beta, (H4,)), _ptr(f, "g_hh", g_hh, (H4,)), _ptr(f, "g_c", g_c, (H,)),
        _ptr(f, "b_c", b_c, (H,)), _ptr(f, "drop", drop, (N, H), optional=True),
        _ptr(f, "zone", zone, (N, H), optional=True), _ptr(f, "fill", fill, (2 * H,)),
        _ptr(f, "P", P, (N, H4)), _ptr(f, "R", R, (N, H4)), _ptr(f, "HH", HH, (B + N, H)),
        _ptr(f, "CC", CC, (B + N, H)), _ptr(f, "G", G, (N, H4)), _ptr(f, "ST", ST, (N, 6)),
        _ptr(f, "CPRE", CPRE, (N, H)), _ptr(f, "TC", TC, (N, H)), ps, po, T, B, H, I, eps),
        "LayerNormLSTM forward", B, H)


def lnlstm_seq_backward(P: Tensor, R: Tensor, g_ih: Tensor, g_hh: Tensor, g_c: Tensor,
                        G: Tensor, ST: Tensor, CPRE: Tensor, TC: Tensor, CC: Tensor,
                        drop: Tensor | None, zone: Tensor | None, fill: Tensor, dY: Tensor,
                        wh: Tensor, wx: Tensor, run_h: Tensor, run_c: Tensor, DRT: Tensor,
                        DPT: Tensor, dX: Tensor, acc: Tensor, sizes: Tensor, offs: Tensor,
                        T: int, B: int, H: int, I: int) -> None:
    """LayerNormLSTM backward (buffers as :func:`lnlstm_seq_forward` wrote them): ``wh``
    ``panels(4H, H)`` (``W_hh``), ``wx`` ``panels(4H, I)`` (``W_ih``); ``run_h``, ``run_c``
    ``(B, H)`` in and out; writes ``DRT``, ``DPT`` ``(4H, N)``, ``dX`` ``(N, I)`` and adds to
    ``acc`` ``(threads, 14H)``."""
    f = "lnlstm_seq_backward"
    ps, po, N = _rows(f, sizes, offs, T, B)
    H4 = 4 * H
    nacc = acc.shape[0] if isinstance(acc, Tensor) and acc.dim() == 2 else 1
    _done(_c().lnlstm_seq_backward(
        _ptr(f, "P", P, (N, H4)), _ptr(f, "R", R, (N, H4)), _ptr(f, "g_ih", g_ih, (H4,)),
        _ptr(f, "g_hh", g_hh, (H4,)), _ptr(f, "g_c", g_c, (H,)), _ptr(f, "G", G, (N, H4)),
        _ptr(f, "ST", ST, (N, 6)), _ptr(f, "CPRE", CPRE, (N, H)), _ptr(f, "TC", TC, (N, H)),
        _ptr(f, "CC", CC, (B + N, H)), _ptr(f, "drop", drop, (N, H), optional=True),
        _ptr(f, "zone", zone, (N, H), optional=True), _ptr(f, "fill", fill, (2 * H,)),
        _ptr(f, "dY", dY, (N, H)), _ptr(f, "wh", wh, panels(H4, H)),
        _ptr(f, "wx", wx, panels(H4, I)), _ptr(f, "run_h", run_h, (B, H)),
        _ptr(f, "run_c", run_c, (B, H)), _ptr(f, "DRT", DRT, (H4, N)),
        _ptr(f, "DPT", DPT, (H4, N)), _ptr(f, "dX", dX, (N, I)),
        _ptr(f, "acc", acc, (nacc, 14 * H)), nacc, ps, po, T, B, H, I),
        "LayerNormLSTM backward", B, H)


# -- minGRU / minLSTM (csrc/minrnn.c) ----------------------------------------------------------
def minrnn_forward(pre: Tensor, h0: Tensor, lens: Tensor, h: Tensor, B: int, T: int, H: int,
                   lstm: bool) -> None:
    """minGRU (``lstm`` False, ``G = 2``) / minLSTM (``G = 3``): ``pre`` ``(B, T, G H)``,
    ``h0`` ``(B, H)``, ``lens`` ``(B,)`` int64; writes ``h`` ``(B, T, H)``."""
    f = "minrnn_forward"
    GH = (3 if lstm else 2) * H
    _c().minrnn_forward(
        _ptr(f, "pre", pre, (B, T, GH)), _ptr(f, "h0", h0, (B, H)),
        _ptr(f, "lens", lens, (B,), I64), _ptr(f, "h", h, (B, T, H)), B, T, H, int(lstm))


def minrnn_backward(pre: Tensor, h0: Tensor, h: Tensor, lens: Tensor, dh: Tensor, dpre: Tensor,
                    dh0: Tensor, B: int, T: int, H: int, lstm: bool) -> None:
    """minGRU / minLSTM backward: ``dh`` ``(B, T, H)`` in; writes ``dpre`` ``(B, T, G H)`` and
    ``dh0`` ``(B, H)``."""
    f = "minrnn_backward"
    GH = (3 if lstm else 2) * H
    _c().minrnn_backward(
        _ptr(f, "pre", pre, (B, T, GH)), _ptr(f, "h0", h0, (B, H)), _ptr(f, "h", h, (B, T, H)),
        _ptr(f, "lens", lens, (B,), I64), _ptr(f, "dh", dh, (B, T, H)),
        _ptr(f, "dpre", dpre, (B, T, GH)), _ptr(f, "dh0", dh0, (B, H)), B, T, H, int(lstm))


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def same_bytes(a: Tensor, b: Tensor) -> bool:
    """Whether two contiguous CPU tensors of one shape and dtype hold the same bytes
    (``memcmp``; several times faster than ``torch.equal``, and NaN equals itself)."""
    if a.shape != b.shape or a.dtype != b.dtype or not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError(f"same_bytes expects two contiguous tensors of one shape and dtype, got "
                         f"{tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}")
    return _libc.memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()) == 0
