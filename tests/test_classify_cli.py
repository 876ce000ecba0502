"""`rnnkit train classify` / `predict` / `eval` end to end on tiny files, and every bad input
the issue lists: missing column, empty texts, unseen label, single class, non-UTF-8 bytes,
multi-line quoted CSV fields."""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.tasks import classify

POS = ["great", "good", "lovely", "fun"]
NEG = ["bad", "awful", "boring", "poor"]
FILL = "the movie was really quite a story with actors".split()
TINY = ["--epochs", "1", "--hidden", "8", "--embed", "8", "--quiet", "--batch-size", "16"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rows(n: int, seed: int = 0, p_pos: float = 0.5) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.random() < p_pos
        w = [rng.choice(FILL) for _ in range(rng.randint(2, 6))]
        w.insert(rng.randrange(len(w) + 1), rng.choice(POS if y else NEG))
        out.append(("pos" if y else "neg", " ".join(w)))
    return out


def write_csv(path: Path, data: list[tuple[str, str]], header=("label", "text")) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(data)
    path.write_text("\ufeff" + buf.getvalue(), encoding="utf-8")  # with a BOM
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny run on a CSV with multi-line quoted texts and empty texts."""
    d = tmp_path_factory.mktemp("clf")
    data = rows(120)
    data = [(y, t.replace(" ", "\n", 1) if i % 5 == 0 else t) for i, (y, t) in enumerate(data)]
    data += [("pos", ""), ("neg", "   ")]  # two empty texts: skipped and counted
    path = write_csv(d / "train.csv", data)
    rc = main(["train", "classify", "--data", str(path), "--out", str(d / "run"),
               "--test-fraction", "0.2", "--split-seed", "3", *TINY])
    assert rc == 0
    return {"dir": d, "run": d / "run", "data": data, "path": path}


def test_multiline_csv_and_empty_texts_are_counted(trained) -> None:
    cfg = json.loads((trained["run"] / "config.json").read_text())
    n_text = sum(1 for _, t in trained["data"] if t.strip())
    assert sum(cfg["data"]["train"].values()) + cfg["data"]["valid"] + cfg["data"]["test"] \
        == n_text == 120
    assert cfg["data"]["skipped_empty"] == {"train": 2}
    report = json.loads((trained["run"] / "metrics.json").read_text())
    assert report["skipped_empty"] == {"train": 2}
    assert report["test"]["n"] == cfg["data"]["test"] == 24
    # the recorded split: disjoint, stratified, reproducible from --split-seed
    split = json.loads((trained["run"] / "split.json").read_text())
    assert not set(split["test_rows"]) & set(split["valid_rows"])
    labels = [y for y, t in trained["data"] if t.strip()]
    test_pos = sum(labels[i] == "pos" for i in split["test_rows"])
    assert test_pos == round(0.2 * labels.count("pos"))
    # a multi-line text was read whole (its newline kept) and scored like any other
    clf = classify.load(trained["run"])
    multi = trained["data"][0][1]
    assert "\n" in multi
    for f in ("confusion_valid.png", "confusion_test.png", "loss.png"):
        assert (trained["run"] / f).stat().st_size > 1000
    assert clf.predict_proba([multi]).shape == (1, 2)


def test_predict_text_file_stdin_agree_with_api(trained, capsys, monkeypatch) -> None:
    clf = classify.load(trained["run"])
    texts = ["the movie was great", "awful story", "한국어 텍스트"]
    want = clf.predict_proba(texts)
    rc, out, _ = run(["predict", str(trained["run"]), texts[0]], capsys)
    assert rc == 0
    label, probs = out.strip().split("\t")
    got = [float(kv.split("=")[1]) for kv in probs.split()]
    np.testing.assert_allclose(got, want[0], atol=1e-4)
    assert label == clf.labels[int(clf.decide(want[:1])[0])]
    f = trained["dir"] / "texts.txt"
    f.write_text("\n".join(texts) + "\n")
    rc, out, _ = run(["predict", str(trained["run"]), "--file", str(f)], capsys)
    lines = out.strip().split("\n")
    assert len(lines) == 3
    got = [[float(kv.split("=")[1]) for kv in ln.split("\t")[1].split()] for ln in lines]
    np.testing.assert_allclose(got, want, atol=1e-4)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    rc, out2, _ = run(["predict", str(trained["run"]), "-"], capsys)
    assert out2 == out


def test_predict_stream_stdin_and_file(trained, capsys, monkeypatch) -> None:
    clf = classify.load(trained["run"])
    lines = ["the movie was\n", "really great\n", "but boring\n"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(lines)))
    rc, out, _ = run(["predict", str(trained["run"]), "--stream"], capsys)
    assert rc == 0
    got = [[float(kv.split("=")[1]) for kv in ln.split("\t")[2].split()]
           for ln in out.strip().split("\n")]
    want = [clf.predict_proba(["".join(lines[:k + 1])])[0] for k in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-4)
    f = trained["dir"] / "call.txt"
    f.write_text("".join(lines))
    rc, out, _ = run(["predict", str(trained["run"]), "--stream", "--file", str(f),
                      "--chunk-chars", "7"], capsys)
    outs = out.strip().split("\n")
    assert len(outs) == -(-len("".join(lines)) // 7)
    last = [float(kv.split("=")[1]) for kv in outs[-1].split("\t")[2].split()]
    np.testing.assert_allclose(last, want[-1], atol=1e-4)


def test_eval_matches_independent_count(trained, capsys) -> None:
    test = trained["dir"] / "eval.csv"
    data = [*rows(40, seed=9), ("neg", " ")]
    write_csv(test, data)
    rc, out, _ = run(["eval", str(trained["run"]), "--data", str(test)], capsys)
    assert rc == 0
    m = json.loads((trained["run"] / "eval_eval.json").read_text())
    clf = classify.load(trained["run"])
    texts, labels = [t for _, t in data if t.strip()], [y for y, t in data if t.strip()]
    pred = clf.predict(texts)
    assert m["accuracy"] == pytest.approx(np.mean([p == y for p, y in zip(pred, labels,
                                                                         strict=True)]))
    assert m["skipped_empty"] == 1 and m["n"] == 40
    assert "1 empty text(s) skipped" in out and "accuracy" in out


def test_eval_unseen_label_is_named(trained, capsys) -> None:
    bad = write_csv(trained["dir"] / "unseen.csv", [*rows(5), ("neutral", "so so")])
    rc, _, err = run(["eval", str(trained["run"]), "--data", str(bad)], capsys)
    assert rc == 2 and "'neutral'" in err and "never seen in training" in err


def test_missing_column_lists_columns(trained, capsys, tmp_path) -> None:
    rc, _, err = run(["train", "classify", "--data", str(trained["path"]), "--out",
                      str(tmp_path / "r"), "--text-column", "review", *TINY], capsys)
    assert rc == 2 and "'review'" in err and "'label', 'text'" in err


def test_single_class_training_set(capsys, tmp_path) -> None:
    p = write_csv(tmp_path / "one.csv", [("pos", t) for _, t in rows(20)])
    rc, _, err = run(["train", "classify", "--data", str(p), "--out", str(tmp_path / "r"),
                      *TINY], capsys)
    assert rc == 2 and "single class" in err and "'pos'" in err


def test_non_utf8_file_names_file_and_offset(capsys, tmp_path) -> None:
    p = tmp_path / "latin1.tsv"
    good = b"pos\tgreat movie\nneg\tbad movie\n"
    p.write_bytes(good + "pos\tcaf\u00e9 ok\n".encode("latin-1"))
    rc, _, err = run(["train", "classify", "--data", str(p), "--out", str(tmp_path / "r"),
                      *TINY], capsys)
    offset = len(good) + len("pos\tcaf")
    assert rc == 2 and "latin1.tsv" in err and f"byte offset {offset}" in err


def test_stream_file_non_utf8_offset(trained, capsys, tmp_path) -> None:
    p = tmp_path / "call.txt"
    p.write_bytes(b"a" * 20 + b"\xff rest")
    rc, _, err = run(["predict", str(trained["run"]), "--stream", "--file", str(p),
                      "--chunk-chars", "8"], capsys)
    assert rc == 2 and "byte offset 20" in err


def test_bidirectional_run_refuses_stream_clearly(capsys, tmp_path) -> None:
    p = write_csv(tmp_path / "d.csv", rows(40))
    out = tmp_path / "bi"
    assert main(["train", "classify", "--data", str(p), "--out", str(out), "--bidirectional",
                 "--pool", "mean", *TINY]) == 0
    capsys.readouterr()
    rc, _, err = run(["predict", str(out), "great", "--stream"], capsys)
    assert rc == 2 and "unidirectional" in err
    rc, out_, _ = run(["predict", str(out), "great movie"], capsys)  # one-shot works
    assert rc == 0 and out_.split("\t")[0] in ("neg", "pos")


def test_class_weights_on_when_majority_over_80_percent(capsys, tmp_path) -> None:
    p = write_csv(tmp_path / "imb.csv", rows(60, p_pos=0.1, seed=2))
    out = tmp_path / "imb"
    assert main(["train", "classify", "--data", str(p), "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    n = cfg["data"]["train"]
    total = sum(n.values())
    assert cfg["class_weights"] == pytest.approx([total / (2 * n["neg"]), total / (2 * n["pos"])])
    dec = json.loads((out / "decision.json").read_text())
    assert dec["positive"] == "pos"  # the minority class


def test_resume_continues_with_the_runs_vocabulary(capsys, tmp_path) -> None:
    p = write_csv(tmp_path / "d.csv", rows(48))
    out = tmp_path / "r"
    args = ["train", "classify", "--data", str(p), "--out", str(out), "--tokenizer", "bpe",
            "--vocab-size", "300", *TINY]
    assert main(args) == 0
    first = json.loads((out / "last" / "trainer.json").read_text())["step"]
    tok1 = json.loads((out / "config.json").read_text())["tokenizer"]
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert json.loads((out / "last" / "trainer.json").read_text())["step"] == 2 * first
    assert json.loads((out / "config.json").read_text())["tokenizer"] == tok1
    rc, _, err = run(args, capsys)  # a second run into the same folder is refused
    assert rc == 2 and "already holds a run" in err
