"""keep_freed_memory: after it, a large block freed and allocated again is reused without page
faults (glibc); before it, glibc maps it afresh each time. Run in a fresh interpreter, since the
setting is process-wide."""

import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
from rnnkit.kernels.memory import keep_freed_memory

def faults_per_alloc(n=8):
    torch.empty(16 << 20).fill_(1.0)  # 64 MiB, touched, freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.empty(16 << 20).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n

before = faults_per_alloc()
ok = keep_freed_memory()
after = faults_per_alloc()
print(ok, before, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    ok, before, after = out[0] == "True", float(out[1]), float(out[2])
    assert ok
    pages = (64 << 20) // 4096
    assert before > 0.5 * pages  # each 64 MiB block mapped afresh: one fault per page
    # reused from the heap; at most one of the 8 re-faults now and then (when glibc's heap
    # cannot grow in place it maps a new region once)
    assert after < 0.2 * pages


def test_can_be_turned_off():
    env_probe = "import os; os.environ['RNNKIT_KEEP_MEMORY'] = '0'\n" + PROBE
    out = subprocess.run([sys.executable, "-c", env_probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False"
