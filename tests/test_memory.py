"""keep_freed_memory: after it, a large block freed and allocated again is reused without page
faults (glibc); before it, glibc maps it afresh each time. Run in a fresh interpreter, since the
setting is process-wide."""

import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import torch
from rnnkit.runtime import keep_freed_memory

def faults(n=8):
    torch.empty(16 << 20).fill_(1.0)  # 64 MiB, touched, freed
    out = []
    for _ in range(n):  # page faults of each further 64 MiB block, touched and freed
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 << 20).fill_(1.0)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out

before = faults()
ok = keep_freed_memory()
after = faults()
print(ok, ",".join(map(str, before)), ",".join(map(str, after)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout.split()
    ok = out[0] == "True"
    before, after = ([int(v) for v in col.split(",")] for col in out[1:3])
    assert ok
    pages = (64 << 20) // 4096
    assert all(f > 0.5 * pages for f in before)  # each block mapped afresh: a fault per page
    # reused from the heap: the first block may still fault (glibc grows its heap once, or
    # maps a new region when it cannot grow in place), every later one faults no page
    assert all(f < 0.01 * pages for f in after[2:]), after


def test_can_be_turned_off():
    env_probe = "import os; os.environ['RNNKIT_KEEP_MEMORY'] = '0'\n" + PROBE
    out = subprocess.run([sys.executable, "-c", env_probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False"
