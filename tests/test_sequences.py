"""Sequences of vectors and frames: ragged batches, streaming, normalisation, NaN, readers
against sktime, the per-frame CNN, the built-in motion set, and a tiny run end to end."""

import io
import json
import sys

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.cli import main
from rnnkit.tasks.classify.model import POOLS
from rnnkit.tasks.sequences import (
    FrameCNN,
    SequenceClassifier,
    SequenceModel,
    Sequences,
    SequenceTask,
    feature_stats,
    fill_missing,
    make_split,
    read_file,
    read_long_csv,
    read_npz,
    read_ts,
    windows,
)
from rnnkit.tasks.sequences.video import DIRECTIONS, moving_digits

sktime = pytest.importorskip("sktime")
from sktime.datasets import load_basic_motions, load_japanese_vowels  # noqa: E402


def _model(cell="gru", pool="last", bidirectional=False, layers=1, step=(6,), seed=0):
    torch.manual_seed(seed)
    m = SequenceClassifier(step, 4, cell=cell, hidden=8, layers=layers,
                           bidirectional=bidirectional, pool=pool, dropout=0.0, embed=8)
    m.set_normalisation(torch.randn(step[-1]), torch.rand(step[-1]) + 0.5)
    return m.eval()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_ragged_batch_rows_ignore_batch_mates_and_padding(cell, pool, bidirectional):
    m = _model(cell, pool, bidirectional, layers=2)
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 1, 12, 4, 12, 9])
    seqs = [torch.randn(int(n), 6, generator=g) for n in lengths]
    x = 1e3 * torch.randn(6, 12, 6, generator=g)      # padding: huge garbage, not zeros
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
    with torch.no_grad():
        batch = m(x, lengths)
        alone = torch.cat([m(s[None], torch.tensor([len(s)])) for s in seqs])
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        permuted = m(x[perm], lengths[perm])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted, batch[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("pool", POOLS)
def test_streaming_equals_one_shot_prediction_of_every_prefix(cell, pool):
    sm = SequenceModel(_model(cell, pool, layers=2), ["a", "b", "c", "d"])
    x = np.random.default_rng(0).normal(size=(15, 6)).astype(np.float32)
    s1, s2 = sm.stream(), sm.stream()
    chunks = [1, 3, 2, 5, 4]                                  # a second session, in chunks
    ends = np.cumsum(chunks)
    for t in range(len(x)):
        p = s1.feed(x[t])                                     # one measurement vector
        ref = sm.predict_proba([x[:t + 1]])[0]
        np.testing.assert_allclose(list(p.values()), ref, atol=1e-5)
    for a, b in zip([0, *ends[:-1]], ends, strict=True):
        p = s2.feed(x[a:b])
        np.testing.assert_allclose(list(p.values()), sm.predict_proba([x[:b]])[0], atol=1e-5)


def test_streaming_refuses_a_bidirectional_model():
    with pytest.raises(ValueError, match="unidirectional"):
        SequenceModel(_model(bidirectional=True), list("abcd")).stream()


def _npz(path, X, y, lengths=None):
    np.savez(path, X=X, y=np.array(y), **({} if lengths is None else {"lengths": lengths}))
    return str(path)


def test_normalisation_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 10, 3)).astype(np.float32) * [1, 5, 0.1] + [0, 3, -2]
    y = np.arange(100) % 2
    s0 = make_split(_npz(tmp_path / "a.npz", X, y), valid_fraction=0.2, test_fraction=0.2)
    X2 = X.copy()
    rows = s0.record["test_rows"] + s0.record["valid_rows"]
    X2[rows] = X2[rows] * 100 + 1000                        # change only held-out sequences
    s = make_split(_npz(tmp_path / "b.npz", X2, y), valid_fraction=0.2, test_fraction=0.2)
    assert s.record["test_rows"] == s0.record["test_rows"]
    settings = {"data": "b", "batch_size": 8, "seed": 0}
    t0 = SequenceTask(s0, settings, {"hidden": 4})
    t = SequenceTask(s, settings, {"hidden": 4})
    train = np.concatenate([x for x in s.train.X])          # (sum T, F)
    np.testing.assert_allclose(t.normalisation["mean"], train.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.normalisation["std"], train.std(0), rtol=1e-5)
    assert t.normalisation == t0.normalisation              # held-out data never reached it
    assert abs(np.concatenate(list(X2)).mean(0)[1] - t.normalisation["mean"][1]) > 100
    m = t.build_model()                                     # saved with the weights
    np.testing.assert_allclose(m.mean.numpy(), t.normalisation["mean"], rtol=1e-6)


def test_nan_is_an_error_naming_its_position_unless_filled(tmp_path):
    X = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    X[2, 3, 1] = np.nan
    X[2, 4, 1] = np.nan
    X[1, 0, 0] = np.nan                                     # a leading NaN
    d = read_npz(_npz(tmp_path / "n.npz", X, [0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"NaN in sequence 1 \(id 1\) at time step 0, "
                                         r"feature 0.*--fill"):
        fill_missing(d, None, "n.npz")
    f = fill_missing(d, "ffill", "n.npz")
    assert f.X[2][3, 1] == X[2, 2, 1] and f.X[2][4, 1] == X[2, 2, 1]
    assert f.X[1][0, 0] == X[1, 1, 0]                       # leading NaN: first value seen
    z = fill_missing(d, "zero", "n.npz")
    assert z.X[2][3, 1] == 0 and z.X[2][5, 1] == X[2, 5, 1]
    X[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite value in sequence 1"):
        fill_missing(read_npz(_npz(tmp_path / "i.npz", X, [0, 1, 0, 1])), "zero", "i")


def test_shape_errors_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match=r"X must be \(N, T, F\).*got shape \(4, 6\)"):
        read_npz(_npz(tmp_path / "a.npz", np.zeros((4, 6)), [0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9 is outside \[1, 6\]"):
        read_npz(_npz(tmp_path / "b.npz", np.zeros((2, 6, 3)), [0, 1], np.array([3, 9])))
    sm = SequenceModel(_model(), list("abcd"))
    with pytest.raises(ValueError, match=r"expected shape \(T, 6\).*got \(5, 4\)"):
        sm.predict([np.zeros((5, 4))])
    with pytest.raises(ValueError, match="time step 2, feature 3"):
        x = np.zeros((5, 6))
        x[2, 3] = np.nan
        sm.predict([x])
    with pytest.raises(ValueError, match=r"expected \.npz, \.csv"):
        (tmp_path / "x.txt").write_text("1")
        read_file(tmp_path / "x.txt")


def test_ts_reader_agrees_with_sktime_and_with_npz_and_long_csv(tmp_path):
    ts = sktime.__path__[0] + "/datasets/data/BasicMotions/BasicMotions_TRAIN.ts"
    d = read_ts(ts)
    X, y = load_basic_motions(split="train", return_type="numpy3D")  # (N, C, T)
    np.testing.assert_allclose(np.stack(d.X), X.transpose(0, 2, 1).astype(np.float32))
    assert d.y == [str(v) for v in y]
    jv = read_ts(sktime.__path__[0] + "/datasets/data/JapaneseVowels/JapaneseVowels_TRAIN.ts")
    Xn, _yn = load_japanese_vowels(split="train", return_type="nested_univ")
    lens = [len(Xn.iloc[i, 0]) for i in range(len(Xn))]
    assert [len(x) for x in jv.X] == lens and min(lens) < max(lens)  # ragged stays ragged
    np.testing.assert_allclose(jv.X[5][:, 3], Xn.iloc[5, 3].to_numpy(), rtol=1e-6)
    # the same ragged data as .npz (padded + lengths) and as a long CSV, shuffled rows
    T = max(lens)
    P = np.full((len(lens), T, 12), 7.0, dtype=np.float32)
    for i, x in enumerate(jv.X):
        P[i, :len(x)] = x
    dn = read_npz(_npz(tmp_path / "jv.npz", P, jv.y, np.array(lens)))
    rows = [(i, t, *x[t], jv.y[i]) for i, x in enumerate(jv.X) for t in range(len(x))]
    order = np.random.default_rng(0).permutation(len(rows))
    with open(tmp_path / "jv.csv", "w") as f:
        f.write("id,time," + ",".join(f"c{k}" for k in range(12)) + ",label\n")
        for k in order:
            r = rows[k]
            f.write(f"s{r[0]:03d},{r[1]}," + ",".join(repr(float(v)) for v in r[2:-1])
                    + f",{r[-1]}\n")
    dc = read_long_csv(tmp_path / "jv.csv")
    dc_order = np.argsort([int(i[1:]) for i in dc.ids])
    for other in (dn, dc.take(dc_order)):
        assert other.y == jv.y
        for a, b in zip(other.X, jv.X, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_long_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("id,time,a,label\nx,0,1.0,u\nx,1,oops,u\n")
    with pytest.raises(ValueError, match="line 3: expected numbers"):
        read_long_csv(p)
    p.write_text("id,time,a,label\nx,0,1.0,u\nx,1,2.0,v\n")
    with pytest.raises(ValueError, match="line 3: sequence 'x' has two labels"):
        read_long_csv(p)


def test_windows_by_hand():
    x = np.arange(45)[:, None]
    w = windows(x, 20, 10)
    assert [int(v[0, 0]) for v in w] == [0, 10, 20, 25] and all(len(v) == 20 for v in w)
    assert len(windows(x[:15], 20, 10)) == 1 and len(windows(x, None, None)) == 1


def test_frame_cnn_sees_each_frame_alone():
    torch.manual_seed(0)
    cnn = FrameCNN(1, 16).eval()
    x = torch.rand(4, 5, 32, 32, 1)
    with torch.no_grad():
        y = cnn(x)
        perm = torch.tensor([2, 0, 3, 1])
        torch.testing.assert_close(cnn(x[perm]), y[perm])            # batch permutation
        tperm = torch.tensor([4, 1, 0, 3, 2])
        torch.testing.assert_close(cnn(x[:, tperm]), y[:, tperm])    # time permutation
        x2 = x.clone()
        x2[1, 3] = torch.rand(32, 32, 1)
        y2 = cnn(x2)
    changed = (y2 - y).abs().amax(-1) > 0
    assert changed[1, 3] and changed.sum() == 1                       # only that frame moves


def test_moving_digits_label_is_the_direction_of_motion():
    d = moving_digits("test", n=64)
    assert d.X[0].shape == (10, 32, 32, 1) and set(d.y) <= set(DIRECTIONS)
    for x, lab in zip(d.X, d.y, strict=True):
        a, b = x[0, ..., 0], x[3, ..., 0]            # three steps of 2 px: a shift within ±8
        score = {(r, c): float((np.roll(a, (r, c), axis=(0, 1)) * b).sum())
                 for r in range(-8, 9) for c in range(-8, 9)}
        r, c = max(score, key=score.get)
        ang = np.degrees(np.arctan2(-r, c)) % 360
        assert DIRECTIONS[round(ang / 45) % 8] == lab
        np.testing.assert_allclose(x.sum((1, 2, 3)), x[0].sum(), rtol=1e-5)  # wraps, never
        # leaves the frame


def test_feature_stats_match_numpy_for_frames():
    X = [np.random.default_rng(i).random((3 + i, 4, 4, 3)).astype(np.float32) for i in range(3)]
    mean, std = feature_stats(X)
    allpix = np.concatenate([x.reshape(-1, 3) for x in X])
    np.testing.assert_allclose(mean, allpix.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, allpix.std(0), rtol=1e-5)


def test_tiny_run_then_eval_load_and_predict(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "sequences", "--out", str(run), "--steps", "8", "--hidden", "8",
                 "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["baselines"]) == {"majority class", "logistic regression, mean-pooled features",
                                   "logistic regression, last step only"}
    assert (run / "confusion_test.png").is_file() and (run / "early_test.png").is_file()
    assert main(["eval", str(run)]) == 0
    ev = json.loads((run / "eval_test.json").read_text())
    assert ev["accuracy"] == pytest.approx(m["test"]["accuracy"])
    sm = rnnkit.load(run)
    assert isinstance(sm, SequenceModel)
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    p = sm.predict_proba([x])[0]
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(",".join(map(str, r)) for r in x)))
    assert main(["predict", str(run), "--stream", "-"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    assert last[0] == "20"
    np.testing.assert_allclose([float(v.split("=")[1]) for v in last[2].split()], p, atol=1e-4)


def test_video_run_end_to_end(tmp_path, monkeypatch):
    import rnnkit.tasks.sequences.video as video

    real = video.moving_digits
    monkeypatch.setattr(video, "moving_digits",
                        lambda split="train", **kw: real(split, n=48 if split == "train" else 16))
    run = tmp_path / "video"
    assert main(["train", "sequences", "--data", "moving-digits", "--out", str(run),
                 "--steps", "3", "--hidden", "8", "--embed", "8", "--quiet"]) == 0
    sm = rnnkit.load(run)
    clip = real("test", n=1).X[0]
    p = sm.predict_proba([clip])[0]
    s = sm.stream()
    for frame in clip:
        q = s.feed(frame)
    np.testing.assert_allclose(list(q.values()), p, atol=1e-5)
    assert isinstance(sm.model.encoder, FrameCNN)


def test_sequences_dataclass_take():
    d = Sequences([np.zeros((2, 1)), np.ones((3, 1))], ["a", "b"], ["x", "y"])
    assert d.take([1]).ids == ["y"] and d.step_shape == (1,)


def test_clip_folder_reads_frames_in_name_order(tmp_path):
    import matplotlib.image as mpimg

    clips = moving_digits("test", n=2)
    with open(tmp_path / "labels.tsv", "w") as f:
        for k, (x, lab) in enumerate(zip(clips.X, clips.y, strict=True)):
            d = tmp_path / f"clip{k}"
            d.mkdir()
            for t, frame in enumerate(x):
                mpimg.imsave(d / f"{t:03d}.png", frame[..., 0], cmap="gray", vmin=0, vmax=1)
            f.write(f"clip{k}\t{lab}\n")
    d = read_file(tmp_path)
    assert d.y == clips.y and d.ids == ["clip0", "clip1"]
    assert d.X[0].shape == (10, 32, 32, 3)                   # saved as RGB(A): 3 channels
    np.testing.assert_allclose(d.X[1][..., 0], clips.X[1][..., 0], atol=1 / 255 + 1e-6)


def test_resume_continues_the_same_run(tmp_path):
    run = str(tmp_path / "r")
    assert main(["train", "sequences", "--out", run, "--steps", "4", "--hidden", "8",
                 "--quiet"]) == 0
    assert main(["train", "sequences", "--resume", run, "--steps", "6", "--quiet"]) == 0
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]).get("step") == 6
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["hidden"] == 8 and len(cfg["normalisation"]["mean"]) == 6


@pytest.mark.parametrize("cmd", [["train", "sequences"], ["eval"], ["predict"]])
def test_help_renders(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
