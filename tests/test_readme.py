"""Every command of the README is run as written: by this test, or by the documented script
``examples/readme_long.sh`` (the install, the acceptance runs and benchmarks that take
minutes, the server).

* **Python blocks.** Each ``python`` block is a ``>>>`` doctest (its printed output must match
  the README to the character), or marked ``<!-- runnable -->`` (executed as written, with
  ``import torch, rnnkit`` done), or marked ``<!-- not run: REASON -->`` (Keras' own code).
* **Shell blocks.** Every command of a ``bash`` block (continuation lines joined, comments
  dropped) either stands verbatim in ``examples/readme_long.sh`` (a server line there may end
  in ``" &"``), or is run here, as written, in the README's order, section by section: each
  section in a fresh project folder with ``../shared/data`` beside it (a link to the shared
  data; a command that reads it is skipped, with a message, where it is absent), and the
  section's runnable Python blocks executed in the same folder and one namespace, after the
  shell commands before them. ``rnnkit ...`` commands run in this process
  (``rnnkit.cli.main``, exit status 0), pipelines in bash (a ``tail -f`` pipeline until it has
  answered every line, then stopped).

**The one rewrite.** A ``rnnkit train TASK`` command (and ``torchrun ... train TASK``) keeps
every flag as written except the budget: its ``--steps``, ``--minutes`` and ``--epochs`` are
replaced by :data:`TINY` (a few steps; for built-in data and evaluation samples also their
sizes, ``--synthetic-size``, ``--data-size``, ``--max-chars``, ``--eval-sentences``,
``--eval-images``). Nothing else is changed. The files a section's commands name as the
user's own (``reviews.csv``, ``motions.npz``, ``pairs.tsv``, ``photos/``...) are made here,
tiny, by :data:`INPUTS`; a section that uses the runs of another section's commands
(``rnnkit export runs/reviews``) runs those commands first (:data:`NEEDS`).

``README_TIMES=FILE`` appends each command's wall time to ``FILE``. The whole file takes
about 130 s of CPU (about a minute on two quiet cores with ``-n 2``)."""

from __future__ import annotations

import doctest
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
SCRIPT = ROOT / "examples" / "readme_long.sh"
SHARED = Path(os.environ.get("RNNKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
BLOCK = re.compile(r"(?:<!-- (runnable|not run)([^>]*)-->\n)?```(python|bash)\n(.*?)```", re.S)


# -- reading the README and the script ----------------------------------------------------------
def commands(text: str) -> list[str]:
    """The shell commands of ``text``: continuation lines joined, comments (a ``#`` outside
    quotes at the start or after a blank) and empty lines dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        cur += line.strip() if cur else line
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip() + " "
            continue
        cmd = _uncomment(cur).strip()
        cur = ""
        if cmd:
            out.append(cmd)
    return out


def _uncomment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def sections() -> list[tuple[str, list[tuple[int, str, str, str]]]]:
    """``[(section title, [(line, kind, marker, code)])]`` in README order; ``kind`` is
    ``python`` or ``bash``, ``marker`` ``runnable``, ``not run`` or ``""``."""
    out: list[tuple[str, list]] = [("(top)", [])]
    pos = 0
    for m in re.finditer(r"(?m)^## (.*)$", README):
        out[-1] = (out[-1][0], _blocks(README[pos:m.start()], pos))
        out.append((m.group(1).strip(), []))
        pos = m.start()
    out[-1] = (out[-1][0], _blocks(README[pos:], pos))
    return out


def _blocks(text: str, offset: int) -> list[tuple[int, str, str, str]]:
    return [(README[:offset + m.start()].count("\n") + 1, m.group(3), m.group(1) or "",
             m.group(4)) for m in BLOCK.finditer(text)]


SECTIONS = sections()
ALL = [b for _, blocks in SECTIONS for b in blocks]
LONG = {c.removesuffix(" &") for c in commands(SCRIPT.read_text())}
DOCTESTS = [(line, code) for line, kind, _, code in ALL
            if kind == "python" and code.lstrip().startswith(">>>")]


def test_every_python_block_is_run_or_says_why_not():
    for line, kind, marker, code in ALL:
        if kind == "python" and not code.lstrip().startswith(">>>"):
            assert marker in ("runnable", "not run"), (
                f"README.md:{line}: a python block that is neither a doctest nor marked "
                f"<!-- runnable --> or <!-- not run: why -->")


def test_every_shell_command_is_run_here_or_by_the_script():
    """A README command not in the script must belong to a section this test runs (and the
    section test runs each of them); the script's commands are found verbatim."""
    here = {title for title, blocks in SECTIONS if any(
        k == "bash" and any(c not in LONG for c in commands(code)) for _, k, _, code in blocks)}
    assert here <= set(RUN), f"sections with README commands that nothing runs: {here - set(RUN)}"
    assert {c for _, k, _, code in ALL if k == "bash" for c in commands(code)} & LONG, \
        "examples/readme_long.sh holds none of the README's commands"
    assert len(DOCTESTS) >= 1


# -- running a section --------------------------------------------------------------------------
BUDGET = ("--steps", "--minutes", "--epochs")
TINY = {  # rnnkit train TASK: what replaces the budget flags
    "lm": ["--steps", "2", "--max-chars", "20000"],
    "classify": ["--steps", "4"],
    "sequences": ["--steps", "3"],
    "forecast": ["--steps", "3"],
    "translate": ["--steps", "3", "--synthetic-size", "300", "--eval-sentences", "10"],
    "caption": ["--steps", "3", "--data-size", "60", "--eval-images", "10"],
}


def tiny(argv: list[str]) -> list[str]:
    """``argv`` (after ``rnnkit``) with a training command's budget replaced by
    :data:`TINY`; any other command unchanged."""
    if argv[:1] != ["train"]:
        return argv
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in BUDGET:
            skip = True
        elif a.split("=")[0] not in BUDGET:
            out.append(a)
    return out + TINY[argv[1]]


def run_command(cmd: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run one README command in ``cwd``; returns what it printed."""

    if "../shared/data" in cmd and not SHARED.is_dir():
        pytest.skip(f"the shared data ({SHARED}) is absent: cannot run {cmd!r}")
    argv = shlex.split(cmd)
    t0 = time.perf_counter()
    try:
        return _run(cmd, argv, cwd, capsys)
    finally:
        if os.environ.get("README_TIMES"):
            with open(os.environ["README_TIMES"], "a") as f:
                f.write(f"{time.perf_counter() - t0:6.1f} s  {cmd}\n")


def _run(cmd: str, argv: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> str:
    from rnnkit.cli import main

    if argv[0] == "rnnkit" and not set("|&;<>$") & set(cmd):
        capsys.readouterr()
        rc = main(tiny(argv[1:]))
        out, err = capsys.readouterr()
        assert rc == 0, f"{cmd!r} exited {rc}:\n{err[-3000:]}"
        return out
    return _bash(cmd, cwd)


def _bash(cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    follow = cmd.startswith("tail -f ")
    p = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    if not follow:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{cmd!r} exited {p.returncode}:\n{err[-3000:]}"
        return out
    # a live stream: read until every line of the followed file has an answer, then stop it
    want = len((cwd / shlex.split(cmd)[2]).read_text().splitlines())
    lines, t0 = [], time.monotonic()
    assert p.stdout is not None
    while len(lines) < want and time.monotonic() - t0 < 120:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
    os.killpg(p.pid, signal.SIGTERM)
    err = p.communicate(timeout=30)[1]
    assert len(lines) == want, f"{cmd!r} answered {len(lines)} of {want} lines:\n{err[-3000:]}"
    return "".join(lines)


def in_suite(cmd: str) -> bool:
    """``python -m pytest tests/...``: a command that runs some of this suite's own tests."""
    return re.fullmatch(r"python -m pytest( tests/\S+)+", cmd) is not None


def run_section(title: str, root: Path, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> dict:
    """The section's commands and runnable Python blocks, in README order, in ``root``."""
    monkeypatch.chdir(root)
    ns: dict = {"torch": torch, "rnnkit": rnnkit}
    for line, kind, marker, code in dict(SECTIONS)[title]:
        if kind == "bash":
            for cmd in commands(code):
                if in_suite(cmd):  # this suite's own test files: they run beside this test
                    missing = [f for f in cmd.split()[3:]
                               if not (ROOT / f.split("::")[0]).is_file()]
                    assert not missing, f"{cmd!r} names test files that do not exist: {missing}"
                elif cmd not in LONG:
                    run_command(cmd, root, capsys)
        elif marker == "runnable":
            torch.manual_seed(0)
            exec(compile(code, f"README.md:{line}", "exec"), ns)
    return ns


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder with the shared data beside it (``../shared/data``)."""
    root = tmp_path / "project"
    root.mkdir()
    (tmp_path / "shared").mkdir()
    if SHARED.is_dir():
        (tmp_path / "shared" / "data").symlink_to(SHARED)
    return root


# -- the user's own files, tiny -----------------------------------------------------------------
def _reviews(d: Path) -> None:
    good = ["what a great film", "loved every minute", "a wonderful story", "great acting"]
    bad = ["a dull mess", "boring and far too long", "I want my money back", "awful plot"]
    rows = [f'"{t}",{lab}' for i in range(6) for t, lab in
            ((good[i % 4] + "!" * (i % 3), "pos"), (bad[i % 4] + "." * (i % 3), "neg"))]
    (d / "reviews.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (d / "held_out.tsv").write_text("text\tlabel\nsuch a great film\tpos\na dull plot\tneg\n")
    (d / "texts.txt").write_text("what a great film\n\nboring\n")
    (d / "call.txt").write_text("hello\nthis is about your account\nthanks, bye\n")


def _sequences(d: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    X = rng.normal(size=(40, 20, 6)).astype(np.float32) + y[:, None, None]
    np.savez(d / "motions.npz", X=X, lengths=np.full(40, 20), y=y)
    np.savez(d / "new.npz", X=X[:3])
    rows = [f"{i},{t},{X[i, t, 0]:.3f},{X[i, t, 1]:.3f},{'ab'[y[i]]}"
            for i in range(20) for t in range(10)]
    (d / "readings.csv").write_text("id,time,f1,f2,label\n" + "\n".join(rows) + "\n")
    for name, part in (("Train.ts", range(0, 24)), ("Test.ts", range(24, 40))):
        head = ("@problemName motions\n@timeStamps false\n@missing false\n@univariate false\n"
                "@dimensions 2\n@equalLength true\n@seriesLength 10\n@classLabel true 0 1\n"
                "@data\n")
        body = "".join(":".join(",".join(f"{v:.3f}" for v in X[i, :10, f]) for f in (0, 1))
                       + f":{y[i]}\n" for i in part)
        (d / name).write_text(head + body)
    (d / "sensor.csv").write_text("".join(",".join(f"{v:.3f}" for v in r) + "\n" for r in X[0, :4]))


def _forecast(d: Path) -> None:
    from rnnkit.tasks.forecast.data import synthetic

    synthetic().tail(100).to_csv(d / "latest.csv", index=False)  # the built-in series' latest


def _export(d: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_keras_file import _layer, rnn_conf, rnn_weights, write_keras

    rng = np.random.default_rng(0)
    write_keras(d / "model.keras", [
        _layer("InputLayer", name="input_layer", batch_shape=[None, 20, 6]),
        rnn_conf("SimpleRNN", "rnn_a", 16, return_sequences=True),
        rnn_conf("SimpleRNN", "rnn_b", 8),
        _layer("Dense", name="out", units=1, activation="linear", use_bias=True),
    ], {"layers/simple_rnn/cell": rnn_weights("SimpleRNN", 6, 16, rng),
        "layers/simple_rnn_1/cell": rnn_weights("SimpleRNN", 16, 8, rng),
        "layers/dense": [rng.normal(size=(8, 1)), rng.normal(size=(1,))]})


def _translate(d: Path) -> None:
    from rnnkit.tasks.translate import number_words

    pairs = [("Save the file", "Enregistrer le fichier"), ("Open file", "Ouvrir le fichier"),
             ("Close the window", "Fermer la fenêtre"), ("Quit", "Quitter")]
    rows = [f"{a} {i}\t{b} {i}" for i in range(15) for a, b in pairs]
    (d / "pairs.tsv").write_text("en\tfr\n" + "\n".join(rows) + "\n")
    (d / "held_out.tsv").write_text("".join(f"{n}\t{number_words(n)}\n" for n in (7, 40512)))


def _caption(d: Path) -> None:
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    (d / "photos").mkdir()
    lines = []
    for i in range(24):
        img = np.zeros((20, 30, 3))
        img[:, : 10 * (1 + i % 3)] = 1.0
        mpimg.imsave(d / "photos" / f"{i}.png", np.clip(img + rng.normal(0, 0.05, img.shape),
                                                         0, 1))
        lines.append(f"{i}.png\t{['one', 'two', 'three'][i % 3]} white bars")
    (d / "photos" / "captions.tsv").write_text("\n".join(lines) + "\n")
    for name in ("a.png", "b.png"):
        mpimg.imsave(d / name, rng.uniform(size=(16, 40, 3)))


INPUTS: dict[str, Callable[[Path], None]] = {
    "Text classification": _reviews,
    "Sequences of vectors and video frames": _sequences,
    "Forecasting time series": _forecast,
    "Moving models: ONNX export and Keras files": _export,
    "Translation: encoder–decoder with attention": _translate,
    "Image captioning: a CNN encoder feeding the seq2seq decoder": _caption,
}
NEEDS = {  # section: the other sections' commands whose runs it uses (run first, as written)
    "Moving models: ONNX export and Keras files": [
        ("Text classification", "rnnkit train classify --data reviews.csv --out runs/reviews")],
}
RUN = [title for title, blocks in SECTIONS
       if any(m == "runnable" or (k == "bash" and any(c not in LONG for c in commands(code)))
              for _, k, m, code in blocks)]


@pytest.mark.parametrize("title", RUN)
def test_section(title, project, capsys, monkeypatch):
    for other, cmd in NEEDS.get(title, []):
        assert cmd in {c for _, k, _, code in dict(SECTIONS)[other] if k == "bash"
                       for c in commands(code)}, f"{cmd!r} is not a command of {other!r}"
        INPUTS.get(other, lambda d: None)(project)
        monkeypatch.chdir(project)
        run_command(cmd, project, capsys)
    INPUTS.get(title, lambda d: None)(project)
    ns = run_section(title, project, capsys, monkeypatch)
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
