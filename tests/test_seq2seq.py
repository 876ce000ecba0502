"""The encoder–decoder (rnnkit.seq2seq): masking, a plain-PyTorch reference of the same
equations (outputs and gradients), the stepping path, and decoding (greedy, beam search
against exhaustive search, batched against one sentence at a time, n-gram blocking)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from rnnkit.kernels import native
from rnnkit.seq2seq import (
    ATTENTIONS,
    Attention,
    Seq2Seq,
    beam_search,
    greedy_search,
    length_penalty,
    sample_search,
)

BOS, EOS = 9, 10


def model(**kw):
    cfg = dict(bos=BOS, eos=EOS, embed=8, hidden=12, layers=1, dropout=0.0)
    cfg.update(kw)
    return Seq2Seq(13, 11, **cfg).eval()


def batch(B=4, S=6, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([S, 2, 4, 1][:B])
    src = torch.randint(2, 13, (B, S), generator=g) * (torch.arange(S) < lengths[:, None])
    y = torch.randint(2, 9, (B, T), generator=g)
    y[:, 0] = BOS
    return src, lengths, y


# -- masking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_attention_weights_zero_on_padding_and_sum_to_one(kind):
    m = model(attention=kind, layers=2, cell="gru")
    src, L, y = batch()
    w = m.attention_weights(src, L, y)                                  # (B, T, S)
    pad = torch.arange(src.shape[1]) >= L[:, None]                      # (B, S)
    assert torch.all(w.masked_select(pad[:, None, :].expand_as(w)) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]))


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_output_independent_of_padding(kind):
    """Any ids in the padding, and any amount of extra padding, leave the logits unchanged."""
    m = model(attention=kind, bidirectional=True)
    src, L, y = batch()
    ref = m(src, L, y)
    noisy = torch.cat([src, torch.randint(2, 13, (4, 3))], 1)
    keep = torch.arange(noisy.shape[1]) < L[:, None]
    noisy = torch.where(keep, noisy, torch.randint(2, 13, noisy.shape))
    torch.testing.assert_close(m(noisy, L, y), ref, rtol=0, atol=1e-6)
    # each sentence alone (no padding at all) gives its own row
    for b in range(4):
        one = m(src[b:b + 1, :L[b]], L[b:b + 1], y[b:b + 1])
        torch.testing.assert_close(one, ref[b:b + 1], rtol=0, atol=1e-5)


def test_attention_bad_sizes():
    with pytest.raises(ValueError, match="dot attention needs"):
        Attention("dot", 8, 12)
    with pytest.raises(ValueError, match="tied output layer"):
        model(tie=True, embed=8, hidden=12)
    with pytest.raises(ValueError, match="attention must be one of"):
        model(attention="luong")
    with pytest.raises(ValueError, match="at least one token"):
        m = model()
        m(torch.ones(1, 3, dtype=torch.long), torch.tensor([0]), torch.full((1, 2), BOS))


# -- a plain PyTorch reference of the same equations -------------------------------------------
def reference_logits(m: Seq2Seq, src, L, y):
    """torch.nn.LSTM (packed) encoder and torch.nn.LSTMCell decoder loop sharing ``m``'s
    parameters, attention written out with einsum (general score) and a masked exp."""
    enc, dec = m.encoder, m.decoder
    H = enc.rnn.hidden_size
    lstm = nn.LSTM(enc.embed.embedding_dim, H, num_layers=enc.rnn.num_layers,
                   bidirectional=True, batch_first=True)
    for tname, rname in enc.rnn.torch_names():
        setattr(lstm, tname, enc.rnn.get_parameter(rname))
    packed = nn.utils.rnn.pack_padded_sequence(enc.embed(src), L, batch_first=True,
                                               enforce_sorted=False)
    out, (h, c) = lstm(packed)
    memory, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
    summary = torch.cat([h[-2], h[-1], c[-2], c[-1]], -1)
    B, Ld, Hd = src.shape[0], dec.layers, dec.hidden
    hs = torch.tanh(dec.bridge[0](summary)).view(B, Ld, Hd)
    cs = torch.tanh(dec.bridge[1](summary)).view(B, Ld, Hd)
    cells = []
    for cell in dec.rnn.cells:
        ref = nn.LSTMCell(cell.input_size, Hd)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(ref, name, getattr(cell, name))
        cells.append(ref)
    state = [(hs[:, k], cs[:, k]) for k in range(Ld)]
    feed = torch.zeros(B, dec.output_size)
    mask = (torch.arange(src.shape[1]) < L[:, None]).float()
    logits = []
    for t in range(y.shape[1]):
        x = torch.cat([dec.embed(y[:, t]), feed], -1) if dec.input_feed else dec.embed(y[:, t])
        for k, cell in enumerate(cells):
            state[k] = cell(x, state[k])
            x = state[k][0]
        e = torch.einsum("bq,qm,bsm->bs", x, dec.attn.w.weight, memory)
        a = torch.exp(e - e.max(-1, keepdim=True).values) * mask
        a = a / a.sum(-1, keepdim=True)
        ctx = torch.einsum("bs,bsm->bm", a, memory)
        feed = torch.tanh(torch.cat([ctx, x], -1) @ dec.combine.weight.t())
        logits.append(feed @ dec.generator.weight.t() + dec.generator.bias)
    return torch.stack(logits, 1)


@pytest.mark.parametrize("feed", [True, False])
def test_teacher_forced_equals_plain_pytorch_reference_outputs_and_gradients(feed):
    """With input feeding the decoder runs step by step; without, its stack runs over the
    whole target in one call and attention is batched over steps: both equal the loop."""
    m = model(attention="general", layers=2, bidirectional=True, input_feed=feed).train()
    src, L, y = batch()
    tgt = torch.randint(2, 11, y.shape)
    loss_fn = nn.CrossEntropyLoss()
    ref = reference_logits(m, src, L, y)
    loss_fn(ref.flatten(0, 1), tgt.flatten()).backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    got = m(src, L, y)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    loss_fn(got.flatten(0, 1), tgt.flatten()).backward()
    assert set(want) == {n for n, p in m.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if n in want:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("cell,kind,feed", [("lstm", "general", True), ("gru", "additive", True),
                                            ("rnn", "dot", False), ("lstm", "none", False),
                                            ("gru", "general", True)])
def test_step_path_equals_teacher_forced(cell, kind, feed):
    m = model(cell=cell, attention=kind, input_feed=feed, layers=2)
    src, L, y = batch()
    want = torch.log_softmax(m(src, L, y), -1)
    step, st = m.decoding(src, L)
    got = []
    for t in range(y.shape[1]):
        lp, st, _ = step(y[:, t], st)
        got.append(lp)
    torch.testing.assert_close(torch.stack(got, 1), want, rtol=0, atol=1e-5)


# -- decoding -----------------------------------------------------------------------------------
def test_beam_width_one_equals_greedy():
    torch.manual_seed(3)
    m = model(layers=2)
    src, L, _ = batch()
    lens = [7, 7, 7, 7]
    g = greedy_search(*m.decoding(src, L), lens, bos=BOS, eos=EOS, forbid=(0, 1, BOS))
    b = beam_search(*m.decoding(src, L, 1), lens, beam=1, bos=BOS, eos=EOS, forbid=(0, 1, BOS))
    assert [h.tokens for h in g] == [h[0].tokens for h in b]
    for x, z in zip(g, b, strict=True):
        assert math.isclose(x.logprob, z[0].logprob, rel_tol=1e-6, abs_tol=1e-6)
    s = sample_search(*m.decoding(src, L), lens, bos=BOS, eos=EOS, temperature=0.0,
                      forbid=(0, 1, BOS))
    assert [h.tokens for h in s] == [h.tokens for h in g]


class Table:
    """A hand-made model: the next-token distribution is a fixed random function of the whole
    prefix (its base-6 code), so every sequence has a known probability."""

    V, EOS, BOS = 5, 0, 4   # tokens 1..3 are words, 0 ends, 4 starts (never emitted)

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(1009, self.V, generator=g) * 2

    def logp(self, code):
        return torch.log_softmax(self.W[code % 1009], -1)

    def step(self, y, code):
        code = code * 6 + y + 1
        return self.logp(code), code, None

    def exhaustive(self, max_len, alpha):
        """Every hypothesis: words then EOS (shorter than max_len), or max_len words."""
        out = []
        for n in range(max_len + 1):
            for words in itertools.product((1, 2, 3), repeat=n):
                code, lp = torch.tensor(self.BOS + 1), 0.0
                seq = list(words) + ([self.EOS] if n < max_len else [])
                for tok in seq:
                    lp += float(self.logp(code)[tok])
                    code = code * 6 + tok + 1
                out.append((lp / length_penalty(len(seq), alpha), lp, list(words)))
        return sorted(out, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_beam_search_finds_the_best_sequences_of_exhaustive_search(alpha):
    t = Table(seed=int(alpha * 10))
    max_len = 4
    best = t.exhaustive(max_len, alpha)                  # 1 + 3 + 9 + 27 + 81 = 121
    hyps = beam_search(t.step, torch.zeros(128, dtype=torch.long), [max_len], beam=128,
                       bos=t.BOS, eos=t.EOS, alpha=alpha, n_best=10, forbid=(t.BOS,))[0]
    assert [h.tokens for h in hyps] == [w for _, _, w in best[:10]]
    for h, (s, lp, _) in zip(hyps, best, strict=False):
        assert math.isclose(h.score, s, rel_tol=1e-5) and math.isclose(h.logprob, lp,
                                                                         rel_tol=1e-5)
    # a narrow beam may miss the best one, but never reports a score it did not find
    narrow = beam_search(t.step, torch.zeros(2, dtype=torch.long), [max_len], beam=2,
                         bos=t.BOS, eos=t.EOS, alpha=alpha, forbid=(t.BOS,))[0][0]
    assert any(w == narrow.tokens and math.isclose(s, narrow.score, rel_tol=1e-5)
               for s, _, w in best)


@pytest.mark.parametrize("cell,kind", [("lstm", "general"), ("gru", "additive")])
def test_batched_beam_equals_one_sentence_at_a_time(cell, kind):
    torch.manual_seed(1)
    m = model(cell=cell, attention=kind, layers=2)
    src, L, _ = batch()
    lens = [int(1.5 * n) + 3 for n in L]
    K = 4
    kw = dict(beam=K, bos=BOS, eos=EOS, alpha=0.6, n_best=3, forbid=(0, 1, BOS))
    together = beam_search(*m.decoding(src, L, K), lens, **kw)
    for b in range(4):
        alone = beam_search(*m.decoding(src[b:b + 1, :L[b]], L[b:b + 1], K), [lens[b]], **kw)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[b]]
        for x, z in zip(alone, together[b], strict=True):
            assert math.isclose(x.score, z.score, rel_tol=1e-5, abs_tol=1e-6)


def test_sentences_that_finish_leave_the_batch_with_their_attention():
    """Sentences with different maximum lengths finish at different steps and leave the batch
    (their rows, source and attention with them): every remaining sentence's hypotheses,
    scores and attention rows equal its search alone, and the C LSTM step serves the
    shrinking batch from the stepper built for the first step."""
    torch.manual_seed(3)
    m = model(cell="lstm", attention="general", layers=2)
    src, L, _ = batch()
    lens = [3, 9, 5, 12]
    kw = dict(beam=3, bos=BOS, eos=EOS, alpha=0.6, n_best=2, forbid=(0, 1, BOS),
              block_ngram=2, attention=True)
    together = beam_search(*m.decoding(src, L, 3), lens, **kw)
    for b in range(4):
        alone = beam_search(*m.decoding(src[b:b + 1, :L[b]], L[b:b + 1], 3), [lens[b]], **kw)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[b]]
        for x, z in zip(alone, together[b], strict=True):
            assert math.isclose(x.score, z.score, rel_tol=1e-5, abs_tol=1e-6)
            assert len(z.tokens) <= lens[b]
            torch.testing.assert_close(x.attention, z.attention[:, :L[b]], atol=1e-6, rtol=1e-5)
            assert torch.all(z.attention[:, L[b]:] == 0)
    built = {s.B for s in m.decoder.rnn.__dict__["_steppers"].values()}
    if native.lib() is not None:  # no stepper built for 9 or 6 rows: the 12-row one served
        assert built <= {4 * 3, 3}, built


def test_ngram_blocking_and_attention_rows():
    torch.manual_seed(2)
    m = model()
    src, L, _ = batch()
    hyps = beam_search(*m.decoding(src, L, 3), [12] * 4, beam=3, bos=BOS, eos=EOS,
                       block_ngram=2, forbid=(0, 1, BOS), attention=True)
    for (h,), n in zip(hyps, L.tolist(), strict=True):
        grams = list(zip(h.tokens, h.tokens[1:], strict=False))
        assert len(grams) == len(set(grams))
        assert h.attention.shape[1] == src.shape[1]
        torch.testing.assert_close(h.attention.sum(-1), torch.ones(h.attention.shape[0]))
        assert torch.all(h.attention[:, n:] == 0)


# -- copying (pointer-generator) ----------------------------------------------------------------
def copy_model(**kw):
    return model(copy_offset=8, **kw)   # source ids 8..12 stand for target ids 0..4


def test_copy_distribution_is_the_pointer_generator_mix_by_hand():
    torch.manual_seed(4)
    m = copy_model(layers=1, attention="general")
    src, L, y = batch()
    src[0, :3] = torch.tensor([3, 11, 11])     # two steps that copy target id 3
    src[3, 0] = 4                              # sentence 3: nothing to copy
    logp = m(src, L, y)                        # (B, T, V) log-probabilities
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(logp.shape[:2]))
    # by hand, from the attention weights and the plain decoder's logits
    memory, mask, summary = m.encoder(src, L)
    gate = m.decoder.copy_gate
    m.decoder.copy_gate = None
    logits, w = m.decoder(y, memory, mask, summary)
    m.decoder.copy_gate = gate
    # the attentional vectors, recovered from the generator's inputs
    outs = []
    hook = m.decoder.generator.register_forward_hook(lambda mod, i, o: outs.append(i[0]))
    m.decoder(y, memory, mask, summary, m.copy_ids(src))
    hook.remove()
    g = torch.sigmoid(gate(outs[0]))[..., 0]                             # (B, T)
    ids = m.copy_ids(src)
    for b in range(4):
        for t in range(y.shape[1]):
            p = torch.softmax(logits[b, t], -1)
            ok = ids[b] >= 0
            if ok.any():
                a = w[b, t] * ok
                a = a / a.sum()
                p = g[b, t] * p
                for s in range(src.shape[1]):
                    if ok[s]:
                        p[ids[b, s]] += (1 - g[b, t]) * a[s]
            torch.testing.assert_close(logp[b, t], torch.log(p), rtol=0, atol=1e-5)
    assert ids[0, 1] == 3 and ids[0, 0] == -1


def test_copy_step_path_equals_teacher_forced_and_beam_one_is_greedy():
    torch.manual_seed(5)
    m = copy_model(layers=2)
    src, L, y = batch()
    src[:, 0] = 12
    want = m(src, L, y)
    step, st = m.decoding(src, L)
    got = []
    for t in range(y.shape[1]):
        lp, st, _ = step(y[:, t], st)
        got.append(lp)
    torch.testing.assert_close(torch.stack(got, 1), want, rtol=0, atol=1e-5)
    lens = [7] * 4
    g = greedy_search(*m.decoding(src, L), lens, bos=BOS, eos=EOS, forbid=(0, 1, BOS))
    b = beam_search(*m.decoding(src, L, 1), lens, beam=1, bos=BOS, eos=EOS, forbid=(0, 1, BOS))
    assert [h.tokens for h in g] == [h[0].tokens for h in b]
    together = beam_search(*m.decoding(src, L, 3), lens, beam=3, bos=BOS, eos=EOS,
                           forbid=(0, 1, BOS))
    alone = beam_search(*m.decoding(src[1:2, :L[1]], L[1:2], 3), lens[:1], beam=3, bos=BOS,
                        eos=EOS, forbid=(0, 1, BOS))[0]
    assert [h.tokens for h in alone] == [h.tokens for h in together[1]]


def test_copy_learns_to_copy_quickly_and_bad_configs_are_refused():
    """Target = the source's copyable tokens in order: a copying decoder gets there in a few
    hundred steps where the generator alone has to learn every identity."""
    torch.manual_seed(6)
    m = copy_model(layers=1, dropout=0.0).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        tok = torch.randint(2, 5, (16, 4))                 # target ids 2..4
        src = tok + 8
        y = torch.cat([torch.full((16, 1), BOS), tok], 1)
        out = torch.cat([tok, torch.full((16, 1), EOS)], 1)
        loss = nn.functional.nll_loss(m(src, torch.full((16,), 4), y).flatten(0, 1),
                                      out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3
    with pytest.raises(ValueError, match="needs attention"):
        copy_model(attention="none")
    with pytest.raises(ValueError, match="copy_offset must lie inside"):
        model(copy_offset=13)


# -- a candidate target ranked among the searched ones (translation memory's match) -------------
@pytest.mark.parametrize("copy", [False, True])
def test_candidates_are_scored_by_teacher_forcing_and_ranked_with_the_search(copy):
    from rnnkit.tasks.translate.model import score_targets, translate_ids
    torch.manual_seed(1)
    m = model(layers=1, copy_offset=11 if copy else None)
    srcs = [[2, 3, 12, 11], [4, 5, 6], [7], [8, 12, 3, 2, 5]]
    beam = translate_ids(m, srcs, beam=3, n_best=3, alpha=0.6, ratio=1.0, extra=3)
    greedy = translate_ids(m, srcs, beam=1, ratio=1.0, extra=3)
    # teacher forcing gives the log-probability the step path summed (EOS included)
    ended = [i for i, h in enumerate(greedy) if len(h[0].tokens) < len(srcs[i]) + 3]
    assert ended
    lps = score_targets(m, [srcs[i] for i in ended], [greedy[i][0].tokens for i in ended])
    for i, lp in zip(ended, lps, strict=True):
        assert lp == pytest.approx(greedy[i][0].logprob, abs=1e-4)
    # a hypothesis already found changes nothing; a new one enters at its own score
    same = translate_ids(m, srcs, beam=3, n_best=3, alpha=0.6, ratio=1.0, extra=3,
                         candidates=[h[1].tokens for h in beam])
    assert [[h.tokens for h in x] for x in same] == [[h.tokens for h in x] for x in beam]
    cand = [[2, 2, 2], [], [3], [4, 5]]
    got = translate_ids(m, srcs, beam=3, n_best=3, alpha=0.6, ratio=1.0, extra=3,
                        candidates=cand)
    lp = score_targets(m, [srcs[0], srcs[2], srcs[3]], [cand[0], cand[2], cand[3]])
    for i, c, v in zip((0, 2, 3), (cand[0], cand[2], cand[3]), lp, strict=True):
        s = v / length_penalty(len(c) + 1, 0.6)
        pool = sorted([h.score for h in beam[i]] + [s], reverse=True)[:3]
        assert [h.score for h in got[i]] == pytest.approx(pool, abs=1e-6)
        assert (c in [h.tokens for h in got[i]]) == (s >= beam[i][2].score)
    assert [h.tokens for h in got[1]] == [h.tokens for h in beam[1]]
    with pytest.raises(ValueError, match="one candidate per source"):
        translate_ids(m, srcs, beam=3, candidates=[[2]])


def test_copy_below_copies_source_ids_as_themselves_beside_the_match_range():
    """copy_below: ids 2 .. copy_below - 1 of the source are target ids; with copy_offset,
    ids from it are the match's. Each step's copy id by hand, and the mix sums to one."""
    m = model(copy_below=8, copy_offset=9, layers=1)          # 13 source ids, 11 target ids
    src = torch.tensor([[0, 1, 2, 7, 8, 9, 12]])
    assert m.copy_ids(src).tolist() == [[-1, -1, 2, 7, -1, 0, 3]]
    only = model(copy_below=8, layers=1)
    assert only.copy_ids(src).tolist() == [[-1, -1, 2, 7, -1, -1, -1]]
    src, L, y = batch()
    lp = only(src, L, y)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]))
    for kw, says in (({"copy_below": 2}, "copy_below must lie in 3 .. 11"),
                     ({"copy_below": 8, "copy_offset": 5}, "would overlap")):
        with pytest.raises(ValueError, match=says):
            model(**kw)


def test_copy_below_learns_to_copy_the_source_where_the_generator_alone_is_slow():
    """Target = source (ids 2..7, 6 steps): after 80 steps the copying decoder is below 0.3
    nats per token, the same model without copying (same seed and batches) above 0.8."""
    def train(copy_below):
        torch.manual_seed(6)
        m = model(copy_below=copy_below, layers=1, dropout=0.0).train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(80):
            tok = torch.randint(2, 8, (16, 6))
            y = torch.cat([torch.full((16, 1), BOS), tok], 1)
            out = torch.cat([tok, torch.full((16, 1), EOS)], 1)
            loss = nn.functional.cross_entropy(m(tok, torch.full((16,), 6), y).flatten(0, 1),
                                               out.flatten())   # log p stays log p
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()
    assert train(8) < 0.3 < 0.8 < train(None)
