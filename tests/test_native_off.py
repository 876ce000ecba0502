"""The torch fallback as users get it with ``RNNKIT_NATIVE=0`` (no C library): a small
representative subset of the suite (every kernel family against torch.nn and the reference
loop, the stepper and its chunk path, a classifier streaming equal to one-shot, a tiny
training run through the CLI) in a fresh interpreter with the variable set, so that a path
that silently needs the C library fails here in every CI run, not only in the full
``RNNKIT_NATIVE=0`` run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
SUBSET = [
    "test_native_off.py::test_the_library_is_off_in_this_interpreter",
    "test_stream_stepper.py",
    "test_step.py::test_stepper_equals_the_whole_layer",
    "test_classify_model.py::test_stream_state_has_fixed_size",
]


def test_the_library_is_off_in_this_interpreter() -> None:
    """Runs inside the subset: with ``RNNKIT_NATIVE=0`` nothing builds or loads the C
    library and the fast path reports its torch backend (outside the subset: passes)."""
    if os.environ.get("RNNKIT_NATIVE") != "0":
        return
    import torch

    import rnnkit
    from rnnkit.kernels import native

    assert native.lib() is None
    layer = rnnkit.GRU(3, 5, kernel="fast")
    layer(torch.randn(2, 4, 3))
    assert layer.last_kernel.runs == "fast:torch"


def test_subset_passes_with_the_c_library_disabled(tmp_path: Path) -> None:
    if os.environ.get("RNNKIT_NATIVE") == "0":
        return  # already the whole run: no nested copy
    env = {**os.environ, "RNNKIT_NATIVE": "0", "RNNKIT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
         *[str(TESTS / t) for t in SUBSET]],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert not list((tmp_path / "cache").glob("*.so")), "RNNKIT_NATIVE=0 built the C library"
