"""Issue 22, audited item by item: the regressions test_robust.py did not hold yet (each fails
without its fix). A safetensors file whose header length starts with byte 0x80 is no pickle;
a run's saved settings are checked like the flags that set them; a fresh run never writes into
another run's folder; ``--resume`` of a folder in use is refused with the holder's PID; a bad
metrics line names the file; ``predict -`` reads and scores stdin in bounded batches."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main

TEXT = "def f(x):\n    return x + 1\n\n" * 60
LM = ["--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq", "16", "--log-every", "5",
      "--sample-length", "0", "--baseline-order", "2", "--quiet"]
CLF = ["--hidden", "8", "--embed", "8", "--batch-size", "8", "--quiet"]


def _table(tmp: Path) -> Path:
    f = tmp / "d.tsv"
    rows = ["text\tlabel"] + [f"{'good' if i % 2 else 'bad'} film {i}\t{'ab'[i % 2]}"
                              for i in range(40)]
    f.write_text("\n".join(rows) + "\n")
    return f


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny LM run and one tiny classifier run, copied by the tests that change them."""
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "t.txt").write_text(TEXT)
    out = {"tmp": tmp, "text": tmp / "t.txt", "table": _table(tmp)}
    assert main(["train", "lm", "--data", str(out["text"]), *LM, "--steps", "4",
                 "--eval-every", "2", "--out", str(tmp / "lm")]) == 0
    assert main(["train", "classify", "--data", str(out["table"]), *CLF, "--steps", "4",
                 "--out", str(tmp / "clf")]) == 0
    out.update(lm=tmp / "lm", clf=tmp / "clf")
    return out


def _copy(run: Path, tmp: Path) -> Path:
    dst = tmp / run.name
    shutil.copytree(run, dst)
    return dst


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ckpt.LOCK}


# -- a valid safetensors file is never taken for a pickle -------------------------------------
def test_a_safetensors_header_whose_first_byte_is_0x80_loads(tmp_path):
    """The header length is the file's first 8 bytes: one in 256 headers begins with 0x80,
    a pickle's first byte. Such a file (it broke a resume in the audit) loads; a pickle is
    still refused."""
    from safetensors.torch import save

    t = {"w": torch.arange(6.0).reshape(2, 3)}
    data = next(d for k in range(600) if (d := save(t, metadata={"pad": "x" * k}))[0] == 0x80)
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    got, _ = ckpt.read_tensors(f)
    torch.testing.assert_close(got["w"], t["w"])
    back = ckpt.build_checked(lambda: _W(), f)
    torch.testing.assert_close(back.w, t["w"])
    import pickle

    f.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    with pytest.raises(ValueError, match="contains a pickle"):
        ckpt.read_tensors(f)


class _W(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 3))


# -- a tampered config is checked like the flag that set it -----------------------------------
def _tamper(run: Path, change) -> None:
    for p in (run / ckpt.CONFIG, run / "best" / ckpt.CONFIG, run / "last" / ckpt.CONFIG):
        c = json.loads(p.read_text())
        change(c)
        p.write_text(json.dumps(c))


def test_a_tampered_max_len_or_hidden_is_refused_naming_field_and_flag(runs, tmp_path, capsys):
    clf = _copy(runs["clf"], tmp_path)
    _tamper(clf, lambda c: c.update(max_len=-3))  # what the classifier reads back
    for argv in (["predict", str(clf), "good film"], ["eval", str(clf), "--data",
                                                       str(runs["table"])],
                 ["train", "classify", "--resume", str(clf), "--steps", "6"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        e = capsys.readouterr().err
        assert "saved max_len (--max-len) is not valid" in e and "got -3" in e, e
    lm = _copy(runs["lm"], tmp_path)
    _tamper(lm, lambda c: c["model"].update(dropout=float("nan")))
    assert main(["train", "lm", "--resume", str(lm), "--steps", "6"]) == 2
    assert "saved dropout (--dropout) is not valid" in capsys.readouterr().err
    _tamper(lm, lambda c: c["model"].update(dropout=0.1, cell="nope"))
    assert main(["sample", str(lm), "--length", "3"]) == 2
    assert "saved cell (--cell)" in capsys.readouterr().err


# -- a fresh run never writes into another run's folder ---------------------------------------
def test_a_fresh_run_into_another_tasks_run_writes_nothing(runs, tmp_path, capsys):
    lm = _copy(runs["lm"], tmp_path)
    before = _files(lm)
    table = str(runs["table"])
    for argv in (["train", "classify", "--data", table, *CLF, "--steps", "2", "--out", str(lm)],
                 ["train", "classify", "--resume", str(lm), "--steps", "9"],
                 ["train", "classify", "--resume", "--out", str(lm), "--steps", "9"],
                 ["train", "lm", "--data", str(runs["text"]), *LM, "--steps", "2",
                  "--out", str(lm)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        e = capsys.readouterr().err
        assert "'lm'" in e or "already holds a run" in e, e
        assert _files(lm) == before, argv  # no split.json, nothing else
    assert "split.json" not in before


# -- the run lock holds for --resume too ------------------------------------------------------
def test_resume_of_a_folder_in_use_is_refused_with_the_holders_pid(runs, tmp_path, capsys):
    lm = _copy(runs["lm"], tmp_path)
    before = _files(lm)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rnnkit import checkpoint as c\n"
         "with c.run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
         str(lm)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(["train", "lm", "--resume", str(lm), "--steps", "6", "--quiet"]) == 2
        assert f"in use by another rnnkit process (PID {holder.pid})" in \
            capsys.readouterr().err
        assert _files(lm) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["train", "lm", "--resume", str(lm), "--steps", "6", "--quiet"]) == 0
    assert json.loads((lm / "last/trainer.json").read_text())["step"] == 6


# -- metrics.jsonl: only a torn last line is dropped ------------------------------------------
def test_a_bad_metrics_line_before_the_last_names_file_and_line(runs, tmp_path, capsys):
    lm = _copy(runs["lm"], tmp_path)
    lines = (lm / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, '{"step": 1, "train_lo')
    (lm / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["train", "lm", "--resume", str(lm), "--steps", "6", "--quiet"]) == 2
    e = capsys.readouterr().err
    assert f"{lm / 'metrics.jsonl'}, line 2, is not valid JSON" in e, e


# -- predict - : bounded batches, read as it goes ---------------------------------------------
class _Lines(io.RawIOBase):
    """A stdin whose lines are made on demand, counting how many were read."""

    def __init__(self, n: int) -> None:
        self.n, self.read_lines = n, 0

    def readable(self) -> bool:
        return True

    def readline(self, size: int = -1) -> bytes:
        if self.read_lines == self.n:
            return b""
        self.read_lines += 1
        return f"good film {self.read_lines}\n".encode()


def test_batch_predict_reads_and_scores_stdin_in_bounded_batches(runs, monkeypatch, capsys):
    from rnnkit.tasks.classify import api
    from rnnkit.tasks.classify import cli as ccli

    stdin = _Lines(1000)
    seen: list[tuple[int, int]] = []  # (batch size, lines read when it was scored)
    real = api.TextClassifier.predict_proba

    def spy(self, texts):
        seen.append((len(texts), stdin.read_lines))
        return real(self, texts)

    monkeypatch.setattr(api.TextClassifier, "predict_proba", spy)
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": stdin})())
    capsys.readouterr()
    assert main(["predict", str(runs["clf"]), "-"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1000 and all(ln.split("\t")[0] in ("a", "b") for ln in out)
    assert sum(n for n, _ in seen) == 1000
    assert max(n for n, _ in seen) <= ccli.BATCH_LINES  # memory bounded by one batch
    # each batch is scored before the next is read: stdin is read as it goes, not all first
    for k, (_, read) in enumerate(seen):
        assert read <= (k + 1) * ccli.BATCH_LINES + 1, seen


# -- the CLI fuzz, run: an accepted value trains or is one clear line, never a traceback ------
_VALUES = ["0", "-1", "nan", "inf", "1e30", "x", "0.5", "3", "1e-12", "99999999999999999999999"]


def _accepted_train_values() -> list[tuple[str, str, str]]:
    """(task, flag, value) for every numeric flag of every ``train TASK`` and every fuzz value
    its checked type accepts (the refused ones exit 2 at parse: test_robust's fuzz)."""
    import argparse

    from rnnkit.tasks import specs
    from rnnkit.tasks.spec import _train_parser

    out = []
    for name, s in specs().items():
        for a in _train_parser(s)._actions:
            if not a.option_strings or not hasattr(a.type, "check_value"):
                continue
            flag = a.option_strings[-1]
            for v in _VALUES:
                try:
                    a.type(v)
                except argparse.ArgumentTypeError:
                    continue
                out.append((name, flag, v))
    return out


ACCEPTED = _accepted_train_values()


def test_every_task_has_accepted_values_to_run():
    from rnnkit.tasks import TASKS

    assert {t for t, *_ in ACCEPTED} == set(TASKS)


@pytest.mark.parametrize("case", [ACCEPTED[i] for i in range(0, len(ACCEPTED),
                                                            max(1, len(ACCEPTED) // 9))],
                         ids=lambda c: f"{c[0]}{c[1]}={c[2]}")
def test_an_accepted_value_trains_or_is_one_clear_line(case, tmp_path, capsys):
    """A spread sample over every task's accepted (flag, value) pairs, each run for two steps
    under a 90 s alarm: exit 0, or exit 2 with one ``rnnkit: error:`` line; no traceback."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_tasks import TINY

    name, flag, value = case
    args, _ = TINY[name](tmp_path)
    argv = ["train", name, *args, "--steps", "2", "--eval-every", "1", "--quiet",
            "--out", str(tmp_path / "r"), f"{flag}={value}"]

    def late(*_):
        raise TimeoutError(f"train {name} {flag}={value} ran past 90 s")

    old = signal.signal(signal.SIGALRM, late)
    signal.alarm(90)
    try:
        rc = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert rc in (0, 2) and "Traceback" not in err, (case, rc, err[-2000:])
    if rc == 2:
        assert err.strip().splitlines()[-1].startswith("rnnkit: error: "), err[-500:]


def test_an_allocation_too_large_is_one_line_naming_the_flags(monkeypatch, capsys):
    def alloc(*_a, **_k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 3959999999604 bytes.")

    monkeypatch.setattr("rnnkit.cli.train_command", lambda *a: alloc())
    assert main(["train", "lm", "--hidden", "9000", "--steps", "1"]) == 2
    e = capsys.readouterr().err
    assert e.count("\n") == 1 and "out of memory" in e and "--hidden 9000" in e, e

    def bug(*_a):
        raise RuntimeError("a bug, not a size")

    monkeypatch.setattr("rnnkit.cli.train_command", lambda *a: bug())
    with pytest.raises(RuntimeError, match="a bug"):  # other errors keep their traceback
        main(["train", "lm", "--steps", "1"])


# -- a full disk while writing a run's small files --------------------------------------------
def test_a_full_disk_on_a_small_file_names_it_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    f = tmp_path / "config.json"
    ckpt.atomic_write(f, '{"v": 1}')

    def full(path, data):
        Path(path).write_bytes(data[:3])  # a partial temporary, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_synced", full)
    with pytest.raises(OSError, match=rf"no space .* write {f} \(8 bytes needed\).*unchanged"):
        ckpt.atomic_write(f, '{"v": 2}')
    assert f.read_text() == '{"v": 1}' and [p.name for p in tmp_path.iterdir()] == [f.name]


# -- a diverged model is not saved ------------------------------------------------------------
def test_a_non_finite_validation_loss_stops_before_the_checkpoint(runs, tmp_path, capsys,
                                                                  monkeypatch):
    """Weights that diverged between two evaluations (a finite training loss, then NaN
    weights after the update: lr and weight decay far too high) are not saved: last/ stays
    the last good one and the run exits 2."""
    from rnnkit.tasks.classify.task import ClassifyTask

    real, calls = ClassifyTask.evaluate, []

    def evaluate(self, model):
        m = real(self, model)
        calls.append(1)
        return {**m, "loss": float("nan")} if len(calls) == 2 else m

    monkeypatch.setattr(ClassifyTask, "evaluate", evaluate)
    run = tmp_path / "wd"
    assert main(["train", "classify", "--data", str(runs["table"]), *CLF, "--steps", "4",
                 "--eval-every", "2", "--out", str(run)]) == 2
    e = capsys.readouterr().err
    assert "training stopped: the validation loss became nan at step 4" in e, e[-800:]
    assert json.loads((run / "last/trainer.json").read_text())["step"] == 2


# -- sequences --stream: the one decoding rule, bounded lines ---------------------------------
def test_sequence_stream_input_is_strict_utf8_and_bounded(tmp_path, monkeypatch, capsys):
    run = tmp_path / "seq"
    assert main(["train", "sequences", "--hidden", "8", "--batch-size", "8", "--steps", "2",
                 "--quiet", "--out", str(run)]) == 0
    good = b"0,0,0,0,0,0\n"
    for data, needle in ((good + "좋은".encode("cp949") + b"\n",
                          f"stdin is not UTF-8 text: invalid byte at byte offset {len(good)}"),
                         (good + b"1," * 40000 + b"\n", "stdin line 2 is longer than 65,536")):
        monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(data)})())
        capsys.readouterr()
        assert main(["predict", str(run), "--stream", "-"]) == 2
        out = capsys.readouterr()
        assert needle in out.err and out.out.startswith("1\t"), (out.err, out.out)
    f = tmp_path / "rows.csv"
    f.write_bytes(good + b"\xff\n")
    assert main(["predict", str(run), "--stream", "--file", str(f)]) == 2
    assert f"{f} is not UTF-8 text: invalid byte at byte offset 12" in capsys.readouterr().err


# -- SIGKILL before each file operation of one checkpoint save, in turn ------------------------
_OPS = ("_write_synced", "_fsync_dir")
_OS_OPS = ("replace", "rename", "mkdir", "unlink", "rmdir")


def _save_killed_at(k: int, path: Path, model: nn.Module, config: dict, state: dict) -> int:
    """Fork; the child saves with a SIGKILL before its ``k``-th file operation (every
    checkpoint helper and ``os`` call that changes the disk, ``shutil.rmtree`` included).
    Returns the child's wait status as (signal or 0, operations done)."""
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count, kill itself at k, never return
        try:
            os.close(r)
            n = [0]

            def hook(mod, name):
                f = getattr(mod, name)

                def g(*a, **kw):
                    n[0] += 1
                    if n[0] == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return f(*a, **kw)
                setattr(mod, name, g)
            for name in _OPS:
                hook(ckpt, name)
            for name in _OS_OPS:
                hook(os, name)
            hook(shutil, "rmtree")
            ckpt.save(path, model, config, {"step": 2}, state)
            os.write(w, str(n[0]).encode())
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    done = os.read(r, 32)
    os.close(r)
    return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0), int(done or 0)


def test_a_kill_before_each_file_operation_of_a_save_leaves_old_or_new_whole(tmp_path,
                                                                            monkeypatch):
    """The first and a later save of a checkpoint, killed before each of their file
    operations in turn: the folder then holds the old checkpoint or the new one, whole (model,
    config and trainer state of one save), and the next save works. (fsync is skipped: it
    guards against power loss, and a killed process loses nothing it wrote.)"""
    import os

    monkeypatch.setattr(os, "fsync", lambda fd: None)
    torch.manual_seed(0)
    old, new = nn.Linear(3, 2), nn.Linear(3, 2)
    state = {"m": torch.arange(4.0), "n": 1}

    def check(c: Path, want: list[tuple[nn.Module, int]]) -> None:
        d = ckpt.resolve(c)
        got = ckpt.load_weights(nn.Linear(3, 2), d)
        cfg = ckpt.load_config(d)
        rec = ckpt.load_trainer(d)
        match = [v for m, v in want if torch.equal(got.weight, m.weight)]
        assert match == [cfg["v"]] and rec["step"] == cfg["v"], (c, cfg, rec["step"])
        torch.testing.assert_close(rec["state"]["m"], state["m"])

    for first in (True, False):
        base = tmp_path / ("first" if first else "later")
        probe = base / "probe"
        if not first:
            ckpt.save(probe, old, {"v": 1}, {"step": 1}, state)
        sig, n_ops = _save_killed_at(10 ** 6, probe, new, {"v": 2}, state)
        assert sig == 0 and n_ops >= 8, n_ops
        for k in range(1, n_ops + 1):
            c = base / f"k{k}"
            if not first:
                ckpt.save(c, old, {"v": 1}, {"step": 1}, state)
            sig, _ = _save_killed_at(k, c, new, {"v": 2}, state)
            assert sig == signal.SIGKILL, k
            if first and not (c / ckpt.MODEL).exists() and not (
                    c.with_name(f".{c.name}.old") / ckpt.MODEL).exists():
                with pytest.raises(FileNotFoundError):  # nothing yet: nothing half-read
                    ckpt.resolve(c)
            else:
                check(c, [(new, 2)] if first else [(old, 1), (new, 2)])
            ckpt.clean_stale(c.parent)
            ckpt.save(c, new, {"v": 2}, {"step": 2}, state)  # the next save works
            check(c, [(new, 2)])
            assert not [p for p in c.parent.iterdir() if ".tmp" in p.name or
                        p.name.endswith(".old")], k


# -- predict --stream: one long stdin line is fed in bounded chunks ---------------------------
def test_one_long_stdin_line_is_streamed_in_bounded_chunks(runs, monkeypatch, capsys):
    from rnnkit.tasks.classify import cli as ccli

    line = ("good film " * 10_000) + "\n"  # 100,000 characters on one line: 25 chunks
    fed: list[int] = []
    from rnnkit.tasks.classify import api

    real = api.TextClassifier.stream

    def stream(self):
        s = real(self)
        feed = s.feed

        def spy(chunk):
            fed.append(len(chunk))
            return feed(chunk)
        s.feed = spy
        return s

    monkeypatch.setattr(api.TextClassifier, "stream", stream)
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(line.encode())})())
    assert main(["predict", str(runs["clf"]), "--stream", "-"]) == 0
    assert max(fed) <= ccli.MAX_LINE and sum(fed) == len(line)
    assert len(capsys.readouterr().out.splitlines()) == len(fed)
