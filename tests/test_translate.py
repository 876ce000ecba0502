"""The translation task: pairs from files, the built-in corpus, metrics against sacrebleu,
the baselines, and a tiny run end to end (train, eval, load, translate)."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch

import rnnkit
from rnnkit.cli import main
from rnnkit.tasks.translate import (
    Retrieval,
    make_split,
    number_words,
    read_pairs,
    scores,
    synthetic_pairs,
)


def test_scores_equal_sacrebleu():
    hyps = ["the cat sat on the mat", "a dog barked", "hello there world"]
    refs = ["the cat sat on a mat", "the dog barked loudly", "hello world"]
    m = scores(hyps, refs)
    assert m["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert m["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert "tok:13a" in m["bleu_signature"]
    ko_h, ko_r = ["파일을 저장합니다", "열기"], ["파일 저장", "파일 열기"]
    k = scores(ko_h, ko_r, "ko")
    assert k["bleu"] == sacrebleu.corpus_bleu(ko_h, [ko_r], tokenize="char").score
    assert "tok:char" in k["bleu_signature"]
    assert scores(refs, refs)["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        scores(hyps[:2], refs)


def test_read_pairs_header_quotes_and_skips(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text('en\tko\tdomain\nOpen file\t파일 열기\tgtk\n"Say ""hi"""\t"""안녕"""\tx\n'
                 'only one column\n\t빈 원문\tx\nSave\t저장\tgtk\n', encoding="utf-8")
    d = read_pairs(p)
    assert d.src == ["Open file", 'Say "hi"', "Save"]
    assert d.tgt == ["파일 열기", '"안녕"', "저장"]
    assert d.skipped == {"one_column": 1, "empty": 1}
    assert d.columns == ("en", "ko")
    assert read_pairs(p, "ko", "en").src[0] == "파일 열기"
    with pytest.raises(ValueError, match="column 'de' not found"):
        read_pairs(p, target_column="de")
    one = tmp_path / "one.tsv"
    one.write_text("a\nb\n")
    with pytest.raises(ValueError, match="found one column"):
        read_pairs(one)


def test_number_words_and_split():
    assert number_words(40512) == "forty thousand five hundred twelve"
    assert number_words(7) == "seven" and number_words(100) == "one hundred"
    assert number_words(2_000_021) == "two million twenty-one"
    p = synthetic_pairs(400, 0)
    assert len(set(p.src)) == 400
    sp = make_split(p, test_fraction=0.05, valid_fraction=0.05, seed=0)
    assert len(sp.test[0]) == 20 and len(sp.valid[0]) == 20 and len(sp.train[0]) == 360
    assert not set(sp.test[0]) & set(sp.train[0])
    assert make_split(p, seed=0).record["test_rows"] == sp.record["test_rows"]


def test_retrieval_returns_the_nearest_training_target():
    r = Retrieval(["open the file", "close the window", "save all"], ["A", "B", "C"])
    assert r(["close this window", "save all now"]) == ["B", "C"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tr") / "run"
    rc = main(["train", "translate", "--out", str(out), "--steps", "12", "--eval-every", "6",
               "--hidden", "16", "--embed", "8", "--synthetic-size", "300",
               "--eval-sentences", "10", "--beam", "2", "--max-ratio", "1.5", "--max-extra",
               "4", "--quiet"])
    assert rc == 0
    return out


def test_tiny_run_train_eval_load_translate(tiny_run, capsys, tmp_path):
    out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    assert {"copy", "retrieval", "rnnkit greedy", "rnnkit beam 2"} <= set(m["systems"])
    assert (out / "split.json").is_file() and (out / "best" / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "translate" and cfg["train"]["best_metric"] == "chrf"
    capsys.readouterr()
    assert main(["eval", str(out), "--beam", "2"]) == 0
    assert "rnnkit beam 2" in capsys.readouterr().out
    tr = rnnkit.load(out)
    got = tr.translate(["40,512", "7"], beam=2)
    assert len(got) == 2 and all(isinstance(t, str) for t in got)
    assert tr.translate(["7"], beam=1) == tr.translate(["7"], beam=1, n_best=1)
    nb = tr.translate(["12"], beam=3, n_best=3)[0]
    assert len(nb) == 3
    assert len(tr.translate(["ünknöwn ☃ 12"], beam=2)) == 1    # <unk>, never a crash
    with pytest.raises(ValueError, match="is empty"):
        tr.translate(["  "])
    assert main(["translate", str(out), "123", "--beam", "2", "--n-best", "2"]) == 0
    assert len(capsys.readouterr().out.strip().split("\t")) == 2
    pairs = tmp_path / "held.tsv"
    pairs.write_text("12\ttwelve\n30\tthirty\n", encoding="utf-8")
    assert main(["eval", str(out), "--data", str(pairs), "--beam", "1"]) == 0
    assert "held: 2 pairs" in capsys.readouterr().out


def test_other_task_run_is_refused(tmp_path):
    run = tmp_path / "clf"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text(json.dumps({"task": "classify"}))
    (run / "best" / "model.safetensors").write_bytes(b"")
    from rnnkit.tasks.translate import load
    with pytest.raises(ValueError, match="not a translation model"):
        load(run)


def test_nearest_never_matches_a_training_pair_with_itself_but_does_with_a_copy():
    src = ["open the file", "open the file", "close the window", "save all files"]
    r = Retrieval(src, ["A", "A2", "B", "C"])
    idx, sim = r.nearest(src, exclude_self=True, chunk=3)   # chunks: the offset is kept
    assert list(idx[:2]) == [1, 0]                          # the other copy, cosine 1
    assert sim[0] == pytest.approx(1.0) and sim[2] < 1.0
    assert all(i != k for k, i in enumerate(idx))
    assert list(r.nearest(src)[0][2:]) == [2, 3]            # without: each its own


def test_memory_matches_and_its_threshold():
    from rnnkit.tasks.translate.memory import Memory
    m = Memory(["open the file", "open the files", "close the window"],
               ["ouvrir", "ouvrir tout", "fermer"], min_sim=0.5)
    assert m.matches(["open a file", "zzzz qqqq"]) == ["ouvrir", ""]   # cosine 0.33: none
    assert m.matches(m.src, training=True) == ["ouvrir tout", "ouvrir", ""]
    with pytest.raises(ValueError, match="memory's own sources"):
        m.matches(["open the file"], training=True)
    with pytest.raises(ValueError, match="one target per source"):
        Memory(["a"], [])


def test_memory_bands_name_the_similarity_of_each_match():
    """Separator 0: no match; k: the k-th band of the source's cosine from min_sim up."""
    from rnnkit.tasks.translate.memory import Memory, with_match
    src = ["open the file", "open the files", "close the window", "save all files"]
    m = Memory(src, ["A", "B", "C", "D"], min_sim=0.3, bands=[0.6, 0.9])
    assert m.n_sep == 4 and Memory(src, list("ABCD")).n_sep == 1
    texts = ["open the file", "open a file now", "zzzz qqqq"]
    idx, sim = m.retrieval.nearest(texts)
    want = [0 if s < 0.3 else 1 + sum(s >= e for e in (0.6, 0.9)) for s in sim]
    matches, seps = m.lookup(texts)
    assert seps == want and seps[0] == 3 and seps[2] == 0   # identical: top band; none: 0
    assert matches == [m.tgt[i] if s >= 0.3 else "" for i, s in zip(idx, sim, strict=True)]
    assert Memory(src, list("ABCD"), min_sim=0.3).lookup(texts)[1] == [0, 0, 0]
    assert with_match([5, 6], [0, 2], 10, 3, 4) == [5, 6, 13, 14, 16]
    with pytest.raises(ValueError, match="separator 4 out of range"):
        with_match([5], [1], 10, 4, 4)
    for bad in ([0.9, 0.6], [0.2], [0.6, 1.5]):
        with pytest.raises(ValueError, match="increasing edges above min_sim"):
            Memory(src, list("ABCD"), min_sim=0.3, bands=bad)


def test_a_fuzzy_run_reads_each_source_with_its_match_and_loads_without_the_data(
        tmp_path, capsys):
    from rnnkit.tasks.translate.memory import FILE, Memory
    rows = [f"open file {i}\touvrir le fichier {i}" for i in range(40)]
    rows += [f"close window {i}\tfermer la fenêtre {i}" for i in range(40)]
    data = tmp_path / "p.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "translate", "--data", str(data), "--fuzzy", "--out", str(out),
                 "--steps", "6", "--eval-every", "3", "--hidden", "16", "--embed", "8",
                 "--eval-sentences", "5", "--beam", "2", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    s = cfg["settings"]
    assert s["fuzzy"] and len(s["memory_sha256"]) == 64
    mem = Memory.load(out / "best", s["memory_sha256"], s["fuzzy_min"], s["fuzzy_bands"])
    split = json.loads((out / "split.json").read_text())
    assert len(mem.src) == len(rows) - len(split["test_rows"]) - len(split["valid_rows"])
    assert main(["eval", str(out), "--beam", "1"]) == 0
    with_cand = json.loads((out / "eval_test.json").read_text())["rnnkit greedy"]
    assert main(["eval", str(out), "--beam", "1", "--no-match-candidate"]) == 0
    alone = json.loads((out / "eval_test.json").read_text())["rnnkit greedy"]
    from rnnkit.tasks.translate.task import load_split
    tr0 = rnnkit.load(out)
    test_src, test_ref = load_split(tr0.config["settings"]).test
    for cand, got in ((True, with_cand), (False, alone)):
        want = tr0.evaluate(test_src, test_ref, beam=1, match_candidate=cand)
        assert got["chrf"] == pytest.approx(want["chrf"])
    data.unlink()                                     # the memory travels with the run
    tr = rnnkit.load(out)
    sep = tr.src_tok.vocab_size
    nt = tr.tgt_tok.vocab_size                        # 7 separators, then the target pieces
    assert s["fuzzy_bands"] == [0.6, 0.7, 0.8, 0.9, 0.95] and mem.n_sep == 7
    assert cfg["model"]["src_vocab"] == sep + 7 + nt
    assert cfg["model"]["copy_offset"] == sep + 7     # --copy: on with --fuzzy
    text = "open file 7"
    (match,), (k,) = mem.lookup([text])
    assert match.startswith("ouvrir le fichier") and k >= 1
    assert tr.encode([text])[0] == [*tr.src_tok.encode(text), sep + k,
                                    *(sep + 7 + t for t in tr.tgt_tok.encode(match))]
    assert len(tr.translate([text, "close window 3"], beam=2)) == 2
    _, src_pieces, w = tr.attention(text)
    assert "".join(src_pieces) == text + "‖" + match and w.shape[1] == len(src_pieces)
    capsys.readouterr()
    (out / FILE).write_text((out / FILE).read_text().replace("ouvrir", "OUVRIR", 1))
    with pytest.raises(ValueError, match="not the memory this model was trained with"):
        rnnkit.load(out)
    (out / FILE).unlink()
    with pytest.raises(ValueError, match=r"no memory\.jsonl"):
        rnnkit.load(out)


@pytest.mark.parametrize(("value", "says"), [("0.9,0.6", "increasing"), ("0.5,x", "comma"),
                                             ("0.6,1.5", "(0, 1]")])
def test_bad_fuzzy_bands_are_exit_2_naming_the_flag(value, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "translate", "--fuzzy", f"--fuzzy-bands={value}", "--out",
              str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--fuzzy-bands" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_bands_at_or_below_fuzzy_min_are_refused_before_training(tmp_path, capsys):
    assert main(["train", "translate", "--fuzzy", "--fuzzy-min", "0.7", "--fuzzy-bands",
                 "0.6,0.8", "--steps", "1", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert ("similarity bands must be increasing edges above min_sim (0.7) and at most 1, "
            "got [0.6, 0.8]") in capsys.readouterr().err
    assert not (tmp_path / "r" / "last").exists()


def test_copy_source_reads_the_source_in_target_pieces_and_copies_from_both(tmp_path):
    rows = [f"--opt-{i} file\t--opt-{i} fichier" for i in range(30)]
    data = tmp_path / "p.tsv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "translate", "--data", str(data), "--fuzzy", "--copy-source",
                 "--out", str(out), "--steps", "3", "--eval-every", "3", "--hidden", "16",
                 "--embed", "8", "--eval-sentences", "4", "--beam", "2", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    tr = rnnkit.load(out)
    V, n_sep = tr.tgt_tok.vocab_size, tr.memory.n_sep
    assert cfg["src_tokenizer"] == cfg["tgt_tokenizer"]
    assert cfg["model"]["copy_below"] == V and cfg["model"]["copy_offset"] == V + n_sep
    assert cfg["model"]["src_vocab"] == V + n_sep + V
    text = "--opt-7 file"
    (match,), (k,) = tr.memory.lookup([text])
    ids = tr.encode([text])[0]
    assert ids == [*tr.tgt_tok.encode(text), V + k, *(V + n_sep + t for t in
                                                      tr.tgt_tok.encode(match))]
    copy = tr.model.copy_ids(torch.tensor([ids]))[0].tolist()   # both parts copyable,
    src_ids = tr.tgt_tok.encode(text)                             # all but <unk> ("l")
    assert 1 in src_ids
    assert copy == [*(-1 if i == 1 else i for i in src_ids), -1, *tr.tgt_tok.encode(match)]
    assert main(["train", "translate", "--copy-source", "--attention", "none", "--out",
                 str(tmp_path / "r2"), "--steps", "1", "--quiet"]) == 2
