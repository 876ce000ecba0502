"""Issue 22, item 10: a run's config that does not fit its checkpoint (a tampered
``vocab_size`` of 10^12 or -1, a hidden size the flag allows but the weights do not have) is
refused before the model is built, for every task: ``rnnkit eval`` and ``train --resume`` exit
2 naming the tensor or the field, no tensor of the described size is ever allocated, and the run
folder is left as it was."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_tasks import TINY

# (section of config.json or None for the top level, field, tampered values) per task: the
# field that sizes the model and is not a flag (a vocabulary), else the hidden size
FIELDS = {
    "lm": ("model", "vocab_size", [10 ** 12, -1]),
    "translate": ("model", "tgt_vocab", [10 ** 12, -1]),
    "caption": ("model", "vocab", [10 ** 12, -1]),
    "classify": ("model", "hidden", [4096]),
    "sequences": ("model", "hidden", [4096]),
    "forecast": ("model", "hidden", [4096]),
    "longrange": (None, "hidden", [4096]),
}
CASES = [(t, v) for t, (_, _, vs) in FIELDS.items() for v in vs]
REFUSED = ("has shape", "does not describe a model", "does not match the run's data")


def test_every_task_is_covered():
    from rnnkit.tasks import TASKS

    assert set(FIELDS) == set(TASKS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """A two-step run of every task, and what its ``rnnkit eval`` needs."""
    tmp = tmp_path_factory.mktemp("tampered")
    out = {}
    for name in FIELDS:
        args, eval_args = TINY[name](tmp)
        run = tmp / name
        assert main(["train", name, *args, "--steps", "2", "--eval-every", "2", "--quiet",
                     "--out", str(run)]) == 0
        out[name] = (run, eval_args)
    return out


@contextlib.contextmanager
def no_tensor_larger_than(n: int):
    """Every ``torch.empty`` (how every layer makes its weights) off the meta device stays at
    or below ``n`` elements; a larger one is an AssertionError (the model was built first)."""
    real = torch.empty

    def empty(*a, **k):
        t = real(*a, **k)
        assert t.device.type == "meta" or t.numel() <= n, \
            f"a {tuple(t.shape)} tensor was allocated before the config was checked"
        return t

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ckpt.LOCK}


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{t}={v}" for t, v in CASES])
def test_a_config_that_does_not_fit_its_checkpoint_is_refused_unbuilt(name, value, runs,
                                                                     tmp_path, capsys):
    src, eval_args = runs[name]
    run = tmp_path / name
    shutil.copytree(src, run)
    section, field, _ = FIELDS[name]
    for p in (run / ckpt.CONFIG, run / "best" / ckpt.CONFIG, run / "last" / ckpt.CONFIG):
        c = json.loads(p.read_text())
        (c[section] if section else c)[field] = value
        p.write_text(json.dumps(c))
    before = _files(run)
    for argv in (["eval", str(run), *eval_args],
                 ["train", name, "--resume", str(run), "--steps", "4", "--quiet"]):
        capsys.readouterr()
        with no_tensor_larger_than(2 ** 20):  # a tiny run's tensors are far smaller
            rc = main(argv)
        e = capsys.readouterr().err
        assert rc == 2, (argv, e[-1000:])
        assert any(n in e for n in REFUSED) and "Traceback" not in e, (argv, e[-1000:])
        assert e.strip().splitlines()[-1].startswith("rnnkit: error: "), e[-500:]
        assert _files(run) == before, argv  # nothing trained, nothing written
