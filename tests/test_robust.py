"""Nothing lost, nothing wrong: the run lock, stale temporaries, a full disk, a torn metrics
line, a run with best/ but no last/, damaged weights, and bad input as one clear error (each a
regression test for a failure an adversarial probe found)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from rnnkit import checkpoint as ckpt
from rnnkit.cli import main

TEXT = "def f(x):\n    return x + 1\n\n" * 60
LM = ["--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq", "16", "--log-every", "5",
      "--sample-length", "0", "--baseline-order", "2", "--quiet"]


def corpus(tmp: Path) -> str:
    f = tmp / "t.txt"
    f.write_text(TEXT)
    return str(f)


def lm(tmp: Path, run: Path, *extra: str) -> int:
    return main(["train", "lm", "--data", corpus(tmp), *LM, "--out", str(run), *extra])


def err_of(capsys) -> str:
    return capsys.readouterr().err


def test_best_without_last_is_refused_with_the_way_out_and_restart_works(tmp_path, capsys):
    run = tmp_path / "run"
    assert lm(tmp_path, run, "--steps", "10", "--eval-every", "5") == 0
    import shutil

    shutil.rmtree(run / "last")  # what a kill between best/ and last/ used to leave
    capsys.readouterr()
    assert main(["train", "lm", "--resume", str(run), "--steps", "20"]) == 2
    e = err_of(capsys)
    assert "no last/ checkpoint" in e and "--restart" in e
    assert lm(tmp_path, run, "--steps", "10") == 2
    assert "--restart" in err_of(capsys)
    assert lm(tmp_path, run, "--steps", "10", "--restart") == 0
    assert json.loads((run / "last/trainer.json").read_text())["step"] == 10


def test_a_second_process_is_refused_with_the_holders_pid_until_it_dies(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rnnkit import checkpoint as c\n"
         "with c.run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
         str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lm(tmp_path, run, "--steps", "4") == 2
        e = err_of(capsys)
        assert f"in use by another rnnkit process (PID {holder.pid})" in e
        assert not (run / "config.json").exists()  # nothing written into the held folder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lm(tmp_path, run, "--steps", "4") == 0  # the lock died with its holder


def test_stale_temporaries_are_cleaned_and_a_torn_metrics_line_is_dropped(tmp_path, capsys):
    run = tmp_path / "run"
    assert lm(tmp_path, run, "--steps", "6", "--eval-every", "3") == 0
    (run / ".last.tmp4242").mkdir()
    (run / ".last.tmp4242" / "model.safetensors").write_bytes(b"partial")
    (run / ".config.json.tmp4242").write_text("{")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train_lo')  # a kill mid-append
    capsys.readouterr()
    assert main(["train", "lm", "--resume", str(run), "--steps", "9", "--quiet"]) == 0
    assert "dropped a torn last line" in err_of(capsys)  # and says so
    assert not list(run.glob(".*.tmp*"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(s) for s in lines]  # every line parses again
    assert recs[-1]["step"] == 9 and [r["step"] for r in recs if "train_loss" in r][-1] == 9


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path,
                                                                          monkeypatch):
    model = nn.Linear(3, 2)
    ckpt.save(tmp_path / "c", model, {"v": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_synced", full)
    with pytest.raises(OSError, match=r"no space left .* bytes needed.*previous checkpoint"):
        ckpt.save(tmp_path / "c", model, {"v": 2})
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = ckpt.load_weights(nn.Linear(3, 2), tmp_path / "c")
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert ckpt.load_config(tmp_path / "c") == {"v": 1}


def test_a_nan_weight_is_refused_on_load_naming_the_tensor(tmp_path, capsys):
    run = tmp_path / "run"
    assert lm(tmp_path, run, "--steps", "4") == 0
    tensors, meta = ckpt.read_tensors(run / "best" / ckpt.MODEL)
    name = next(k for k in tensors if "weight" in k)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(run / "best" / ckpt.MODEL), metadata=meta)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", corpus(tmp_path)]) == 2
    e = err_of(capsys)
    assert f"weight {name!r} holds 1 non-finite" in e and "nan bits" not in e


# -- every numeric flag checked once, naming the flag ---------------------------------------
BAD_FLAGS = [
    ("--minutes", "nan"), ("--minutes", "inf"), ("--minutes", "-1"), ("--steps", "0"),
    ("--clip", "-1"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "1e30"), ("--layers", "99999"),
    ("--batch-size", "0"), ("--batch-size", "-4"), ("--batch", "0"), ("--batch", "-2"),
    ("--dropout", "nan"),
    ("--dropout", "1.5"), ("--max-chars", "-5"), ("--hidden", "0"), ("--eval-every", "0"),
    ("--warmup", "-3"), ("--seed", "x"), ("--weight-decay", "inf"),
]


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS)
def test_a_bad_number_is_exit_2_with_one_line_naming_the_flag(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "lm", "--data", corpus(tmp_path), f"{flag}={value}",
              "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    msg = err_of(capsys)
    assert flag in msg and "Traceback" not in msg, msg
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_classify_epochs_are_checked(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "classify", "--data", str(tmp_path / "d.tsv"), f"--epochs={value}",
              "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    assert "argument --epochs: expected a number > 0" in err_of(capsys)


@pytest.mark.parametrize("argv", [
    ["sample", "RUN", "--length", "-5"], ["sample", "RUN", "--temperature", "nan"],
    ["sample", "RUN", "--temperature", "inf"], ["predict", "RUN", "x", "--chunk-chars", "0"],
])
def test_verbs_check_their_numbers_too(argv, tmp_path, capsys):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and argv[-2] in err_of(capsys)


def test_classify_flags_and_inputs(tmp_path, capsys):
    rows = ["text\tlabel"] + [f"text {i}\t{'ab'[i % 2]}" for i in range(30)]
    rows.insert(7, "a row without its label")
    f = tmp_path / "d.tsv"
    f.write_text("\n".join(rows) + "\n")
    out = str(tmp_path / "r")
    assert main(["train", "classify", "--data", str(f), "--steps", "2", "--out", out]) == 2
    assert "line 8" in err_of(capsys)  # names the row that lacks the label, not "empty"
    rows = ["label\ttext"] + [f"{'ab'[i % 2]}\ttext {i}" for i in range(30)]
    rows.insert(7, "a row without its label")  # one field: read as the label, no text at all
    g = tmp_path / "label_first.tsv"
    g.write_text("\n".join(rows) + "\n")
    assert main(["train", "classify", "--data", str(g), "--steps", "2", "--out", out]) == 2
    assert "line 8 has no 'text' field (1 field(s)" in err_of(capsys)  # was "skipped empty"
    assert main(["train", "classify", "--data", str(tmp_path), "--steps", "2",
                 "--out", out]) == 2
    assert "folder" in err_of(capsys)
    for v in ("0", "-1"):  # an empty text for every row: refused, naming the flag
        with pytest.raises(SystemExit):
            main(["train", "classify", "--data", str(f), f"--max-len={v}", "--out", out])
        assert "--max-len" in err_of(capsys)


@pytest.mark.parametrize("name", ["classify", "translate", "forecast"])
def test_data_naming_a_folder_where_a_file_belongs_is_one_line(name, tmp_path, capsys):
    """(The tasks whose --data is one file; lm, sequences and caption read folders too.)"""
    rc = main(["train", name, "--data", str(tmp_path), "--steps", "1", "--quiet",
               "--out", str(tmp_path / "r")])
    e = err_of(capsys)
    assert rc == 2 and "Traceback" not in e, e[-1000:]
    assert e.strip().splitlines()[-1].startswith(f"rnnkit: error: {tmp_path} is a folder"), e


def test_stdin_is_strict_utf8_with_the_byte_offset(tmp_path):
    rows = ["text\tlabel"] + [f"good {i}\t{'ab'[i % 2]}" for i in range(24)]
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "classify", "--data", str(tmp_path / "d.tsv"), "--steps", "2",
                 "--hidden", "8", "--embed", "8", "--quiet", "--out", str(run)]) == 0
    cp949 = "좋은 영화".encode("cp949")
    for extra in ([], ["--stream"]):
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "rnnkit.cli", "predict", str(run), *extra,
                            "-"], input=b"fine\n" + cp949 + b"\n", capture_output=True,
                           timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        assert r.returncode == 2, (extra, r.stderr)
        err = r.stderr.decode()
        assert "stdin is not UTF-8 text" in err and "byte offset 5" in err, err
        assert "Traceback" not in err and time.time() - t < 120


# -- the Python API ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_a_dtype_the_weights_do_not_have_is_a_clear_error(dtype, kernel):
    from rnnkit.layers import CELLS

    for cell in CELLS.values():  # a ValueError, as torch.nn's, on every cell and kernel
        with pytest.raises(ValueError, match=rf"float32 weights but got {dtype}"):
            cell(4, 8, kernel=kernel)(torch.randn(2, 3, 4, dtype=dtype))


@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_an_empty_batch_with_lengths_gives_empty_outputs(kernel):
    from rnnkit.layers import CELLS

    for cell in CELLS.values():
        layer = cell(4, 8, num_layers=2, bidirectional=True, kernel=kernel)
        out, _ = layer(torch.randn(0, 3, 4), lengths=torch.zeros(0, dtype=torch.long))
        ref, _ = layer(torch.randn(0, 3, 4))
        assert out.shape == ref.shape == (0, 3, 16)


@pytest.mark.parametrize("kernel", ["auto", "fast"])
def test_layernorm_lstm_without_bias_runs_on_every_kernel_and_equals_the_reference(kernel):
    import rnnkit

    torch.manual_seed(0)
    ref = rnnkit.LayerNormLSTM(4, 8, bias=False, kernel="reference")
    fast = rnnkit.LayerNormLSTM(4, 8, bias=False, kernel=kernel)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 4, requires_grad=True)
    a, b = fast(x)[0], ref(x)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), [x, *fast.parameters()])
    gb = torch.autograd.grad(b.square().sum(), [x, *ref.parameters()])
    for p, q in zip(ga, gb, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)


def test_resume_budget_is_the_new_total_and_an_exhausted_one_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert lm(tmp_path, run, "--steps", "6", "--eval-every", "3") == 0
    capsys.readouterr()
    assert main(["train", "lm", "--resume", str(run), "--steps", "6"]) == 2
    e = err_of(capsys)
    assert "already used its budget" in e and "stopped at step 6" in e
    assert main(["train", "lm", "--resume", str(run), "--steps", "9"]) == 0
    assert "resuming" in err_of(capsys) and \
        json.loads((run / "last/trainer.json").read_text())["step"] == 9


def test_auto_never_picks_the_low_precision_log_scan():
    from rnnkit.kernels.scan import resolve

    for dtype in (torch.float32, torch.float64):
        assert resolve("auto", torch.zeros(2, 3, 4, dtype=dtype)) in ("native", "chunked")
    assert resolve("log", torch.zeros(2, 3, 4)) == "log"  # only when asked for by name


# -- a kill before each file operation of the run ---------------------------------------------
_KILLER = """
import os, shutil, signal, sys
from rnnkit import checkpoint as c
K, n = int(sys.argv[1]), [0]
def wrap(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        n[0] += 1
        if n[0] == K:
            os.kill(os.getpid(), signal.SIGKILL)
        return f(*a, **k)
    setattr(mod, name, g)
for mod, name in ((c, "_write_synced"), (c, "_fsync_dir"), (os, "replace"), (os, "rename"),
                  (shutil, "rmtree")):
    wrap(mod, name)
from rnnkit.cli import main
rc = main(sys.argv[2:])
print("ops", n[0])
sys.exit(rc)
"""


def test_a_kill_before_any_file_operation_resumes_to_the_uninterrupted_weights(tmp_path):
    args = ["train", "lm", "--data", corpus(tmp_path), *LM, "--steps", "6", "--eval-every",
            "3", "--device", "cpu"]
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    want = ckpt.read_tensors(ref / "last" / ckpt.MODEL)[0]
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def child(k: int, run: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(k), *args, "--out", str(run)],
                              capture_output=True, text=True, env=env, timeout=240)

    r = child(10 ** 9, tmp_path / "count")
    assert r.returncode == 0, r.stderr[-2000:]
    n_ops = int(r.stdout.split("ops")[-1])
    assert n_ops >= 8  # two saves of last/ and best/, config, metrics
    for k in sorted({1, 2, *range(3, n_ops + 1, max(1, n_ops // 6)), n_ops}):
        run = tmp_path / f"k{k}"
        r = child(k, run)
        assert r.returncode == -signal.SIGKILL, (k, r.returncode, r.stderr[-1000:])
        if (run / "last").exists() or (run / ".last.old").exists():
            rc = main(["train", "lm", "--resume", str(run), "--steps", "6", "--quiet"])
            assert rc in (0, 2), k  # 2: the kill came after the final save ("budget used")
        else:  # killed before the first checkpoint: nothing to resume, start again
            assert main([*args, "--out", str(run), "--restart", "--quiet"]) == 0
        got = ckpt.read_tensors(ckpt.resolve(run / "last") / ckpt.MODEL)[0]
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0,
                                       msg=f"kill at file operation {k}: {name}")


# -- every numeric flag of every command, fuzzed at the argument layer ----------------------
def _commands() -> list[tuple[list[str], object]]:
    """(argv prefix, subparser) for every leaf command of `rnnkit`."""
    import argparse

    from rnnkit.cli import build_parser

    out = []

    def walk(prefix: list[str], p: argparse.ArgumentParser) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((prefix, p))
        for a in subs:
            for name, sp in a.choices.items():
                walk([*prefix, name], sp)

    walk([], build_parser())
    return out


def _numeric_flags():
    rows = []
    for prefix, p in _commands():
        positional = ["RUN" if a.dest == "run_dir" else (next(iter(a.choices)) if a.choices
                                                          else "x")
                      for a in p._actions if not a.option_strings and a.nargs in (None, "+")]
        for a in p._actions:
            t = getattr(a, "type", None)
            if a.option_strings and getattr(t, "__name__", "") in ("int", "float") and \
                    a.option_strings[-1].startswith("--"):
                rows.append((prefix, positional, a.option_strings[-1], a))
    return rows


NUMERIC = _numeric_flags()


def test_the_fuzz_covers_every_command_with_numbers():
    from rnnkit.tasks import specs

    cmds = {" ".join(p) for p, *_ in NUMERIC}
    want = {f"train {n}" for n in specs()} | {"eval", "sample", "predict", "explain", "serve"}
    assert want <= cmds, want - cmds  # a new task's flags are fuzzed from the registry
    # every numeric flag is checked by the shared argument layer (range and finiteness), so a
    # value it accepts is in range, and the same check reads a run's config back
    plain = [f"{' '.join(p)} {f}" for p, _, f, a in NUMERIC if not hasattr(a.type, "check_value")]
    assert not plain, plain


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(row=st.sampled_from(NUMERIC),
       value=st.sampled_from(["0", "-1", "-4", "nan", "inf", "-inf", "1e30", "x", "", "0.5",
                              "3", "1e-12", "99999999999999999999999"]))
def test_a_numeric_flag_parses_or_exits_2_naming_itself(row, value):
    import contextlib
    import io

    from rnnkit.cli import parse

    prefix, positional, flag, action = row
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = parse([*prefix, *positional, f"{flag}={value}"])
        except SystemExit as e:
            msg = err.getvalue().strip().splitlines()[-1]
            assert e.code == 2 and flag in msg and "Traceback" not in err.getvalue(), msg
            return
    v = getattr(args, action.dest)  # accepted: a finite number, in the flag's range
    assert isinstance(v, int | float) and v == v and abs(v) != float("inf"), (flag, value, v)
    assert action.type.check_value(v) == v
    if action.type.__name__ == "int":  # past any size or count: refused
        assert value != "99999999999999999999999", (flag, v)


def test_a_tampered_config_is_refused_before_anything_is_allocated(tmp_path, capsys):
    run = tmp_path / "run"
    assert lm(tmp_path, run, "--steps", "2") == 0
    cfg_path = run / "best" / ckpt.CONFIG
    good = json.loads(cfg_path.read_text())
    for change, needle in ((lambda c: c["model"].update(vocab_size=10 ** 12), "'emb.weight' has "
                            "shape"), (lambda c: c["model"].update(vocab_size=-1),
                                       "does not describe a model"),
                           (lambda c: c.pop("model"), "has no model description")):
        bad = json.loads(json.dumps(good))
        change(bad)
        cfg_path.write_text(json.dumps(bad))
        capsys.readouterr()
        assert main(["sample", str(run), "--length", "3"]) == 2
        assert needle in err_of(capsys)


def test_a_50_mb_line_is_read_in_bounded_pieces():
    import io

    from rnnkit.data.text import read_pieces

    line = ("가나다라" * 3_200_000) + "\n"  # 12.8 M characters, 38 MB of UTF-8, one line
    sizes = [len(p) for p in read_pieces(io.BytesIO(line.encode()), "stdin", max_chars=4096)]
    assert max(sizes) <= 4096 and sum(sizes) == len(line)


def test_a_two_symbol_vocabulary_and_tampered_trainer_and_decision_files(tmp_path, capsys):
    f = tmp_path / "ab.txt"
    f.write_text("ab" * 500)
    assert main(["train", "lm", "--data", str(f), "--min-freq", "1000000", "--steps", "2",
                 "--out", str(tmp_path / "v")]) == 2
    assert "vocab" in err_of(capsys).lower()
    run = tmp_path / "run"
    assert lm(tmp_path, run, "--steps", "4") == 0
    (run / "last" / "trainer.json").write_text('{"step": 4}')
    capsys.readouterr()
    assert main(["train", "lm", "--resume", str(run), "--steps", "8"]) == 2
    assert "has no trainer state" in err_of(capsys)
    rows = ["text\tlabel"] + [f"good {i}\t{'ab'[i % 2]}" for i in range(24)]
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")
    clf = tmp_path / "clf"
    assert main(["train", "classify", "--data", str(tmp_path / "d.tsv"), "--steps", "2",
                 "--hidden", "8", "--embed", "8", "--quiet", "--out", str(clf)]) == 0
    for bad, needle in (({"positive": "zzz", "threshold": 0.5}, "not one of the model's labels"),
                        ({"positive": "a", "threshold": "abc"}, "threshold")):
        (clf / "decision.json").write_text(json.dumps(bad))
        capsys.readouterr()
        assert main(["predict", str(clf), "good"]) == 2
        assert needle in err_of(capsys)
