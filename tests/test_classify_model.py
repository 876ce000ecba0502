"""Classifier model: pooling against a per-text torch.nn reference, padding invariance,
streaming equal to one-shot under any chunking, constant memory, metrics by hand."""

from __future__ import annotations

import gc
import itertools
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.data import build_tokenizer
from rnnkit.tasks.classify import (
    MAX_HELD,
    POOLS,
    Classifier,
    TextClassifier,
    stable_prefix,
    truncate,
)
from rnnkit.tasks.classify.metrics import choose_threshold, classification_metrics

ALPHABET = "ab xyz한국어가나다를 !?,.'\u0301\u0323\u00e9\ntT"
CORPUS = ["the movie was great", "한국어 영화가 재미있다", "it's a bad, bad plot!",
          "e\u0301te\u0301 caf\u00e9", "이 영화를 보세요 ?!", "abc xyz 가나다"] * 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: threads only add overhead (and contention on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(pool: str, cell: str = "gru", bidirectional: bool = False, tok: str = "char",
         layers: int = 2) -> TextClassifier:
    t = build_tokenizer(tok, CORPUS + list(ALPHABET), vocab_size=300 if tok == "bpe" else None)
    m = Classifier(t.vocab_size, 3, cell=cell, embed=8, hidden=12, layers=layers,
                   bidirectional=bidirectional, pool=pool, dropout=0.0)
    with torch.no_grad():  # spread the probabilities so that differences show
        m.head.weight.mul_(8)
    return TextClassifier(m, t, ["a", "b", "c"], max_len=None)


def reference_pooled(m: Classifier, x: torch.Tensor, pool: str) -> torch.Tensor:
    """Pooled vector of one unpadded sequence x (1, L, E) through torch.nn's own layer."""
    out, st = m.rnn.to_torch()(x)
    h = st[0] if isinstance(st, tuple) else st
    if pool == "last":
        return torch.cat(list(h[-m.rnn.num_directions:]), -1)
    if pool == "mean":
        return out.mean(1)
    if pool == "max":
        return out.max(1).values
    w = torch.softmax(m.attn(out).squeeze(-1), 1)
    return (w.unsqueeze(-1) * out).sum(1)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("cell,bi", [("gru", False), ("lstm", True), ("rnn", True)])
def test_pooling_matches_per_text_reference(pool: str, cell: str, bi: bool) -> None:
    m = make(pool, cell, bi).model
    lengths = torch.tensor([5, 1, 9, 3])
    ids = torch.randint(2, m.embed.num_embeddings, (4, 11))
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    x = m.embed(ids)
    out, state = m.rnn(x, lengths=lengths)
    got = m.pooled(out, state, lengths)
    for i, n in enumerate(lengths.tolist()):
        want = reference_pooled(m, x[i:i + 1, :n], pool)
        torch.testing.assert_close(got[i:i + 1], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("cell,bi", [("gru", False), ("lstm", True)])
def test_padding_invariance(pool: str, cell: str, bi: bool) -> None:
    clf = make(pool, cell, bi)
    texts = ["the movie was great", "bad", "한국어 영화가 재미있다 " * 3, "x", "it's a bad plot!"]
    alone = np.concatenate([clf.predict_proba([t]) for t in texts])
    together = clf.predict_proba(texts)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    # extra padding columns and different batch mates change nothing
    seqs = [clf.encode(t) for t in texts]
    ids = torch.zeros(len(seqs), 80, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    with torch.no_grad():
        p = torch.softmax(clf.model(ids, torch.tensor([len(s) for s in seqs])), -1)
        p2 = torch.softmax(clf.model(ids[[2, 0]], torch.tensor([len(seqs[2]), len(seqs[0])])), -1)
    np.testing.assert_allclose(p.numpy(), alone, atol=1e-6)
    np.testing.assert_allclose(p2.numpy(), alone[[2, 0]], atol=1e-6)


def _chunks(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("tok", ["char", "jamo", "word", "bpe"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=ALPHABET, min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=12))
def test_tokens_of_chunks_equal_tokens_of_whole(tok: str, text: str, cuts: list[int]) -> None:
    t = _TOKS[tok]
    ids, held = [], ""
    for c in _chunks(text, cuts):
        buf = held + c
        k = stable_prefix(t, buf)
        ids += t.encode(buf[:k])
        held = buf[k:]
    assert ids + t.encode(held) == t.encode(text)


_TOKS = {k: make("last", tok=k).tok for k in ("char", "jamo", "word", "bpe")}
_CLFS = {(p, k): make(p, tok=k) for p in POOLS for k in ("char", "jamo", "word", "bpe")}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("tok", ["char", "jamo", "word", "bpe"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=ALPHABET, min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=10))
def test_stream_equals_one_shot_after_every_chunk(pool: str, tok: str, text: str,
                                                  cuts: list[int]) -> None:
    clf = _CLFS[pool, tok]
    session, so_far = clf.stream(), ""
    for c in _chunks(text, cuts):
        so_far += c
        got = list(session.feed(c).values())
        np.testing.assert_allclose(got, clf.predict_proba([so_far])[0], atol=1e-5)


def _tensor_sizes(obj: object) -> list[tuple[int, ...]]:
    out = []
    for v in vars(obj).values():
        for t in (v if isinstance(v, tuple) else v.values() if isinstance(v, dict) else [v]):
            if isinstance(t, torch.Tensor):
                out.append(tuple(t.shape))
    return out


@pytest.mark.parametrize("pool", POOLS)
def test_stream_state_has_fixed_size(pool: str) -> None:
    session = make(pool, tok="word", layers=1).stream()
    session.feed("the movie")
    sizes = _tensor_sizes(session)
    for _ in range(100):
        session.feed("the movie was gre")  # ends inside a word: a held-back tail
    assert _tensor_sizes(session) == sizes and sizes  # recurrent + pooling state only
    assert set(vars(session)) == {"clf", "state", "pool", "held"}  # no per-chunk history
    assert session.held == "gre"


def test_stream_memory_flat_over_1000_chunks() -> None:
    session = make("attention", cell="lstm", tok="word", layers=1).stream()
    chunk = "the movie was gre"
    for _ in range(20):
        session.feed(chunk)
    gc.collect()
    tracemalloc.start()
    for i in range(1000):
        session.feed(chunk)
        if i == 99:
            gc.collect()
            after_100 = tracemalloc.get_traced_memory()[0]
    gc.collect()
    after_1000 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(session.held) <= MAX_HELD
    # 900 more chunks add no more than allocator noise (a worker that ran other tests first
    # has seen ~19 KiB of it): a leak of 73 bytes a chunk or more fails
    assert after_1000 - after_100 < 64 * 1024, (after_100, after_1000)


def test_stream_refuses_bidirectional() -> None:
    with pytest.raises(ValueError, match="unidirectional"):
        make("mean", bidirectional=True).stream()


def test_empty_text_pools_to_zero_in_both_paths() -> None:
    clf = make("attention", tok="word")
    want = torch.softmax(clf.model.head.bias.detach().double(), -1).numpy()
    np.testing.assert_allclose(clf.predict_proba(["   "])[0], want, atol=1e-6)
    np.testing.assert_allclose(list(clf.stream().feed("  ").values()), want, atol=1e-6)


def test_truncate_keeps_start_end_or_both() -> None:
    ids = list(range(10))
    assert truncate(ids, 4, "start") == [0, 1, 2, 3]
    assert truncate(ids, 4, "end") == [6, 7, 8, 9]
    assert truncate(ids, 5, "both") == [0, 1, 2, 8, 9]
    assert truncate(ids, 1, "both") == [0]
    assert truncate(ids, None, "both") == ids


def test_metrics_by_hand() -> None:
    # 6 texts, classes a/b/c; predictions (argmax): a a b b c a
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    # a: P 2/3 R 1 F1 0.8; b: 1 1 1; c: P 1 R 1/2 F1 2/3
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.8 + 1 + 2 / 3) / 3)
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [1, 0, 1]]


def test_binary_threshold_and_auc_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1])
    p1 = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.7, 0.9])
    # AUC: pairs (pos > neg): 0.4 beats 3 of 4 negatives, 0.8 and 0.9 beat all 4 -> 11/12
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["n", "p"], positive=1)
    assert m["roc_auc"] == pytest.approx(11 / 12)
    thr = choose_threshold(y, p1, 1)
    # brute force over every cut: the best macro-F1 threshold separates {0.4, 0.8, 0.9, 0.7}
    best = max((classification_metrics(y, np.stack([1 - p1, p1], 1), ["n", "p"], positive=1,
                                       threshold=t)["macro_f1"], t)
               for t in [0.0, 0.15, 0.3, 0.375, 0.55, 0.75, 0.85, 0.95])  # every distinct cut
    got = classification_metrics(y, np.stack([1 - p1, p1], 1), ["n", "p"], positive=1,
                                 threshold=thr)["macro_f1"]
    assert got == pytest.approx(best[0])
    assert 0.35 < thr <= 0.4
