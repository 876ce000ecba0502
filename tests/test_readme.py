"""The README's Python snippets, run as written: blocks marked ``<!-- runnable -->`` are
executed (with ``import torch, rnnkit`` before them), blocks of ``>>>`` lines are doctests
whose printed output must match the README to the character."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import torch

import rnnkit

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCK = re.compile(r"(<!-- runnable[^>]*-->\n)?```python\n(.*?)```", re.S)


def blocks() -> list[tuple[int, bool, str]]:
    return [(README[:m.start()].count("\n") + 1, bool(m.group(1)), m.group(2))
            for m in BLOCK.finditer(README)]


RUNNABLE = [(line, code) for line, marked, code in blocks() if marked]
DOCTESTS = [(line, code) for line, _, code in blocks() if code.lstrip().startswith(">>>")]


def test_the_readme_has_runnable_blocks_and_doctests():
    assert len(RUNNABLE) >= 2 and len(DOCTESTS) >= 1


@pytest.mark.parametrize(("line", "code"), RUNNABLE, ids=[f"README:{n}" for n, _ in RUNNABLE])
def test_runnable_block(line, code):
    ns: dict = {"torch": torch, "rnnkit": rnnkit}
    torch.manual_seed(0)
    exec(compile(code, f"README.md:{line}", "exec"), ns)
    if "lstm2" in ns:  # the core: the shapes its comments state, and the two loaded copies agree
        assert ns["out"].shape == (32, 20, 32) and ns["h"].shape == (4, 32, 16)
        assert ns["lstm"].last_kernel in ("fast", "fused")  # the README names both
        x = ns["x"]
        torch.testing.assert_close(ns["lstm2"](x)[0], ns["ref"](x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("line", "code"), DOCTESTS, ids=[f"README:{n}" for n, _ in DOCTESTS])
def test_doctest_block(line, code):
    test = doctest.DocTestParser().get_doctest(code, {"rnnkit": rnnkit, "torch": torch},
                                               f"README.md:{line}", "README.md", line)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"README.md:{line}: {runner.failures} example(s) differ"
