"""The README's numbers that are computed from others agree with them: steps × characters per
step = characters seen, passes over the data (epochs), parameter sums, differences, ratios
and speed-ups. Each is parsed out of the README's own text, so an edit that changes one side
fails here; the settings the arithmetic needs (batch, BPTT length, splits) are read from the
code's defaults or the acceptance scripts, and the data sizes from the shared data where it is
present (else the README's own figure)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.tasks import spec
from rnnkit.tasks.lm.cli import DEFAULTS as LM
from rnnkit.tasks.lm.cli import OWN as LM_OWN
from rnnkit.tasks.lm.cli import VALID_FRACTION

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
SHARED = Path(os.environ.get("RNNKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def num(s: str) -> float:
    return float(s.replace(",", ""))


def find(pattern: str, text: str = README) -> re.Match[str]:
    m = re.search(pattern, text, re.S)
    assert m, f"the README no longer says {pattern!r}"
    return m


def chars_per_step() -> int:
    """32 rows × 100 characters, as the README states them and as the LM's defaults are."""
    m = find(r"Truncated BPTT: (\d+) rows, each reading its own contiguous slice of the "
             r"corpus, (\d+)\s+characters per step")
    rows, seq = int(m[1]), int(m[2])
    assert (rows, seq) == (LM["batch_size"], LM_OWN["seq"])
    return rows * seq


def test_tiny_shakespeare_steps_characters_and_passes():
    per = chars_per_step()
    steps = num(find(r"\*\*rnnkit\*\*, the command above \(([\d,]+) steps")[1])
    minutes = num(find(r"tinyshakespeare\.txt --minutes (\d+)")[1])
    m = find(r"makes (\d+) steps a second \(([\d,]+) in the ten minutes of the\s+command above\) "
             r"of (\d+) × (\d+) characters, ([\d.]+) million characters a minute: ten minutes "
             r"are (\d+)\s+passes over the (\d) M training characters \(the float32 run of the "
             r"second row: ([\d,]+) steps, (\d+)\s+passes\)")
    assert num(m[2]) == steps and int(m[3]) * int(m[4]) == per and minutes == 10
    f = SHARED / "tinyshakespeare.txt"
    train = (len(f.read_text(encoding="utf-8")) * (1 - VALID_FRACTION) if f.is_file()
             else num(m[7]) * 1e6)                    # one file: its first 90% is training text
    assert round(train / 1e6) == int(m[7])
    assert round(steps / (minutes * 60)) == int(m[1])                      # steps a second
    assert round(steps * per / minutes / 1e6, 1) == float(m[5])            # characters a minute
    assert round(steps * per / train) == int(m[6])                         # passes
    fp32 = num(find(r"float32 \(`--dropout 0 --precision fp32`; ([\d,]+) steps")[1])
    assert num(m[8]) == fp32 and round(fp32 * per / train) == int(m[9])


def test_default_lm_epochs_of_the_capped_stdlib_text():
    m = find(r"about [\d,]+ steps \((\d+) epochs of the (\d) M\s+characters at ([\d,]+)\)")
    assert int(m[2]) * 1_000_000 == LM_OWN["max_chars"]
    assert round(num(m[3]) * chars_per_step() / LM_OWN["max_chars"]) == int(m[1])


def test_nsmc_steps_are_the_epochs_of_its_training_reviews():
    """ceil(36,000 training reviews / 64 per step) = 563 steps an epoch (batch from the
    acceptance script)."""
    script = (ROOT / "examples" / "classify_acceptance.sh").read_text()
    batch = int(find(r"nsmc_run\(\).*?--batch-size (\d+)", script)[1])
    reviews = num(find(r"few enough to learn from ([\d,]+) reviews")[1])
    per = math.ceil(reviews / batch)
    rows = re.findall(r"^\| \**(char|jamo|BPE)\**.*?\| ([\d,]+) \((\d+(?:\.\d)?)[;)]", README,
                      re.M)
    assert len(rows) == 3
    for name, steps, epochs in rows:
        assert round(num(steps) / per, 1) == pytest.approx(float(epochs), abs=0.05), name


def test_translation_steps_are_the_stated_epochs():
    m = find(r"so\s+each\s+run\s+made\s+([\d,]+)\s+\(fr\)\s+and\s+([\d,]+)\s+\(ko\)\s+steps\s+"
             r"of\s+(\d+)\s+×\s+(\d+)\s+pairs:\s+([\d.]+)\s+and\s+([\d.]+)\s+epochs\s+of\s+the\s+"
             r"([\d,]+)\s+and\s+([\d,]+)\s+training\s+pairs")
    tests = [num(t) for t in re.findall(r"en → (?:fr|ko) \(([\d,]+) pairs", README)]
    steps, ranks, batch = (num(m[1]), num(m[2])), int(m[3]), int(m[4])
    assert batch == spec("translate").defaults["batch_size"]
    trains = (num(m[7]), num(m[8]))
    for lang, test, train in zip(("fr", "ko"), tests, trains, strict=True):
        f = SHARED / "translation" / f"en-{lang}.tsv"
        if f.is_file():  # the split itself: 5% test, 5% validation, the rest training
            from rnnkit.tasks.translate.data import make_split, read_pairs
            split = make_split(read_pairs(f), test_fraction=0.05, valid_fraction=0.05, seed=0)
            assert (len(split.test[0]), len(split.train[0])) == (test, train)
        else:
            assert abs(train - 18 * test) <= 20    # test and validation 5% each of the pairs
    for s, train, epochs in zip(steps, trains, (m[5], m[6]), strict=True):
        assert round(s * ranks / math.ceil(train / batch), 1) == float(epochs)


def test_parameter_sums():
    m = find(r"— ([\d,]+) parameters in torch\.nn's convention \(`4 × \(6 \+ 64 \+ 2\) × 64 = "
             r"([\d,]+)`\s+plus (\d+)\), ([\d,]+) in Keras' \(`4 × \(6 \+ 64 \+ 1\) × 64 = "
             r"([\d,]+)` plus (\d+)\)")
    torch_total, lstm, head, keras_total, keras_lstm, head2 = map(num, m.groups())
    assert lstm == 4 * 72 * 64 and keras_lstm == 4 * 71 * 64 and head == head2 == 64 * 4 + 4
    assert torch_total == lstm + head and keras_total == keras_lstm + head
    model = torch.nn.Sequential(rnnkit.LSTM(6, 64), torch.nn.Linear(64, 4))  # 4 motions
    assert sum(p.numel() for p in model.parameters()) == torch_total
    m = find(r"Keras reports (\d+) \+ (\d+) \+ (\d+) = (\d+) for the same model: torch\.nn's "
             r"second bias vector adds\s+(\d+) \+ (\d+) parameters")
    a, b, c, keras, d1, d2 = map(int, m.groups())
    total = int(find(r"Total params: (\d+)")[1])
    assert a + b + c == keras and total - keras == d1 + d2


def test_differences_and_ratios():
    lstm, ngram = map(float, find(r"validation: ([\d.]+) bits/char.*?n-gram baseline \(order "
                                  r"9\): ([\d.]+) bits/char; the network is ([\d.]+)")
                      .groups()[:2])
    said = float(find(r"the network is ([\d.]+) bits/char below it")[1])
    assert round(ngram - lstm, 3) == said
    assert round(ngram - lstm, 2) == float(find(r"in 2 s, is ([\d.]+) bits/char\s+worse")[1])
    gru_steps = num(find(r"\| GRU 1×512 \| [\d,]+ parameters \| ([\d,]+) \|")[1])
    lstm_steps = num(find(r"\| \*\*LSTM 1×512\*\* \| [\d,]+ parameters \| ([\d,]+) \|")[1])
    fewer = int(find(r"The GRU makes (\d+)% fewer steps than the LSTM")[1])
    assert round(100 * (1 - gru_steps / lstm_steps)) == fewer
    rnn_mae = float(find(r"\| rnnkit RNN, 2×128 units[^|]*\| \*\*([\d.]+)\*\*")[1])
    var = float(find(r"\| VAR\(24\) over pm2.5[^|]*\| ([\d.]+) \|")[1])
    assert round(100 * (1 - rnn_mae / var), 1) == float(
        find(r"The best RNN \(.*?\) is ([\d.]+)% below the best")[1])
    batched = num(find(r"\| `--max-batch 256` \(default\) \| \*\*([\d,]+)\*\*")[1])
    single = num(find(r"\| `--max-batch 1` \| ([\d,]+) \|")[1])
    assert round(batched / single, 1) == float(find(r"Micro-batching gives ([\d.]+)× the")[1])


def test_kernel_speed_ups_are_the_ratios_of_their_times():
    """Each benchmark row's speed-up is peer time / rnnkit time (rates: rnnkit / peer), to
    the rounding of the printed times."""
    rows = re.findall(r"^\| (\w+) \| ([^\n]*?) \| ([\d.]+) (ms|chars/s) \| [^|\n]*?: ([\d.]+) "
                      r"\| \*\*([\d.]+)×\*\* \|", README, re.M)
    assert len(rows) >= 40
    for section, conf, ours, unit, peer, speed in rows:
        ratio = float(peer) / float(ours) if unit == "ms" else float(ours) / float(peer)
        assert ratio == pytest.approx(float(speed), abs=0.011 + 0.005 * float(speed)), (
            section, conf)
