"""Streaming on the stepper: ``Stepper.run`` (a whole chunk on weights prepared once) against
the whole layer for every cell family, with and without the C library and with ragged
lengths; the stepper's freshness against every way weights change (in place, ``.data``,
fused optimizers, replacement); the bounded stepper cache; the classifier's stream on it,
equal to the whole-sequence forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_step import FAMILIES  # every family and form (one list for both stepper tests)

import rnnkit
from rnnkit.data import build_tokenizer
from rnnkit.kernels import native
from rnnkit.kernels.step import Stepper
from rnnkit.tasks.classify import Classifier, TextClassifier
from rnnkit.tasks.classify import api as classify_api


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tuple(s):
    return s if isinstance(s, tuple) else (s,)


def _c_or_torch(use_c: bool, monkeypatch) -> None:
    """Run on the C library (skip where it is off) or force its torch fallback."""
    if not use_c:
        monkeypatch.setattr(native, "usable", lambda *t: False)
    elif native.lib() is None:
        pytest.skip("the C library is disabled (RNNKIT_NATIVE=0) or cannot be built")


def _init(layer, b: int):
    h0 = torch.randn(layer.num_layers, b, layer.hidden_size)
    return (h0, torch.randn_like(h0)) if len(layer.state_names) == 2 else h0


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "torch"])
@pytest.mark.parametrize("cls,kw", FAMILIES)
def test_run_equals_the_whole_layer_over_chunks(cls, kw, use_c, monkeypatch):
    _c_or_torch(use_c, monkeypatch)
    torch.manual_seed(0)
    layer = cls(5, 19, num_layers=2, **kw).eval()
    for b in (1, 3):
        x = torch.randn(b, 13, 5)
        init = _init(layer, b)
        with torch.no_grad():
            want, final = layer(x, init)
        st = layer.stepper(1)  # any number of rows: the chunk path is not sized
        out1, s = st.run(x[:, :6], init)
        out2, s = st.run(x[:, 6:], s)
        torch.testing.assert_close(torch.cat([out1, out2], 1), want, atol=1e-5, rtol=1e-5)
        for a, w in zip(_tuple(s), _tuple(final), strict=True):
            torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_c", [True, False], ids=["c", "torch"])
@pytest.mark.parametrize("cls,kw", FAMILIES)
def test_run_ids_equals_the_layer_on_the_embedded_ids(cls, kw, use_c, monkeypatch):
    """Token ids through the first layer's projection table equal the layer on
    ``embedding[ids]`` (ragged lengths, two chunks, an initial state), for every family."""
    _c_or_torch(use_c, monkeypatch)
    torch.manual_seed(2)
    layer = cls(6, 17, num_layers=2, **kw).eval()
    emb = torch.nn.Embedding(23, 6)
    ids, lengths = torch.randint(0, 23, (3, 9)), torch.tensor([9, 4, 7])
    init = _init(layer, 3)
    with torch.no_grad():
        want, final = layer(emb(ids), init, lengths=lengths)
        st = layer.stepper(1)
        out, s = st.run_ids(ids, emb.weight, init, lengths)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for a, w in zip(_tuple(s), _tuple(final), strict=True):
        torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # two chunks carry the state as one does
        want, _ = layer(emb(ids))
        o1, s = st.run_ids(ids[:, :5], emb.weight)
        o2, _ = st.run_ids(ids[:, 5:], emb.weight, s)
    torch.testing.assert_close(torch.cat([o1, o2], 1), want, atol=1e-5, rtol=1e-5)


def test_run_ids_table_follows_the_embedding():
    """The table is rebuilt when the embedding changes: in place (version counter), through
    ``.data`` (seen with ``verify``), or another embedding tensor."""
    torch.manual_seed(3)
    layer = rnnkit.GRU(4, 8).eval()
    emb = torch.nn.Embedding(5, 4)
    ids = torch.tensor([[0, 3, 1, 4]])
    st = layer.stepper(1)

    def check(weight, verify=False):
        with torch.no_grad():
            got, _ = st.run_ids(ids, weight, verify=verify)
            want, _ = layer(weight[ids])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)

    check(emb.weight)
    with torch.no_grad():
        emb.weight.mul_(2.0)  # bumps the version
    check(emb.weight)
    emb.weight.data.add_(1.0)  # no counter moves: only the byte comparison sees it
    check(emb.weight, verify=True)
    check(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"integer ids of shape \(b, T\).*got torch.float32"):
        st.run_ids(torch.zeros(1, 3), emb.weight)
    with pytest.raises(ValueError, match=r"embedding of shape \(V, 4\), got \(5, 3\)"):
        st.run_ids(ids, torch.randn(5, 3))


def test_run_ids_without_a_table_past_its_size(monkeypatch):
    """A vocabulary whose table would pass TABLE_MAX floats takes the product path (same
    result, no table kept)."""
    from rnnkit.kernels import step
    monkeypatch.setattr(step, "TABLE_MAX", 10)
    layer = rnnkit.LSTM(4, 8).eval()
    emb = torch.randn(7, 4)
    ids = torch.tensor([[1, 2, 6]])
    st = layer.stepper(1)
    with torch.no_grad():
        got, _ = st.run_ids(ids, emb)
        want, _ = layer(emb[ids])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert st._table is None


@pytest.mark.parametrize("cls,kw", FAMILIES[:5])
def test_run_with_lengths_equals_the_layer(cls, kw):
    torch.manual_seed(1)
    layer = cls(4, 11, num_layers=2, **kw).eval()
    x, lengths = torch.randn(4, 7, 4), torch.tensor([3, 7, 1, 5])
    init = _init(layer, 4)
    with torch.no_grad():
        want, final = layer(x, init, lengths=lengths)
    out, s = layer.stepper(1).run(x, init, lengths)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for a, w in zip(_tuple(s), _tuple(final), strict=True):
        torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)


def test_run_checks_its_input():
    st = rnnkit.GRU(4, 8).eval().stepper()
    with pytest.raises(ValueError, match=r"expects x of shape \(b, T, 4\) with b, T >= 1, got "
                                         r"\(1, 3\)"):
        st.run(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"state as h, each of shape \(1, 2, 8\)"):
        st.run(torch.randn(2, 3, 4), torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match=r"lengths of shape \(2,\) in \[1, 3\], got \[0, 3\]"):
        st.run(torch.randn(2, 3, 4), None, torch.tensor([0, 3]))


def _out(layer, x):
    out, _ = layer.stepper(1, verify=True).run(x)
    return out


def test_freshness_sees_every_kind_of_weight_change():
    torch.manual_seed(0)
    layer = rnnkit.GRU(4, 8).eval()
    x = torch.randn(1, 5, 4)
    st = layer.stepper()
    assert layer.stepper(verify=True) is st  # unchanged: kept

    def want():
        with torch.no_grad():
            return layer(x)[0]

    # 1. in place under no_grad: the version counter moves
    with torch.no_grad():
        layer.cells[0].weight_hh.mul_(1.5)
    assert not st.fresh()
    torch.testing.assert_close(_out(layer, x), want(), atol=1e-6, rtol=1e-6)
    # 2. through .data: no counter moves; only the bytes tell
    st = layer.stepper()
    layer.cells[0].weight_ih.data.mul_(-1.0)
    assert st.fresh() and not st.fresh(deep=True)
    torch.testing.assert_close(_out(layer, x), want(), atol=1e-6, rtol=1e-6)
    # 3. a fused optimizer step (writes without bumping the version counters)
    st = layer.stepper()
    opt = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    layer(x)[0].sum().backward()
    versions = [p._version for p in layer.parameters()]
    opt.step()
    assert [p._version for p in layer.parameters()] == versions  # the hole being closed
    assert not st.fresh()
    torch.testing.assert_close(_out(layer, x), want(), atol=1e-6, rtol=1e-6)
    # 4. an optimizer stepping other weights: this stepper's bytes are compared, and kept
    st = layer.stepper()
    other = torch.nn.Parameter(torch.zeros(3))
    other.grad = torch.ones(3)
    torch.optim.Adam([other], lr=0.1, fused=True).step()
    assert layer.stepper() is st
    # 5. replaced tensors (load_state_dict copies in place; assignment replaces)
    layer.cells[0].bias_hh = torch.nn.Parameter(torch.randn(24))
    assert not st.fresh()
    torch.testing.assert_close(_out(layer, x), want(), atol=1e-6, rtol=1e-6)


def test_stepper_cache_is_bounded():
    layer = rnnkit.LSTM(3, 4).eval()
    for b in range(1, 20):
        layer.stepper(b)
    assert len(layer.__dict__["_steppers"]) == layer.STEPPERS
    assert list(layer.__dict__["_steppers"]) == list(range(16, 20))


CORPUS = ["hello this is your bank calling about the account we noticed a payment",
          "ok sure i can do that tomorrow lunch at noon see you"]


def make(cell: str, pool: str = "max", layers: int = 1) -> TextClassifier:
    torch.manual_seed(0)
    tok = build_tokenizer("char", CORPUS)
    m = Classifier(tok.vocab_size, 3, cell=cell, embed=16, hidden=48, layers=layers,
                   pool=pool, dropout=0.0)
    with torch.no_grad():
        m.head.weight.mul_(8)  # spread the probabilities so that differences show
    return TextClassifier(m, tok, ["a", "b", "c"])


@pytest.mark.parametrize("cell,pool,layers", [("gru", "max", 1), ("lstm", "attention", 2),
                                              ("rnn", "mean", 1), ("gru", "last", 2)])
def test_stream_runs_on_the_stepper_and_equals_the_whole_forward(cell, pool, layers,
                                                                 monkeypatch):
    clf = make(cell, pool, layers)
    text = " ".join(CORPUS) * 2
    chunks = [text[i:i + 16] for i in range(0, len(text), 16)]
    want = [clf.predict_proba([text[:i + len(c)]])[0]
            for i, c in zip(range(0, len(text), 16), chunks, strict=True)]
    calls = []
    run_ids = Stepper.run_ids
    monkeypatch.setattr(Stepper, "run_ids",
                        lambda self, *a, **k: calls.append(1) or run_ids(self, *a, **k))

    def refuse(*a, **k):
        raise AssertionError("the stream ran the whole layer, not its stepper")

    monkeypatch.setattr(clf.model.rnn, "forward", refuse)
    s = clf.stream()
    for c, w in zip(chunks, want, strict=True):
        np.testing.assert_allclose(list(s.feed(c).values()), w, atol=1e-5)
    assert len(calls) == len(chunks)


def test_stream_sees_weights_changed_through_data_between_sessions():
    clf = make("gru")
    s = clf.stream()
    s.feed("hello this is")
    clf.model.rnn.cells[0].weight_hh.data.mul_(3.0)  # no version counter moves
    got = clf.stream().feed("hello this is")
    np.testing.assert_allclose(list(got.values()), clf.predict_proba(["hello this is"])[0],
                               atol=1e-5)


def test_many_sessions_share_one_bounded_stepper_cache():
    clf = make("lstm")
    sessions = [clf.stream() for _ in range(30)]
    for i in range(3):
        for s in sessions:
            s.feed(f"chunk {i} of text ")
        classify_api.StreamSession.feed_many(sessions, ["more text"] * 30)
    assert len(clf.model.rnn.__dict__["_steppers"]) == 1
