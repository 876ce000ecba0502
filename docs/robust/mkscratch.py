"""Scratch copies of this checkout's tests, for running against an old source tree (see
issue22_regressions.md): ``python mkscratch.py DEST new|oldflags``.

* the module-level registry walks of test_robust (NUMERIC) and test_robust2 (ACCEPTED) are
  wrapped, so a missing API fails the tests that need it, not the whole file at collection;
* every test gets a 150 s CPU-time limit (old code loops for ever on some flags);
* ``oldflags``: the LM flag list respelt as 17e507a spells it (--emb, --batch, --no-progress;
  the new names came with 839b69b)."""

import shutil
import sys
from pathlib import Path

WRAP = {
    "test_robust.py": ("NUMERIC = _numeric_flags()", "[((), [], '--none', None)]"),
    "test_robust2.py": ("ACCEPTED = _accepted_train_values()", "[('lm', '--none', '0')]"),
}
OLD_LM = [('"--embed", "8", "--batch-size", "4",', '"--emb", "8", "--batch", "4",'),
          ('"--baseline-order", "2", "--quiet"]', '"--baseline-order", "2", "--no-progress"]')]
LIMIT = '''

import signal as _signal


class CpuTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _cpu_limit():
    """Scratch copy: a test past 150 s of CPU (an endless loop on old code) fails."""
    def late(*_):
        raise CpuTimeout("past 150 s of CPU time: hangs")
    old = _signal.signal(_signal.SIGPROF, late)
    _signal.setitimer(_signal.ITIMER_PROF, 150)
    yield
    _signal.setitimer(_signal.ITIMER_PROF, 0)
    _signal.signal(_signal.SIGPROF, old)
'''


def main(dst: Path, old_flags: bool) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(Path(__file__).resolve().parents[2] / "tests", dst)
    for name, (line, fallback) in WRAP.items():
        p = dst / name
        var = line.split(" = ")[0]
        s = p.read_text().replace(
            line + "\n", f"try:\n    {line}\nexcept Exception:  # the old code lacks the API\n"
                         f"    {var} = {fallback}\n")
        if old_flags:
            for a, b in OLD_LM:
                s = s.replace(a, b)
        p.write_text(s)
    conf = dst / "conftest.py"
    conf.write_text(conf.read_text() + LIMIT)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] == "oldflags")
