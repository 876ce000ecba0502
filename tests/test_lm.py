"""Character language model: overfitting, sampling (greedy, stateful == full prefix), the
validation metric, the BPTT stream, the CLI (train / sample / eval / resume) and bad input."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from rnnkit.cli import main
from rnnkit.data import build_tokenizer
from rnnkit.data.text import is_generated, join_docs, split_by_file, spread_select, stdlib_corpus
from rnnkit.tasks.lm import (
    CharLM,
    LMData,
    LMTask,
    TokenStream,
    generate,
    load_data,
    load_run,
    native_bf16,
    read_split,
    resolve_precision,
)
from rnnkit.train import TrainConfig, train

TEXT = "the quick brown fox jumps over the lazy dog. " * 12


def make_data(text: str = TEXT, valid: str | None = None, kind: str = "char") -> LMData:
    tok = build_tokenizer(kind, [text])
    ids = torch.tensor(tok.encode(text))
    va = torch.tensor(tok.encode(valid)) if valid else ids[:100]
    return LMData(tok, ids, va, {"data": None, "valid_fraction": 0.1})


def test_tiny_lstm_overfits_a_short_string_to_near_zero_loss(tmp_path):
    task = LMTask(make_data(), {"cell": "lstm", "hidden": 64, "layers": 1, "embed": 16,
                                "dropout": 0.0, "tie": False}, batch=4, seq=32,
                  eval_rows=1)
    res = train(task, TrainConfig(out=str(tmp_path / "r"), steps=150, lr=1e-2, warmup=10,
                                  eval_every=150, log_every=10, progress=False))
    assert res.train_loss < 0.05
    # validation starts from a zero state, so its first characters cost a little
    assert res.metrics["loss"] < 0.1 and res.metrics["bpc"] == pytest.approx(
        res.metrics["loss"] / math.log(2))
    model, tok, _ = load_run(tmp_path / "r")
    out = "".join(generate(model, tok, prime="the quick", length=40, temperature=0))
    assert out == TEXT[: len(out)]  # it recites the string


@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1), ("rnn", 2)])
def test_stateful_sampling_equals_rerunning_the_prefix(cell, layers):
    tok = build_tokenizer("char", [TEXT])
    model = CharLM(tok.vocab_size, cell, hidden=24, layers=layers, embed=8).eval()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input id, next-token logits)

    def step(ids, state):
        logits, state = model.step(ids, state)
        seen.append((ids.clone(), logits.clone()))
        return logits, state

    text = "".join(generate(model, tok, prime="the ", length=30, temperature=1.0, seed=3,
                            step=step))
    ids = torch.cat([i for i, _ in seen])
    assert tok.decode(ids.tolist()) == text[:-1]  # every token was fed once, in order
    with torch.no_grad():
        full, _ = model(ids[None])  # re-run the whole prefix at once
    for t, (_, logits) in enumerate(seen):
        torch.testing.assert_close(logits[0], full[0, t], rtol=1e-5, atol=1e-5)


def test_temperature_zero_is_greedy_and_deterministic():
    tok = build_tokenizer("char", [TEXT])
    model = CharLM(tok.vocab_size, "gru", hidden=16, embed=8).eval()
    a = "".join(generate(model, tok, prime="th", length=25, temperature=0, seed=1))
    b = "".join(generate(model, tok, prime="th", length=25, temperature=0, seed=2))
    assert a == b
    ids = tok.encode("th")  # the argmax chain, recomputed from whole prefixes
    with torch.no_grad():
        for _ in range(25):
            lg = model(torch.tensor([ids]))[0][0, -1]
            lg[[0, 1]] = -math.inf
            ids.append(int(lg.argmax()))
    assert a == tok.decode(ids)
    c = "".join(generate(model, tok, prime="th", length=25, temperature=1.0, seed=1))
    d = "".join(generate(model, tok, prime="th", length=25, temperature=1.0, seed=1))
    assert c == d  # same seed, same text


def test_top_k_one_is_greedy_and_unknown_prime_maps_to_unk():
    tok = build_tokenizer("char", [TEXT])
    model = CharLM(tok.vocab_size, "lstm", hidden=16, embed=8).eval()
    g = "".join(generate(model, tok, prime="tZé", length=10, temperature=0))
    k = "".join(generate(model, tok, prime="tZé", length=10, temperature=2.0, top_k=1, seed=5))
    assert g == k and g.startswith("tZé")
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        next(generate(model, tok, temperature=-1))


def test_nll_is_cross_entropy_over_the_whole_text():
    tok = build_tokenizer("char", [TEXT])
    model = CharLM(tok.vocab_size, "lstm", hidden=16, embed=8).eval()
    ids = torch.tensor(tok.encode(TEXT[:203]))
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
        ref = float(nn.functional.cross_entropy(logits[0], ids[1:]))
        assert model.nll(ids, rows=1, chunk=37) == pytest.approx(ref, rel=1e-5)
        # 3 slices of 50 scored tokens; slices 1, 2 first read 52 unscored warm-up tokens,
        # slice 0 scores its first 52 + 50: each of the 202 predictions scored exactly once
        tot, scored = 0.0, 0
        for a, b, first in [(0, 102, 0), (50, 152, 52), (100, 202, 52)]:
            seg = ids[a: b + 1]
            lg, _ = model(seg[None, :-1])
            tot += float(nn.functional.cross_entropy(lg[0, first:], seg[1 + first:],
                                                     reduction="sum"))
            scored += len(seg) - 1 - first
        assert scored == 202
        assert model.nll(ids, rows=3, chunk=10, warmup=52) == pytest.approx(tot / 202, rel=1e-5)


def test_stream_rows_are_contiguous_and_ranks_split_them():
    ids = torch.arange(1000)
    s = TokenStream(ids, rows=4, seq=10)
    b1, b2 = next(s), next(s)
    assert b1["x"].shape == (4, 11) and bool(b1["reset"]) and not bool(b2["reset"])
    assert b1["x"][:, 0].tolist() == [0, 249, 498, 747]  # each row its own slice
    assert torch.equal(b2["x"][:, 0], b1["x"][:, -1])  # continues where it stopped
    halves = [TokenStream(ids, 4, 10, rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat([next(h)["x"] for h in halves]), b1["x"])
    for _ in range(30):
        b = next(s)
    assert bool(b["reset"]) or s.epoch >= 1
    with pytest.raises(ValueError, match="divisible"):
        TokenStream(ids, 4, 10, 0, 3)


def test_jamo_language_model_data_round_trips_korean(tmp_path):
    text = "한국어 문장을 자모로 나누어 학습합니다. 한글은 다시 합쳐집니다.\n" * 40
    f = tmp_path / "ko.txt"
    f.write_text(text, encoding="utf-8")
    d = load_data({"data": str(f), "valid_fraction": 0.1}, "jamo")
    assert d.tokenizer.decode(d.train.tolist()) + d.tokenizer.decode(d.valid.tolist()) == text
    assert "ᄒ" in d.tokenizer.stoi and "한" not in d.tokenizer.stoi  # conjoining jamo


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_cli_train_sample_eval_resume(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("def f(x):\n    return x + 1\n\n" * 60)
    run = tmp_path / "run"
    base = ["train", "lm", "--data", f, "--hidden", 16, "--embed", 8, "--batch-size", 4,
            "--seq", 16, "--eval-every", 5, "--quiet", "--sample-length", 20, "--out", run]
    assert cli(*base, "--steps", 10, "--baseline-order", 3) == 0
    out = capsys.readouterr().out
    assert "bits/char" in out and "n-gram baseline (order 3)" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["hidden"] == 16 and cfg["tokenizer"]["kind"] == "char"
    assert cli("train", "lm", "--resume", run, "--steps", 15, "--quiet",
               "--sample-length", 0) == 0
    assert json.loads((run / "last/trainer.json").read_text())["step"] == 15
    # resuming with a different model shape is refused before anything is touched
    assert cli("train", "lm", "--resume", run, "--hidden", 32, "--steps", 20) == 2
    assert "--hidden 32 conflicts with the run being resumed (hidden = 16)" in \
        capsys.readouterr().err
    saved = cfg["precision"]  # --precision auto, resolved when the run started
    assert saved == resolve_precision("auto")
    other = "fp32" if saved == "bf16" else "bf16"
    assert cli("train", "lm", "--resume", run, "--precision", other, "--steps", 20) == 2
    assert f"--precision {other} conflicts with the run being resumed (precision = {saved})" in \
        capsys.readouterr().err
    capsys.readouterr()
    assert cli("sample", run, "--prime", "def ", "--length", 30, "--temperature", 0) == 0
    s1 = capsys.readouterr().out
    assert cli("sample", run, "--prime", "def ", "--length", 30, "--temperature", 0) == 0
    assert capsys.readouterr().out == s1 and s1.startswith("def ") and len(s1) == 4 + 30 + 1
    assert cli("eval", run, "--data", f) == 0
    line = capsys.readouterr().out
    model, tok, _ = load_run(run)
    ids = torch.tensor(tok.encode(f.read_text()))
    assert f"{model.nll(ids, rows=16) / math.log(2):.4f} bits/char" in line


def test_cli_ngram_run_folder_samples_and_evaluates(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("abcabcabd" * 50)
    run = tmp_path / "ng"
    assert cli("train", "lm", "--data", f, "--cell", "ngram", "--order", 3, "--out", run) == 0
    assert "order 3" in capsys.readouterr().out
    assert (run / "best/model.safetensors").is_file()
    assert cli("sample", run, "--prime", "ab", "--length", 12, "--temperature", 0) == 0
    assert capsys.readouterr().out.startswith("abcabcab")
    assert cli("eval", run, "--data", f) == 0
    assert "bits/char" in capsys.readouterr().out


@pytest.mark.parametrize("content,expected", [
    (None, "no such file"),
    (b"", "is empty"),
    (b"ok text\x00\x01binary", "NUL byte.*byte offset 7"),
    (b"caf\xe9 au lait", r"invalid byte 0xe9 at byte offset 3"),
    (b"x" * 300, "has 270 tokens; one batch of 32 rows"),
])
def test_bad_corpus_gives_clear_error(tmp_path, capsys, content, expected):
    f = tmp_path / "c.txt"
    if content is not None:
        f.write_bytes(content)
    assert cli("train", "lm", "--data", f, "--steps", 1, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "rnnkit: error:" in err
    assert re.search(expected, err), err
    if content is not None and len(content) < 100:
        assert str(f) in err  # names the file


def test_sample_refuses_pickle_and_unknown_run(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    torch.save({"w": torch.ones(2)}, d / "model.pt")
    (d / "config.json").write_text(json.dumps({"task": "lm"}))
    assert cli("sample", d) == 2
    assert "never unpickles" in capsys.readouterr().err
    assert cli("eval", tmp_path / "nope", "--data", d / "config.json") == 2
    assert "no such" in capsys.readouterr().err


def test_spread_select_fits_the_cap_and_covers_the_list():
    docs = [(f"f{i:02d}", "x" * (10 + i)) for i in range(40)]
    got = spread_select(docs, 200)
    assert sum(len(t) for _, t in got) <= 200 and len(got) >= 5
    assert got == sorted(got)  # original order kept
    assert {n[1] for n, _ in got} >= {"0", "1", "2", "3"}  # from all over, not just the start
    assert spread_select(docs, 200) == got and spread_select(docs, 10**6) == docs
    assert spread_select(docs, 5) == [] and spread_select([], 100) == []


def test_generated_files_and_charmap_tables_are_not_code():
    assert is_generated('""" Python Character Mapping Codec cp037 generated from \'X.TXT\'\n')
    assert is_generated('""" Python Character Mapping Codec for CP1125\n\n"""#"\nimport codecs\n')
    assert is_generated("# Auto-generated by Tools/scripts/generate_token.py\n")
    assert is_generated("# This file is generated by mkstringprep.py. DO NOT EDIT.\n")
    assert is_generated("#! /usr/bin/env python3\n\n# Autogenerated by Sphinx on Mon Dec 4\n")
    assert not is_generated('"""Generic Python Character Mapping Codec."""\nimport codecs\n')
    assert not is_generated('"""Tools."""\n\n\ndef f():\n    pass\n# generated from a table\n')
    docs = dict(stdlib_corpus())
    assert "os.py" in docs and "encodings/utf_8.py" in docs and "locale.py" in docs
    assert not any(is_generated(t) for t in docs.values())
    assert not {"encodings/cp1252.py", "encodings/cp1125.py", "pydoc_data/topics.py",
                "token.py"} & set(docs)


def test_stdlib_split_holds_out_whole_files_and_caps_the_training_text():
    docs = stdlib_corpus()
    tr, va = split_by_file(docs, 0.1, seed=0)
    train, valid = read_split({"data": None, "max_chars": 300_000, "valid_fraction": 0.1})
    assert valid == join_docs(va)  # every held-out file, whatever the cap
    assert 250_000 < len(train) <= 300_000
    held_out = {t for _, t in va}
    picked = [t for _, t in tr if t in train]
    assert len(picked) >= 10 and not held_out & set(picked)
    with pytest.raises(ValueError, match="too small"):
        read_split({"data": None, "max_chars": 10, "valid_fraction": 0.1})


def test_bf16_training_keeps_float32_weights_and_a_float32_evaluation(tmp_path):
    cfg = {"cell": "lstm", "hidden": 32, "layers": 1, "embed": 16, "dropout": 0.0, "tie": False}
    task = LMTask(make_data(), cfg, batch=4, seq=16, eval_rows=1, precision="bf16")
    res = train(task, TrainConfig(out=str(tmp_path / "r"), steps=60, lr=1e-2, warmup=5,
                                  eval_every=60, log_every=10, progress=False))
    assert res.train_loss < 1.5  # it learns (ln 28 = 3.3 at the start)
    model, _, config = load_run(tmp_path / "r")
    assert config["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert res.metrics["loss"] == pytest.approx(model.nll(task.data.valid, rows=1), rel=1e-6)
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16() else "fp32")
    with pytest.raises(ValueError, match="precision must be"):
        LMTask(make_data(), cfg, precision="fp16")
