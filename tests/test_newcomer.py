"""What a newcomer hit (issue 21): output that reads wrong, silent surprises, help that does
not help. Each test checks the printed text itself."""

from __future__ import annotations

import re

import pytest
import torch

import rnnkit
from rnnkit.cli import main
from rnnkit.tasks.lm.cli import DEFAULTS as LM_DEFAULTS
from rnnkit.tasks.lm.cli import OWN as LM_OWN
from rnnkit.tasks.lm.cli import comparison


def test_the_comparison_with_the_ngram_reads_right_whatever_the_sign():
    assert comparison(2.0, 1.5, 9).endswith("the network is 0.500 bits/char worse than the "
                                            "n-gram")
    assert comparison(1.2, 1.5, 9).endswith("the network is 0.300 bits/char better than the "
                                            "n-gram")
    assert " -" not in comparison(3.0, 1.0, 9) + comparison(1.0, 3.0, 9)


def test_one_ngram_order_for_the_model_and_the_baseline():
    assert LM_OWN["order"] == LM_OWN["baseline_order"] == 9
    assert LM_DEFAULTS["cell"] == "lstm"


def test_rnnkit_keras_after_plain_import_and_version(capsys):
    assert callable(rnnkit.keras.get_keras_weights)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "rnnkit 0.1.0"


def test_trace_is_the_supported_compile_path_and_generalises_over_shapes():
    lstm = rnnkit.LSTM(6, 16, num_layers=2).eval()
    traced = torch.jit.trace(lstm, (torch.randn(2, 5, 6),), check_trace=False)
    x = torch.randn(3, 9, 6)
    torch.testing.assert_close(traced(x)[0], lstm(x)[0])


def test_summary_prints_once_and_echoes_one_line():
    printed = []
    s = rnnkit.summary(rnnkit.LSTM(6, 16), (20, 6), print_fn=printed.append)
    assert printed == [s] and "(not called)" not in s and "lstm (LSTM)" in s
    assert repr(s) == "<rnnkit summary: 1 layer, 1,536 parameters>"
    assert str(s).count("Total params") == 1


def test_explain_ends_with_what_to_try_next(capsys):
    assert main(["explain", "gru"]) in (0, None)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("next: ") and "rnnkit train lm --cell gru" in last


@pytest.mark.parametrize("argv", [["train", "lm"], ["train", "classify"], ["explain"],
                                  ["train", "longrange"], ["inspect", "gradients"]])
def test_every_flag_has_help_and_its_default_zero_included(argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, argv
    assert "``" not in out and ":func:" not in out
    flat = re.sub(r"\s+", " ", out)
    assert re.search(r"--seed SEED [^-]*\(default: 0\)", flat), argv
    opts = out.split("options:")[1].splitlines()
    # every option has a help text: beside the flag, or on the next line when the flag is long
    for line, after in zip(opts, [*opts[1:], ""], strict=True):
        if re.match(r"^  (-\S+(?: \S+)?(?:, --\S+(?: \S+)?)?)$", line):
            assert re.match(r"^ {10,}\S", after), f"{argv}: {line!r} has no help"


class _Tty:
    """A terminal stand-in for stderr: the bar's writes, kept."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_the_bar_shows_at_the_first_step_names_its_unit_and_ends_at_100(monkeypatch):
    from rnnkit.train import Progress, TrainConfig

    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    cfg = TrainConfig(minutes=1.0)
    p = Progress(cfg, "train lm", "chars", 0, 0.0, True)
    p.update(1, 0.2)  # the first step draws at once
    assert re.search(r" 0%\|[^|]*\| train lm  step 1\b", tty.text), tty.text
    p.interval(20, 6.0, 1.25, 23_600.0)
    assert "23.6k chars/s" in tty.text and "loss 1.25" in tty.text
    p.close(40, 60.0, finished=True)  # the time budget ended
    last = tty.text.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("100%|") and last.endswith("elapsed 1:00"), last
    assert ", step" not in tty.text and "| ," not in tty.text  # no stray leading comma


def test_quiet_hides_the_bar_but_not_the_evaluations(monkeypatch, capsys):
    from rnnkit.train import Progress, TrainConfig

    p = Progress(TrainConfig(steps=10), "train lm", "chars", 0, 0.0, False)
    p.interval(5, 1.0, 2.0, 100.0)
    p.note("step 5: valid loss 2.0000")
    assert capsys.readouterr().err == "step 5: valid loss 2.0000\n"
