"""LayerNormLSTM: one step against custom_lstms.py's equations written out by hand; the fast
path against the reference loop (outputs, states, recordings, every gradient), also with
recurrent dropout and zoneout drawing the same masks."""

import itertools

import pytest
import torch

import rnnkit
from rnnkit.cells.layernorm_lstm import LayerNormLSTMCell


def layer_norm(v, gamma, beta):
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(var + 1e-5) * gamma + beta


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)


def test_step_is_custom_lstms_equations():
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(3, 4)
    randomise(cell)
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    a = (layer_norm(x @ cell.weight_ih.T, cell.ln_ih_weight, cell.bias_ih)
         + layer_norm(h @ cell.weight_hh.T, cell.ln_hh_weight, cell.bias_hh))
    i, f, g, o = a.chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = layer_norm(f * c + i * g, cell.ln_c_weight, cell.ln_c_bias)
    (h1, c1), gates = cell.step(x, (h, c))
    torch.testing.assert_close(c1, c_new)
    torch.testing.assert_close(h1, o * torch.tanh(c_new))
    torch.testing.assert_close(gates["forget"], f)


def test_zoneout_in_eval_is_the_expectation_and_training_is_random():
    torch.manual_seed(0)
    plain = LayerNormLSTMCell(3, 4)
    zoned = LayerNormLSTMCell(3, 4, zoneout=0.25, recurrent_dropout=0.5)
    zoned.load_state_dict(plain.state_dict())
    zoned.eval()
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    (h0, c0), _ = plain.step(x, (h, c))
    (h1, c1), _ = zoned.step(x, (h, c))
    torch.testing.assert_close(h1, 0.25 * h + 0.75 * h0)
    torch.testing.assert_close(c1, 0.25 * c + 0.75 * c0)
    zoned.train()
    masks = zoned.draw(1000, x)
    assert abs(masks["zone"].mean().item() - 0.25) < 0.02
    assert set(masks["drop"].unique().tolist()) == {0.0, 2.0}
    (h2, _), _ = zoned.step(x, (h, c))
    (h3, _), _ = zoned.step(x, (h, c))
    assert not torch.equal(h2, h3)


def run(layer, x, state, lengths, seed, record=True):
    """Outputs, final states, recordings (``record``: with gradients flowing through them) and
    every gradient of a random projection of them; and the kernel that ran."""
    xx = x.clone().requires_grad_(True)
    st = tuple(s.clone().requires_grad_(True) for s in state)
    torch.manual_seed(seed)
    if record:
        with rnnkit.record(layer, detach=False) as rec:
            out, fin = layer(xx, st, lengths=lengths)
        recs = [rec.only[n] for n in rec.only.names]
    else:
        out, fin = layer(xx, st, lengths=lengths)
        recs = []
    vals = [out, *fin, *recs]
    gen = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=gen)).sum() for v in vals)
    layer.zero_grad()
    loss.backward()
    grads = [xx.grad, *[s.grad for s in st], *[p.grad for p in layer.parameters()]]
    return [*vals, *grads], layer.last_kernel


CASES = [c for c in itertools.product([1, 2], [False, True], [False, True], [0.0, 0.3],
                                      [0.0, 0.2], [False, True])
         if not (c[2] and c[5])]  # with lengths, the packed fast path draws masks differently


def float32_masks(monkeypatch):
    """Masks drawn in float32 whatever the layer's dtype, so a float64 copy of a layer draws
    the very same masks from the same seed."""
    draw = LayerNormLSTMCell.draw

    def draw32(self, batch_size, like):
        out = draw(self, batch_size, like.float())
        return {k: v.to(like.dtype) if torch.is_tensor(v) else v for k, v in out.items()}

    monkeypatch.setattr(LayerNormLSTMCell, "draw", draw32)


@pytest.mark.parametrize("layers,bidir,use_lengths,rec_dropout,zoneout,training", CASES)
def test_fast_equals_reference(layers, bidir, use_lengths, rec_dropout, zoneout, training,
                               monkeypatch):
    """Recording every gate, gradients flowing through the recordings too."""
    check(monkeypatch, layers, bidir, use_lengths, rec_dropout, zoneout, training, record=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("use_lengths,rec_dropout,zoneout,training", [
    (False, 0.0, 0.0, True), (False, 0.3, 0.2, True), (True, 0.0, 0.2, False)])
def test_fast_equals_reference_whole_sequence_c(use_lengths, rec_dropout, zoneout, training,
                                                threads, monkeypatch):
    """Not recording: forward and backward are each one C call over the whole sequence. H = 40
    (several 32-column panels, a padded one); 32 rows without lengths (blocks of 16 rows per
    thread: the streaming stores of whole lines), 37 ragged rows with (a partial block)."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check(monkeypatch, 2, True, use_lengths, rec_dropout, zoneout, training, record=False,
              B=37 if use_lengths else 32, H=40)
    finally:
        torch.set_num_threads(old)


def check(monkeypatch, layers, bidir, use_lengths, rec_dropout, zoneout, training, record,
          B=12, H=6):
    float32_masks(monkeypatch)
    kw = dict(num_layers=layers, bidirectional=bidir, recurrent_dropout=rec_dropout,
              zoneout=zoneout)
    torch.manual_seed(3)
    ref = rnnkit.LayerNormLSTM(5, H, kernel="reference", **kw)
    randomise(ref)
    fast = rnnkit.LayerNormLSTM(5, H, **kw)
    fast.load_state_dict(ref.state_dict())
    ref.train(training), fast.train(training)
    D = 2 if bidir else 1
    x = torch.randn(B, 7, 5)  # from 8 rows on the C steps split them over OpenMP threads
    state = (torch.randn(layers * D, B, H), torch.randn(layers * D, B, H))
    lengths = torch.tensor(([7, 3, 1, 5] * B)[:B]) if use_lengths else None
    v1, k1 = run(ref, x, state, lengths, seed=5, record=record)
    v2, k2 = run(fast, x, state, lengths, seed=5, record=record)
    assert (k1, k2) == ("reference", "fast")
    exact = None  # the reference loop in float64, drawing the same masks
    for i, (a, b) in enumerate(zip(v2, v1, strict=True)):
        # layer-norm gain gradients reach ~10: compare relative to each tensor's scale
        scale = max(1.0, b.abs().max().item())
        if torch.allclose(a, b, atol=1e-5 * scale, rtol=1e-5):
            continue
        # Random gates + layer norm make some gradients ill-conditioned: then the float32
        # reference itself is ~1e-5 off the exact value, and the fast path must be no
        # further from it than the reference is.
        if exact is None:
            r64 = rnnkit.LayerNormLSTM(5, H, kernel="reference", **kw).double()
            r64.load_state_dict(ref.state_dict())
            r64.train(training)
            exact, _ = run(r64, x.double(), tuple(s.double() for s in state), lengths, seed=5,
                           record=record)
        err_fast = (a.double() - exact[i]).abs().max().item()
        err_ref = (b.double() - exact[i]).abs().max().item()
        assert err_fast <= max(1e-5 * scale, 1.5 * err_ref), (i, err_fast, err_ref, scale)


def test_layer_api():
    layer = rnnkit.LayerNormLSTM(5, 6, num_layers=2)
    out, (h, c) = layer(torch.randn(3, 4, 5))
    assert out.shape == (3, 4, 6) and h.shape == c.shape == (2, 3, 6)
    assert layer.last_kernel == "fast"
    with pytest.raises(ValueError, match="zoneout must be in"):
        rnnkit.LayerNormLSTM(5, 6, zoneout=1.0)
    with pytest.raises(ValueError, match=r"torch\.nn has no equivalent"):
        layer.to_torch()
