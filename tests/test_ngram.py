"""The n-gram baseline against a plain-Python interpolated modified Kneser–Ney, written from
Chen & Goodman (1998) independently of the vectorised implementation."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from rnnkit.data import build_tokenizer
from rnnkit.tasks.lm.ngram import NGramLM

TEXT = "abracadabra cadabra abba dabba doo, abracadabra! " * 3 + "xyz"


def reference(text: str, K: int, V: int, symbols: list[str]):
    """P(w | h) by the textbook recursion over explicit string counts."""
    raw = Counter(text[i: i + K] for i in range(len(text) - K + 1))
    counts = {K: raw}
    for n in range(K - 1, 0, -1):  # continuation counts: distinct left extensions
        counts[n] = Counter(g[1:] for g in counts[n + 1])

    def discounts(c: Counter) -> list[float]:
        nn = [sum(1 for v in c.values() if v == i) for i in (1, 2, 3, 4)]
        if not nn[0] or not nn[1]:  # too few counts to estimate: fixed defaults
            return [0.5, 1.0, 1.5]
        y = nn[0] / (nn[0] + 2 * nn[1])
        d = [1 - 2 * y * nn[1] / nn[0], 2 - 3 * y * nn[2] / nn[1],
             3 - 4 * y * nn[3] / nn[2] if nn[2] else 1.5]
        return [min(max(d[0], 0.05), 1), min(max(d[1], 0.05), 2), min(max(d[2], 0.05), 3)]

    D = {n: discounts(counts[n]) for n in counts}

    def p(w: str, h: str, n: int) -> float:
        if n == 0:
            return 1 / V
        h = h[len(h) - (n - 1):] if n > 1 else ""
        cs = {s: counts[n].get(h + s, 0) for s in symbols}
        tot = sum(cs.values())
        if tot == 0:
            return p(w, h, n - 1)
        d = D[n]
        nk = [sum(1 for v in cs.values() if v == 1), sum(1 for v in cs.values() if v == 2),
              sum(1 for v in cs.values() if v >= 3)]
        c = cs.get(w, 0)
        dc = 0 if c == 0 else d[min(c, 3) - 1]
        gamma = (d[0] * nk[0] + d[1] * nk[1] + d[2] * nk[2]) / tot
        return max(c - dc, 0) / tot + gamma * p(w, h, n - 1)

    return lambda w, h: p(w, h, min(K, len(h) + 1))


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_matches_textbook_kneser_ney(K):
    tok = build_tokenizer("char", [TEXT])
    syms = tok.itos
    m = NGramLM.fit(torch.tensor(tok.encode(TEXT)), tok.vocab_size, K)
    ref = reference(TEXT, K, tok.vocab_size, syms[2:])
    valid = "abba cadabra, dab xy!"
    ids = tok.encode(valid)
    expect = -sum(math.log(ref(valid[i], valid[max(0, i - K + 1): i]))
                  for i in range(1, len(valid))) / (len(valid) - 1)
    assert m.nll(torch.tensor(ids)) == pytest.approx(expect, rel=1e-9)
    # step(): the full next-symbol distribution, normalised, and equal to the reference
    lp, st = m.step(torch.tensor([ids[0]]), None)
    for i in range(1, 6):
        h = valid[max(0, i - K + 1): i]
        assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)
        for s in ("a", "b", " ", "z"):
            assert float(lp[0, tok.stoi[s]].exp()) == pytest.approx(ref(s, h), rel=1e-6)
        lp, st = m.step(torch.tensor([ids[i]]), st)


def test_saved_tensors_rebuild_the_model():
    tok = build_tokenizer("char", [TEXT])
    ids = torch.tensor(tok.encode(TEXT))
    m = NGramLM.fit(ids, tok.vocab_size, 3)
    m2 = NGramLM.from_state(dict(m.state_dict()), tok.vocab_size, 3)
    assert m2.nll(ids) == m.nll(ids)


def test_bad_orders():
    with pytest.raises(ValueError, match="order must be >= 1"):
        NGramLM(10, 0)
    with pytest.raises(ValueError, match="does not fit 64-bit keys"):
        NGramLM(5000, 6)
    with pytest.raises(ValueError, match="at least 5 tokens"):
        NGramLM.fit(torch.tensor([2, 3]), 5, 5)
