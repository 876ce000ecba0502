"""The own fast path (kernel="fast") against the reference loop: outputs, final states, and the
gradients of every weight, the input and the initial state; recordings and their gradients."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import native

FAMILIES = {
    "rnn_tanh": (rnnkit.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, {}),
    "gru": (rnnkit.GRU, {}),
    "gru_reset_before": (rnnkit.GRU, {"reset_after": False}),
}
B, T, I, H = 4, 7, 5, 6
LENGTHS = {"none": None, "varied": [7, 3, 1, 5], "all_full": [7, 7, 7, 7], "ties": [2, 5, 2, 5]}


def pair(family, **kw):
    cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    ref = cls(I, H, kernel="reference", **extra, **kw)
    fast = cls(I, H, kernel="fast", **extra, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def run(layer, x, state, lengths, record=False):
    """Outputs, final state, recordings and every gradient of a random projection of them."""
    xx = x.clone().requires_grad_(True)
    st_ = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    arg = None if st_ is None else (st_ if len(st_) == 2 else st_[0])
    recs = {}
    if record:
        with rnnkit.record(layer, detach=False) as rec:
            out, fin = layer(xx, arg, lengths=lengths)
        recs = {n: rec.only[n] for n in rec.only.names}
    else:
        out, fin = layer(xx, arg, lengths=lengths)
    fin = fin if isinstance(fin, tuple) else (fin,)
    g = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum()
               for v in (out, *fin, *recs.values()))
    layer.zero_grad()
    loss.backward()
    grads = [xx.grad] + ([s.grad for s in st_] if st_ else [])
    grads += [p.grad for p in layer.parameters()]
    return [out, *fin, *recs.values()], grads, layer.last_kernel


def check(family, layers, bidir, lengths, use_state, record=False, b=B, t=T, dtype=None):
    ref, fast = pair(family, num_layers=layers, bidirectional=bidir)
    if dtype is not None:
        ref, fast = ref.to(dtype), fast.to(dtype)
    D = 2 if bidir else 1
    x = torch.randn(b, t, I, dtype=dtype)
    n_state = 2 if family == "lstm" else 1
    state = (tuple(torch.randn(layers * D, b, H, dtype=dtype) for _ in range(n_state))
             if use_state else None)
    lengths = None if lengths is None else torch.tensor(lengths)
    v1, g1, k1 = run(ref, x, state, lengths, record)
    v2, g2, k2 = run(fast, x, state, lengths, record)
    assert (k1, k2) == ("reference", "fast")
    assert len(v1) == len(v2) and len(g1) == len(g2)
    for a, c in zip(v2 + g2, v1 + g1, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,layers,bidir,lengths,use_state", list(itertools.product(
    FAMILIES, [1, 2], [False, True], LENGTHS, [False, True])))
def test_fast_equals_reference(family, layers, bidir, lengths, use_state):
    check(family, layers, bidir, LENGTHS[lengths], use_state)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lengths", ["none", "varied"])
def test_recording_on_fast_equals_reference_with_gradients(family, lengths):
    """Recorded states and gates, and gradients that flow through them (detach=False)."""
    check(family, 2, True, LENGTHS[lengths], True, record=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lengths", ["none", "varied"])
def test_lstm_rows_split_over_threads_equal_reference(threads, lengths):
    """From 8 rows on, the C steps split the batch over torch's OpenMP threads (with ragged
    lengths the active rows fall below 8 at the end: both regimes in one run)."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check("lstm", 2, True, None if lengths == "none" else LENGTHS["varied"] * 4, True,
              b=16)
    finally:
        torch.set_num_threads(old)


@settings(max_examples=12, deadline=None)
@given(family=st.sampled_from(sorted(FAMILIES)), b=st.integers(1, 20), t=st.integers(1, 9),
       layers=st.integers(1, 2), bidir=st.booleans(), use_lengths=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fast_equals_reference_hypothesis(family, b, t, layers, bidir, use_lengths, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g).tolist() if use_lengths else None
    torch.manual_seed(seed)
    check(family, layers, bidir, lengths, True, b=b, t=t)


def test_fast_float64():
    check("lstm", 1, True, LENGTHS["varied"], True, dtype=torch.float64)


def test_auto_dispatch_prefers_fused_then_fast():
    x = torch.randn(B, T, I)
    assert kernels.select(rnnkit.LSTM(I, H), x, None, False) == "fused"
    assert kernels.select(rnnkit.LSTM(I, H), x, None, True) == "fast"  # recording
    ragged, full = torch.tensor([T, 3, 1, 5]), torch.full((B,), T)
    assert kernels.select(rnnkit.LSTM(I, H), x, ragged, False) == "fast"  # no packing on CPU
    assert kernels.select(rnnkit.LSTM(I, H), x, full, False) == "fused"
    assert kernels.select(rnnkit.GRU(I, H, reset_after=False), x, None, False) == "fast"
    half = rnnkit.LSTM(I, H, kernel="fast").to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32/float64"):
        half(x.to(torch.bfloat16))


def test_fast_dropout_between_layers_only_in_training():
    ref, fast = pair("lstm", num_layers=2, dropout=0.5)
    x = torch.randn(B, T, I)
    ref.eval(), fast.eval()
    torch.testing.assert_close(fast(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
    fast.train()
    torch.manual_seed(0)
    a = fast(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, fast(x)[0])


def test_c_kernels_share_torchs_openmp_runtime():
    """Built with OpenMP, the C library must use the libgomp torch loaded (one thread team),
    never a second runtime whose threads would spin against torch's. In a fresh interpreter:
    other libraries (scikit-learn) bring their own."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    probe = ("import torch\nfrom rnnkit.kernels import native\nlib = native.lib()\n"
             "maps = {l.split()[-1] for l in open('/proc/self/maps') if 'omp' in l}\n"
             "print(lib is not None, len(maps), lib.rnnkit_threads() if lib else 0, "
             "torch.get_num_threads())")
    built, runtimes, ours, torchs = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    if built != "True":
        pytest.skip("no C compiler for rnnkit's kernels")
    assert int(runtimes) <= 1
    assert ours == torchs


def test_c_source_compiles_in_every_variant(tmp_path):
    """A mistake in the C must fail here, loudly, not leave the fast paths silently on their
    torch fallback: the sources (src/rnnkit/kernels/csrc) compile, with ``-Wall -Wextra
    -Werror``, in every variant the build tries (each ISA's flags with OpenMP where it links,
    and without; plain C), and the library loads."""
    import os
    import shutil
    import subprocess

    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None or os.environ.get("RNNKIT_NATIVE") == "0":
        pytest.skip("no C compiler for rnnkit's kernels")
    for flags in native._flag_sets():
        cmd = native.compile_command(cc, [*flags, "-Wall", "-Wextra", "-Werror"],
                                     tmp_path / "k.so")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode and "-fopenmp" in flags and any(
                m in done.stderr for m in ("omp.h", "-lgomp", "libgomp")):
            continue  # no OpenMP runtime to link here: the serial build serves
        assert done.returncode == 0, (flags, done.stderr[-3000:])
    assert native.lib() is not None


def test_bf16_code_is_optional_in_the_build(tmp_path):
    """The bfloat16 kernels (csrc/bf16.c) compile only where the compiler knows AVX512-BF16:
    built without them (-DRNNKIT_NO_BF16, as with an older compiler), every variant still
    compiles with -Wall -Wextra -Werror, the library loads, says it has no bfloat16 kernels and
    their entry points return 2 (not built) instead of running."""
    import ctypes
    import os
    import shutil
    import subprocess

    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None or os.environ.get("RNNKIT_NATIVE") == "0":
        pytest.skip("no C compiler for rnnkit's kernels")
    for i, flags in enumerate(f for f in native._flag_sets() if "-fopenmp" not in f):
        out = tmp_path / f"k{i}.so"
        cmd = native.compile_command(cc, [*flags, "-Wall", "-Wextra", "-Werror",
                                          "-DRNNKIT_NO_BF16"], out)
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, (flags, done.stderr[-3000:])
        lib = ctypes.CDLL(str(out))
        assert lib.rnnkit_bf16_supported() == 0
        assert lib.lstm_seq_forward_bf16(*[None] * 11, *[ctypes.c_long(1)] * 4) == 2


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("family", ["lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu"])
def test_whole_sequence_c_equals_reference(family, threads, ragged):
    """LSTM, GRU (both forms) and RNN run each pass as one C call that multiplies 8 rows at a
    time against 32-column panels of W_hh, each thread owning blocks of 16 rows from 32 rows
    on: 32 rows (whole blocks: dA^T goes out in streaming stores of whole lines), or 37 (two
    blocks and a partial one, ragged so blocks shrink mid-sequence); H = 40 (LSTM: 4H = 160,
    five panels; backward, [W_hh | W_ih] has 47 columns: a padded second panel; GRU: 3H =
    120, a padded fourth panel). Against the reference loop (outputs, final states, every
    gradient), within 1e-5 of each tensor's scale (its largest value, at least 1): the weight
    gradients are sums over all 352 rows, up to ~70 here, and a different summation order moves
    them by up to 7e-5 in float32 (seen on an AMX Xeon)."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        cls, kw = FAMILIES[family]
        ref = cls(7, 40, kernel="reference", bidirectional=True, **kw)
        fast = cls(7, 40, kernel="fast", bidirectional=True, **kw)
        fast.load_state_dict(ref.state_dict())
        B = 37 if ragged else 32
        x = torch.randn(B, 11, 7)
        state = tuple(torch.randn(2, B, 40) for _ in ref.state_names)
        lengths = None
        if ragged:
            lengths = torch.randint(1, 12, (B,), generator=torch.Generator().manual_seed(3))
            lengths[0] = 11
        v1, g1, k1 = run(ref, x, state, lengths)
        v2, g2, k2 = run(fast, x, state, lengths)
        assert (k1, k2) == ("reference", "fast")
        for a, c in zip(v2 + g2, v1 + g1, strict=True):
            scale = max(1.0, float(c.detach().abs().max()))
            torch.testing.assert_close(a, c, atol=1e-5 * scale, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


def test_c_sources_ship_as_package_data():
    """Every file of src/rnnkit/kernels/csrc matches a pattern of pyproject's package data, so
    a (non-editable) wheel carries what the build compiles at first use."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["rnnkit"]
    files = [f.relative_to(root / "src" / "rnnkit").as_posix() for f in native.CSRC.iterdir()]
    assert native.MAIN in native.sources() and len(files) >= 8
    for f in files:
        assert any(fnmatch.fnmatch(f, p) for p in patterns), f


@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_kernel_says_which_implementation_ran(family):
    """The C-or-torch choice is made once per call and reported: ``last_kernel.backend`` is
    ``"c"`` on CPU float32 where the C kernels are built, ``"torch"`` in float64;
    ``last_kernel.runs`` joins both (``"fast:c"``)."""
    _, layer = pair(family)
    layer(torch.randn(2, 3, I))
    want = "c" if native.lib() is not None else "torch"
    assert layer.last_kernel == "fast" and layer.last_kernel.backend == want
    assert layer.last_kernel.runs == f"fast:{want}"
    layer.double()(torch.randn(2, 3, I, dtype=torch.float64))
    assert layer.last_kernel.runs == "fast:torch"
