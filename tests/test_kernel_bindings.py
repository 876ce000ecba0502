"""The typed bindings of the C kernels (rnnkit.kernels.bindings): each checks every tensor it
passes to C. For every binding and every tensor argument, a wrong dtype, a non-contiguous view
and a wrong shape each raise a ValueError naming the function and the argument (before any
address reaches C); the well-formed call runs. Also: no kernel module but the bindings passes
addresses (``data_ptr``)."""

import re
from pathlib import Path

import pytest
import torch

import rnnkit
from rnnkit.kernels import bindings, native

pytestmark = pytest.mark.skipif(native.lib() is None, reason="no C compiler for rnnkit's kernels")

T, B, H, I = 3, 2, 3, 2
SIZES, OFFS = [2, 2, 1], [0, 2, 4]
N = 5
NT = 2  # rows of the per-thread sums
P = bindings.panels
I64 = torch.int64

# binding: (tensor arguments in order with their shapes (dtype float32 unless given), the
# remaining (non-tensor) arguments)
ROWS = {"sizes": ((T,), I64), "offs": ((T,), I64)}
CASES = {
    "lstm_seq_forward": ({"X": (N, I), "wx": P(I, 4 * H), "bias": (4 * H,), "wh": P(H, 4 * H),
                          "HH": (B + N, H), "CC": (B + N, H), "G": (N, 4 * H), "TC": (N, H),
                          **ROWS}, (T, B, H, I)),
    "lstm_seq_backward": ({"G": (N, 4 * H), "CC": (B + N, H), "TC": (N, H), "dY": (N, H),
                           "w": P(4 * H, H + I), "run_h": (B, H), "run_c": (B, H),
                           "dAT": (4 * H, N), "dX": (N, I), "db": (NT, 4 * H), **ROWS},
                          (T, B, H, I)),
    "gru_seq_forward": ({"xp": (N, 3 * H), "wh": P(H, 3 * H), "bh": (3 * H,), "HH": (B + N, H),
                         "G": (N, 3 * H), "R": (N, 3 * H), **ROWS}, (T, B, H)),
    "gru_seq_backward": ({"G": (N, 3 * H), "R": (N, 3 * H), "HH": (B + N, H), "dY": (N, H),
                          "w": P(3 * H, H), "run": (B, H), "dXP": (N, 3 * H),
                          "DQT": (3 * H, N), "db": (NT, 3 * H), **ROWS}, (T, B, H)),
    "gru_cho_seq_forward": ({"xp": (N, 3 * H), "wrz": P(H, 2 * H), "wn": P(H, H),
                             "HH": (B + N, H), "G": (N, 3 * H), "RH": (N, H), **ROWS},
                            (T, B, H)),
    "gru_cho_seq_backward": ({"G": (N, 3 * H), "HH": (B + N, H), "dY": (N, H),
                              "wrz": P(2 * H, H), "wn": P(H, H), "run": (B, H),
                              "dA": (N, 3 * H), "DAT": (3 * H, N), **ROWS}, (T, B, H)),
    "rnn_seq_forward": ({"xp": (N, H), "wh": P(H, H), "HH": (B + N, H), "A": (N, H), **ROWS},
                        (T, B, H, False)),
    "rnn_seq_backward": ({"HH": (B + N, H), "dY": (N, H), "w": P(H, H), "run": (B, H),
                          "dA": (N, H), "DAT": (H, N), **ROWS}, (T, B, H, True)),
    "lnlstm_seq_forward": ({"X": (N, I), "wx": P(I, 4 * H), "wh": P(H, 4 * H),
                            "g_ih": (4 * H,), "beta": (4 * H,), "g_hh": (4 * H,), "g_c": (H,),
                            "b_c": (H,), "drop": (N, H), "zone": (N, H), "fill": (2 * H,),
                            "P": (N, 4 * H), "R": (N, 4 * H), "HH": (B + N, H),
                            "CC": (B + N, H), "G": (N, 4 * H), "ST": (N, 6), "CPRE": (N, H),
                            "TC": (N, H), **ROWS}, (T, B, H, I, 1e-5)),
    "lnlstm_seq_backward": ({"P": (N, 4 * H), "R": (N, 4 * H), "g_ih": (4 * H,),
                             "g_hh": (4 * H,), "g_c": (H,), "G": (N, 4 * H), "ST": (N, 6),
                             "CPRE": (N, H), "TC": (N, H), "CC": (B + N, H), "drop": (N, H),
                             "zone": (N, H), "fill": (2 * H,), "dY": (N, H),
                             "wh": P(4 * H, H), "wx": P(4 * H, I), "run_h": (B, H),
                             "run_c": (B, H), "DRT": (4 * H, N), "DPT": (4 * H, N),
                             "dX": (N, I), "acc": (NT, 14 * H), **ROWS}, (T, B, H, I)),
    "minrnn_forward": ({"pre": (B, T, 2 * H), "h0": (B, H), "lens": ((B,), I64),
                        "h": (B, T, H)}, (B, T, H, False)),
    "minrnn_backward": ({"pre": (B, T, 3 * H), "h0": (B, H), "h": (B, T, H),
                         "lens": ((B,), I64), "dh": (B, T, H), "dpre": (B, T, 3 * H),
                         "dh0": (B, H)}, (B, T, H, True)),
}
UNITS = native.PW // 4
NP = -(-H // UNITS)


def spec(s):
    return s if isinstance(s[0], tuple) else (s, torch.float32)


def valid(name, shape, dtype):
    if name == "sizes":
        return torch.tensor(SIZES)
    if name == "offs":
        return torch.tensor(OFFS)
    if name == "lens":
        return torch.full(shape, T, dtype=dtype)
    if name == "fill":
        return torch.ones(shape)
    return torch.zeros(shape, dtype=dtype)


def wrong(kind, t):
    if kind == "dtype":
        return t.to(torch.float64 if t.dtype != torch.float64 else torch.float32)
    if kind == "noncontiguous":
        return torch.stack([t, t], -1)[..., 0]
    return torch.zeros(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype) if t.dim() else t


def args(fn):
    tensors, rest = CASES[fn]
    return {k: valid(k, *spec(s)) for k, s in tensors.items()}, rest


BF16 = {n for n in bindings.SIGNATURES if "bf16" in n}  # test_bf16_bindings_refuse_float32


def test_every_entry_point_has_a_binding():
    assert set(CASES) | {"rnnkit_threads", "lstm_stack_step", "lstm_stack_run"} | BF16 == set(
        bindings.SIGNATURES)


def test_bf16_bindings_refuse_float32_weights():
    T, B, H, I = 2, 1, 4, 3
    N = T * B
    bf = torch.bfloat16
    sizes, offs = torch.tensor([B] * T), torch.arange(T) * B
    ok = dict(X=torch.zeros(N, bindings.even(I), dtype=bf),
              wx=torch.zeros(bindings.panels_bf16(I, 4 * H), dtype=bf),
              bias=torch.zeros(4 * H), wh=torch.zeros(bindings.panels_bf16(H, 4 * H), dtype=bf),
              HH=torch.zeros(B + N, H), HB=torch.zeros(B + N, bindings.even(H), dtype=bf),
              CC=torch.zeros(B + N, H), G=torch.zeros(N, 4 * H), TC=torch.zeros(N, H))
    with pytest.raises(ValueError, match="wx"):
        bindings.lstm_seq_forward_bf16(**{**ok, "wx": ok["wx"].float()}, sizes=sizes,
                                       offs=offs, T=T, B=B, H=H, I=I)


@pytest.mark.parametrize("fn", list(CASES))
def test_well_formed_call_runs(fn):
    ts, rest = args(fn)
    getattr(bindings, fn)(*ts.values(), *rest)


@pytest.mark.parametrize("kind", ["dtype", "noncontiguous", "shape"])
@pytest.mark.parametrize("fn", list(CASES))
def test_bad_tensor_is_a_value_error_naming_it(fn, kind):
    ts, rest = args(fn)
    for name in ts:
        bad = dict(ts)
        bad[name] = wrong(kind, ts[name])
        with pytest.raises(ValueError, match=rf"^{fn}: {name} must") as e:
            getattr(bindings, fn)(*bad.values(), *rest)
        msg = str(e.value)
        expected = {"dtype": "got float", "noncontiguous": "contiguous",
                    "shape": f"got {tuple(bad[name].shape)}"}[kind]
        assert expected in msg, msg


def stack():
    wx = [torch.zeros(NP, I, native.PW), torch.zeros(NP, H, native.PW)]
    wh = [torch.zeros(NP, H, native.PW) for _ in range(2)]
    bias = [torch.zeros(NP * native.PW) for _ in range(2)]
    return wx, wh, bias


def test_stack_step_checks_weights_once_and_states_per_call():
    wx, wh, bias = stack()
    w = bindings.StackWeights(wx, wh, bias, I=I, H=H)
    states = {n: torch.zeros(2, B, H) for n in ("h_prev", "c_prev", "h", "c")}
    x = torch.zeros(B, I)
    bindings.lstm_stack_step(x, w, *states.values(), B)
    for kind in ("dtype", "noncontiguous", "shape"):
        for k, lst in (("wx", wx), ("wh", wh), ("bias", bias)):
            parts = {"wx": list(wx), "wh": list(wh), "bias": list(bias)}
            parts[k] = [wrong(kind, lst[0]), lst[1]]
            with pytest.raises(ValueError, match=rf"^lstm_stack_step: {k}\[0\] must"):
                bindings.StackWeights(*parts.values(), I=I, H=H)
        with pytest.raises(ValueError, match=r"^lstm_stack_step: x must"):
            bindings.lstm_stack_step(wrong(kind, x), w, *states.values(), B)
        for name in states:
            bad = dict(states)
            bad[name] = wrong(kind, states[name])
            with pytest.raises(ValueError, match=rf"^lstm_stack_step: {name} must"):
                bindings.lstm_stack_step(x, w, *bad.values(), B)


def test_rows_must_describe_the_batch():
    ts, rest = args("rnn_seq_forward")
    ts["sizes"] = torch.tensor([B + 1, 2, 1])
    with pytest.raises(ValueError, match=r"sizes\[0\] must be in \[1, B=2\]"):
        bindings.rnn_seq_forward(*ts.values(), *rest)


def test_only_the_bindings_pass_addresses():
    root = Path(bindings.__file__).parent
    users = [p.name for p in root.glob("*.py") if re.search(r"data_ptr\(", p.read_text())]
    assert users == ["bindings.py"]


def test_lstm_forward_takes_a_projected_input():
    """``wx`` and ``bias`` None: ``X`` is ``x W_ih^T + bias`` already (the stepper's table),
    with the same result as the projection done inside; a half-given form is refused."""
    torch.manual_seed(0)
    ts, (T_, B_, H_, I_) = args("lstm_seq_forward")
    w_ih, bias = torch.randn(4 * H_, I_), torch.randn(4 * H_)
    ts.update(X=torch.randn(*ts["X"].shape), wx=native.pack(w_ih.t()), bias=bias,
              wh=native.pack(torch.randn(H_, 4 * H_)))
    bindings.lstm_seq_forward(*ts.values(), T_, B_, H_, I_)
    want = ts["HH"].clone()
    xp = torch.addmm(bias, ts["X"], w_ih.t())
    proj = {**ts, "X": xp, "wx": None, "bias": None, "HH": torch.zeros_like(ts["HH"]),
            "CC": torch.zeros_like(ts["CC"])}
    bindings.lstm_seq_forward(*proj.values(), T_, B_, H_, 4 * H_)
    torch.testing.assert_close(proj["HH"], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"projected X needs wx and bias None and I = 4H"):
        bindings.lstm_seq_forward(*{**proj, "bias": bias}.values(), T_, B_, H_, 4 * H_)


def test_stack_run_equals_stack_steps_and_checks_its_tensors():
    """``lstm_stack_run`` (a chunk of T steps in one call) equals T calls of
    ``lstm_stack_step``, from ``x`` or from layer 0's pre-activations in pack_units' order;
    its tensors are checked like every binding's, and exactly one input is given."""
    torch.manual_seed(0)
    L_, b, I_, H_, T_ = 2, 3, 5, 9, 4
    lstm = rnnkit.LSTM(I_, H_, num_layers=L_)
    cells = lstm.cells
    w = bindings.StackWeights(
        [native.pack_units(c.weight_ih.detach()) for c in cells],
        [native.pack_units(c.weight_hh.detach()) for c in cells],
        [native.pack_units((c.bias_ih + c.bias_hh).detach()) for c in cells], I=I_, H=H_)
    x = torch.randn(T_, b, I_)
    h0, c0 = torch.randn(L_, b, H_), torch.randn(L_, b, H_)
    h, c, want = h0.clone(), c0.clone(), []
    for t in range(T_):
        hn, cn = torch.empty_like(h), torch.empty_like(c)
        bindings.lstm_stack_step(x[t].contiguous(), w, h, c, hn, cn, b)
        h, c = hn, cn
        want.append(h[-1])
    c0_ = cells[0]
    pre = x.reshape(T_ * b, I_) @ c0_.weight_ih.detach().t() + (c0_.bias_ih + c0_.bias_hh).detach()
    for inp in ({"x": x, "xp": None},
                {"x": None, "xp": native.pack_units_rows(pre).view(T_, b, -1)}):
        hr, cr, Y = h0.clone(), c0.clone(), torch.empty(T_, b, H_)
        bindings.lstm_stack_run(inp["x"], inp["xp"], w, hr, cr, torch.empty_like(hr),
                                torch.empty_like(cr), Y, T_, b)
        torch.testing.assert_close(Y, torch.stack(want), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close((hr, cr), (h, c), atol=1e-6, rtol=1e-6)
    scratch = (torch.empty(L_, b, H_), torch.empty(L_, b, H_), torch.empty(T_, b, H_))
    with pytest.raises(ValueError, match=r"^lstm_stack_run: give exactly one of x and xp, got "
                                         r"both"):
        bindings.lstm_stack_run(x, x, w, h0.clone(), c0.clone(), *scratch, T_, b)
    with pytest.raises(ValueError, match=r"^lstm_stack_run: h must have shape \(2, 3, 9\)"):
        bindings.lstm_stack_run(x, None, w, torch.zeros(2, 3, 8), c0.clone(), *scratch, T_, b)
