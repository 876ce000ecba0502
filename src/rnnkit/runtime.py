"""Process-wide settings rnnkit makes at start: glibc keeps freed memory (below), oneDNN's
caches are capped (memory does not grow with the number of shapes), and idle OpenMP threads
spin only briefly before they sleep, with a thread count from the cores actually free
(the section "threads on a busy machine" further down).

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


def release_freed_memory() -> bool:
    """Hand the free parts of the heap back to the system now (glibc ``malloc_trim(0)``, every
    arena): for a long-running process that kept its peak memory (:func:`keep_freed_memory`)
    and has gone idle, e.g. a server whose sessions have all closed. Returns whether it ran;
    ``False`` off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


# -- threads on a busy machine ------------------------------------------------------------------
#
# **OpenMP threads must not spin long against another job, nor sleep at every region.** GNU
# OpenMP (torch's CPU thread pool) keeps each idle worker spinning for ~300,000 iterations after
# every parallel region; with another process on the CPU the spinning threads steal its core and
# wait for each other. On the project's 2-core machine `rnnkit train lm` next to one busy process
# ran at 2,264 chars/s with that default, 21,500 with one thread, 36,500 quiet. Sleeping at once
# (``OMP_WAIT_POLICY=PASSIVE``, rnnkit's earlier setting) cures that but costs a wake-up at every
# region, and oneDNN's RNN kernels run many small regions per time step: on an Intel Xeon with
# AMX (2 cores, quiet) torch.nn's bf16 LSTM 1x512 training step took 92 ms passive against
# 49 ms with a short spin. So rnnkit sets ``GOMP_SPINCOUNT`` (how many iterations an idle thread
# spins before it sleeps) to :data:`SPIN_COUNT`. Measured there, the default `rnnkit train lm`
# in chars/s quiet and next to one busy process: passive 27,200 and 32,200; spin 1,000: 44,500
# and 28,500; 3,000: 49,300 and 22,600; 10,000: 46,000 and 12,600; libgomp's 300,000: 5,000
# busy (``python bench/busy.py``). libgomp reads the variables once, when it is
# loaded (at ``import torch``), so :func:`bounded_spin` runs when ``rnnkit`` is imported,
# before rnnkit imports torch. Override: set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` yourself;
# rnnkit only fills in ``GOMP_SPINCOUNT`` when neither is set. When torch was imported before
# rnnkit, the setting comes too late and rnnkit leaves it alone (set the variable before
# starting Python instead).

SPIN_COUNT = "1000"


def bounded_spin() -> bool:
    """Ask OpenMP to let idle threads spin briefly, then sleep (``GOMP_SPINCOUNT`` =
    :data:`SPIN_COUNT`) unless the user set a policy. Returns whether rnnkit's value is the one
    OpenMP will read: ``False`` when ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` was already set,
    or torch (hence libgomp) was loaded before rnnkit."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ \
            or "torch" in sys.modules:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


SPIN_SET = bounded_spin()  # at import: rnnkit/__init__.py imports us first


# -- oneDNN's caches ------------------------------------------------------------------------------
#
# **Memory must not grow with the number of distinct shapes.** oneDNN keeps every primitive it
# builds (one per operation and shape: ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, default 1,024), and
# torch's ideep layer keeps its own (``LRU_CACHE_CAPACITY``, default 1,024). A training step has
# a handful of shapes, but scoring texts of every length (``rnnkit predict RUN -``, a server)
# meets a new one at nearly every batch, and each kept primitive holds its buffers: a classifier
# scoring 60,000 lines in batches of 256 grew from 348 to 569 MB of RSS (and past 1 GB at
# 300,000 lines), flat at 416 MB with both caches at 16 entries. rnnkit caps both at
# :data:`DNN_CACHE` when unset, before torch loads them (set either yourself to override).

DNN_CACHE = "64"


def bounded_dnn_caches() -> bool:
    """Cap oneDNN's primitive cache and ideep's LRU cache at :data:`DNN_CACHE` entries, each
    where the user did not set it; returns whether the environment was read after this
    (``False`` when torch was loaded first and the caps come too late)."""
    if "torch" in sys.modules:
        return False
    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(var, DNN_CACHE)
    return True


DNN_CACHES_SET = bounded_dnn_caches()


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies over all CPUs from ``/proc/stat``; ``None`` off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return v[3] + (v[4] if len(v) > 4 else 0.0), sum(v[:8])


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def free_cores(window: float = 0.25) -> int:
    """How many of the usable cores were idle over the last ``window`` seconds (measured from
    ``/proc/stat``; this process sleeps meanwhile, so its own use is not counted), at least 1.
    Without ``/proc/stat``: all usable cores."""
    import time

    n = usable_cores()
    a = _cpu_times()
    if a is None:
        return n
    time.sleep(window)
    b = _cpu_times()
    if b is None or b[1] <= a[1]:
        return n
    idle = (b[0] - a[0]) / (b[1] - a[1])  # fraction of all the machine's CPUs
    ncpu = os.cpu_count() or n
    return max(1, min(n, int(idle * ncpu + 0.5)))


def choose_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op thread count for a run and say why: ``threads`` when given; else
    ``OMP_NUM_THREADS`` / ``RNNKIT_THREADS`` when set (left to torch, which read it); else all
    usable cores, the same on every start, so that a resumed run sums in the same order (the
    bounded spin keeps them from spinning long against another job). Returns
    ``(threads, reason)``."""
    import torch

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        why = "--threads"
    elif os.environ.get("RNNKIT_THREADS"):
        threads, why = int(os.environ["RNNKIT_THREADS"]), "RNNKIT_THREADS"
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    else:  # the same count on every start and resume, whatever the load: runs stay
        # bit-exact on one machine (free_cores() tells what --threads to give next to a job)
        threads = usable_cores()
        why = f"all {threads} cores; --threads N to use fewer"
    torch.set_num_threads(threads)
    return threads, why
