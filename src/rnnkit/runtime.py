"""Process-wide settings rnnkit makes at start.

**Keep freed memory in the process: no page faults on every training step.**

glibc's ``malloc`` serves each block above its *mmap threshold* (128 KiB at start, adapting up to
32 MiB) with a fresh ``mmap`` and returns it to the system on ``free``. A training step
allocates and frees the same large tensors (gate buffers, activations, gradients: tens of MiB)
every time, so every step page-faults on first touching them, and the kernel zeroes each 4 KiB
page. Measured on the project's 2-core machine (one thread; LSTM 1×256, B=32, T=100, E=64,
forward+backward): torch.nn's kernel page-faults 7,400 times per step, rnnkit's fast path
7,700, its LayerNormLSTM 16,700; keeping freed memory took torch.nn's step from 42.5 to
31.6 ms and the fast path's from 53.6 to 42.1. The character LM's default training had
spent 17% of its CPU time in the kernel (88 of 509 CPU-seconds).

:func:`keep_freed_memory` tells glibc to serve every block from its heap (``M_MMAP_MAX = 0``) and
not to hand freed heap back to the system (``M_TRIM_THRESHOLD``), the policy of PyTorch's own
CUDA caching allocator: the process keeps its peak memory, and later steps reuse it without a
fault. The ``rnnkit`` command and the trainer (:func:`rnnkit.train.train`) call it at start
(``RNNKIT_KEEP_MEMORY=0`` turns it off); in your own training scripts call
``rnnkit.keep_freed_memory()`` once. A no-op off glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


@cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns whether the
    setting took effect; ``False`` off Linux/glibc or with ``RNNKIT_KEEP_MEMORY=0``."""
    if os.environ.get("RNNKIT_KEEP_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
