"""Every registered task has the same shape: the shared training flags with the same names,
`rnnkit train TASK` -> `rnnkit eval RUN` -> `rnnkit.load(RUN)` on a tiny run, the same loss
curve under `torchrun --nproc-per-node 2` as in one process, plain log lines off a terminal;
and no module imports from a floor above its own."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.cli import main
from rnnkit.tasks import TASKS, spec, specs

SRC = Path(rnnkit.__file__).parent
SHARED = ["--out", "--resume", "--restart", "--steps", "--minutes", "--batch-size", "--lr",
          "--weight-decay", "--warmup", "--clip", "--eval-every", "--log-every", "--seed",
          "--device", "--quiet"]
HIDDEN_ALIASES = ["--batch ", "--emb ", "--no-progress"]
TEXT = "def f(x):\n    return x + 1\n\n" * 60


def _lines(tmp: Path) -> str:
    f = tmp / "t.txt"
    f.write_text(TEXT)
    return str(f)


def _table(tmp: Path) -> str:
    f = tmp / "d.tsv"
    rows = ["text\tlabel"] + [f"{w} {'good' if i % 2 else 'bad'} {i}\t{'pos' if i % 2 else 'neg'}"
                              for i, w in enumerate(["the film", "a plot", "it was"] * 16)]
    f.write_text("\n".join(rows) + "\n")
    return str(f)


# A run of a few seconds per task, dropout off (so that one process and two draw the same
# masks), an even batch (so that two ranks share it), and what `rnnkit eval` needs. A new task
# adds its entry here; test_every_task_has_a_tiny_run fails until it does.
TINY = {
    "lm": lambda tmp: (["--data", _lines(tmp), "--hidden", "16", "--embed", "8",
                        "--batch-size", "4", "--seq", "16", "--dropout", "0",
                        "--sample-length", "0", "--baseline-order", "2"],
                       ["--data", _lines(tmp)]),
    "classify": lambda tmp: (["--data", _table(tmp), "--hidden", "8", "--embed", "8",
                              "--batch-size", "8", "--dropout", "0", "--class-weights", "off"],
                             ["--data", _table(tmp)]),
    "longrange": lambda tmp: (["--problem", "adding", "--length", "10", "--hidden", "8",
                               "--batch-size", "8"], []),
    "sequences": lambda tmp: (["--hidden", "8", "--batch-size", "8", "--dropout", "0"], []),
    "forecast": lambda tmp: (["--hidden", "8", "--batch-size", "8", "--dropout", "0"], []),
    "translate": lambda tmp: (["--hidden", "8", "--embed", "8", "--batch-size", "8",
                               "--dropout", "0"], []),
    "caption": lambda tmp: (["--data-size", "60", "--hidden", "8", "--embed", "8",
                             "--channels", "4,4", "--image-vector", "8", "--batch-size", "8",
                             "--dropout", "0", "--eval-images", "4", "--beam", "2"], []),
}
BUDGET = ["--steps", "6", "--eval-every", "3", "--log-every", "1", "--warmup", "2",
          "--lr", "0.01"]


def test_every_task_has_a_tiny_run():
    assert set(TINY) == set(TASKS), f"add a tiny run for {set(TASKS) - set(TINY)} to TINY"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_help_shows_the_shared_flags_and_the_task_defaults(name, capsys):
    with pytest.raises(SystemExit):
        main(["train", name, "--help"])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    for flag in SHARED:
        assert f" {flag}" in out, (name, flag)
    for alias in HIDDEN_ALIASES:  # accepted for one release, not shown
        assert f" {alias}" not in out, (name, alias)
    assert "``" not in out and "\\" not in out  # plain text, no reST markup
    s = spec(name)
    for dest, flag in (("lr", "--lr"), ("batch_size", "--batch-size"), ("seed", "--seed")):
        if s.defaults.get(dest) is not None:
            assert re.search(rf"{flag} \S+ .*?\(default: {s.defaults[dest]}\)", out), (name, flag)
    if s.model_cells:
        for flag in ("--cell", "--hidden"):
            assert f" {flag}" in out, (name, flag)


def test_one_registry_gives_train_eval_and_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    for s in specs().values():
        assert re.search(rf"^\s+{s.name}\s+\S", train_help, flags=re.M), s.name
        for v in s.verbs:
            assert re.search(rf"^\s+{v.name}\s+\S", top, flags=re.M), v.name
    for name in ("train", "eval", "explain"):
        assert re.search(rf"^\s+{name}\s+\S", top, flags=re.M), name


def _train(name: str, tmp: Path, run: Path, *extra: str) -> int:
    args, _ = TINY[name](tmp)
    return main(["train", name, *args, *BUDGET, "--quiet", "--out", str(run), *extra])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tiny_run_then_eval_and_load(name, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(name, tmp_path, run) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == name
    assert json.loads((run / "last/trainer.json").read_text())["step"] == 6
    recs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("train_loss" in r for r in recs) == 6
    capsys.readouterr()
    _, eval_args = TINY[name](tmp_path)
    assert main(["eval", str(run), *eval_args]) == 0
    assert capsys.readouterr().out.strip()
    obj = rnnkit.load(run)
    assert type(obj).__module__.startswith(f"rnnkit.tasks.{name}")
    # resume extends the same run; a conflicting model flag is refused, nothing touched
    assert main(["train", name, "--resume", str(run), "--steps", "8", "--quiet"]) == 0
    assert json.loads((run / "last/trainer.json").read_text())["step"] == 8
    before = (run / "last/model.safetensors").read_bytes()
    assert main(["train", name, "--resume", str(run), "--hidden", "32", "--steps", "9"]) == 2
    assert "--hidden 32 conflicts" in capsys.readouterr().err
    assert (run / "last/model.safetensors").read_bytes() == before


@pytest.mark.parametrize("name", sorted(TASKS))
def test_two_processes_give_the_loss_curve_of_one(name, tmp_path):
    one, two = tmp_path / "n1", tmp_path / "n2"
    assert _train(name, tmp_path, one) == 0
    args, _ = TINY[name](tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "rnnkit.cli", "train", name, *args,
                        *BUDGET, "--quiet", "--device", "cpu", "--out", str(two)],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    curves = {}
    for n, d in ((1, one), (2, two)):
        recs = [json.loads(s) for s in (d / "metrics.jsonl").read_text().splitlines()]
        curves[n] = torch.tensor([r["train_loss"] for r in recs if "train_loss" in r])
    assert len(curves[1]) == 6
    torch.testing.assert_close(curves[2], curves[1], rtol=1e-4, atol=1e-5)


def test_log_off_a_terminal_has_no_carriage_returns_and_one_line_per_interval(tmp_path):
    f = _lines(tmp_path)
    cmd = (f"{sys.executable} -m rnnkit.cli train lm --data {f} --hidden 16 --embed 8 "
           f"--batch-size 4 --seq 16 --steps 30 --log-every 10 --eval-every 1000 "
           f"--sample-length 0 --baseline-order 2 --out {tmp_path / 'run'} 2>&1 | cat > "
           f"{tmp_path / 'log'}")
    subprocess.run(cmd, shell=True, check=True, timeout=240)
    log = (tmp_path / "log").read_bytes().decode()
    assert "\r" not in log
    steps = re.findall(r"^step (\d+)/30 .*loss [\d.]+", log, flags=re.M)
    assert steps == ["10", "20", "30"], log


def test_predict_stream_dash_reads_stdin(tmp_path):
    run = tmp_path / "run"
    assert _train("classify", tmp_path, run) == 0
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "predict", str(run), "--stream",
                        "-"], input="the film was good\nit was bad\n", capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) >= 2
    r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "predict", str(run), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.endswith("\n") and "``" not in r.stdout


# -- floors ---------------------------------------------------------------------------------
FLOORS = [  # bottom to top; a module may import its own floor and those below
    {"cells", "data", "checkpoint", "runtime", "timeindex"},
    {"kernels"},
    {"layers", "keras", "export", "seq2seq"},
    {"inspect"},
    {"train"},
    {"tasks"},
    {"cli", "export_cli", "serve", "serve_cli"},
]
# Pairs (importer, imported) allowed to go up a floor: none (the kernels read a Stack, not the
# layer, since issue 13).
EXCEPTIONS: set[tuple[str, str]] = set()


def _floor(part: str) -> int:
    for i, names in enumerate(FLOORS):
        if part in names:
            return i
    raise AssertionError(f"rnnkit.{part} has no floor in tests/test_tasks.py FLOORS")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):  # TYPE_CHECKING and function-level imports included
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod == "rnnkit":  # from rnnkit import checkpoint
                out += [(node.lineno, f"rnnkit.{a.name}") for a in node.names]
    return [(n, m) for n, m in out if m.startswith("rnnkit.")]


def test_no_module_imports_from_a_higher_floor():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts == ("__init__.py",) or rel.parts == ("__main__.py",):
            continue  # the package's front door re-exports every floor
        mine = rel.parts[0].removesuffix(".py")
        for line, mod in _imports(path):
            theirs = mod.split(".")[1]
            if theirs.startswith("__"):
                continue
            if _floor(theirs) > _floor(mine) and (mine, theirs) not in EXCEPTIONS:
                bad.append(f"{rel}:{line} imports {mod} (floor {theirs} above {mine})")
    assert not bad, "\n".join(bad)


def test_the_command_line_works_without_the_optional_extras():
    """`pip install rnnkit` (no extras) must run the README's first command and every --help:
    the optional packages are imported only by the commands that need them."""
    extras = ["fastapi", "uvicorn", "websockets", "httpx", "onnx", "onnxruntime", "pandas",
              "statsmodels", "sktime", "sacrebleu", "h5py"]
    code = ("import sys\n"
            f"for m in {extras!r}:\n    sys.modules[m] = None  # import fails as if absent\n"
            "from rnnkit.cli import main\n"
            "assert main(['explain', 'lstm']) in (0, None)\n"
            "for argv in (['serve', '--help'], ['export', '--help'], ['train', 'forecast', "
            "'--help'], ['train', 'translate', '--help'], ['train', 'sequences', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n"
            "        assert e.code == 0, argv\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 × (6 + 16 + 1) × 16" in r.stdout
