"""Export every rnnkit layer family to ONNX and compare onnxruntime with PyTorch: 2 layers,
bidirectional, ragged lengths and a carried state, at a batch and length other than the
export example's (7 x 40); and the step graph run 50 times against the whole sequence. The last
column is the float64 model's sensitivity: how far its outputs move, in units of 1e-7, when
the input moves by 1e-7 relative (one float32 rounding). A second table follows that
difference along time (1 layer, 7 x 80) for an untrained LayerNormLSTM, the same after 40 Adam
steps on a toy task, and an LSTM: a chaotic model (one whose small differences grow step by
step, as the untrained LayerNormLSTM's do) separates float32 from float64 further at every
step, in onnxruntime and in PyTorch alike; over 256 sequences onnxruntime's error from float64
is PyTorch float32's own (ratio about 1).

    python examples/export_check.py
"""

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

import rnnkit
from rnnkit.export import export_onnx, export_onnx_step, run_onnx

FAMILIES = {"RNN": (rnnkit.RNN, {}), "LSTM": (rnnkit.LSTM, {}), "GRU": (rnnkit.GRU, {}),
            "GRU reset_after=False": (rnnkit.GRU, {"reset_after": False}),
            "LayerNormLSTM": (rnnkit.LayerNormLSTM, {}), "MinGRU": (rnnkit.MinGRU, {}),
            "MinLSTM": (rnnkit.MinLSTM, {})}


def flat(out, st):
    return [out, *(st if isinstance(st, tuple) else (st,))]


def main() -> None:
    d = Path(tempfile.mkdtemp())
    print("| family | whole sequence: ORT vs PyTorch (lengths + state, 2 layers, bi) | "
          "ORT vs float64 / rnnkit float32 vs float64 | step graph x 50: ORT vs PyTorch | "
          "sensitivity |")
    print("|---|---|---|---|---|")
    rows = {name: (lambda bi, cls=cls, kw=kw: cls(16, 32, num_layers=2, bidirectional=bi,
                                                  **kw).eval())
            for name, (cls, kw) in FAMILIES.items()}
    rows["LayerNormLSTM, 40 Adam steps on a toy task"] = (
        lambda bi: trained_layernorm_lstm(2, bi))
    for name, make in rows.items():
        torch.manual_seed(0)
        bi = make(True)
        n = 4
        st0 = tuple(torch.zeros(n, 2, 32) for _ in bi.state_names)
        path = export_onnx(bi, (torch.randn(2, 5, 16), st0, torch.tensor([5, 3])), d / "a.onnx")
        x, lengths = torch.randn(7, 40, 16), torch.randint(1, 41, (7,))
        st = tuple(torch.randn(n, 7, 32) for _ in bi.state_names)
        exact = copy.deepcopy(bi).double()
        exact.kernel = "reference"
        with torch.no_grad():
            want = flat(*bi(x, st[0] if len(st) == 1 else st, lengths))
            st64 = tuple(t.double() for t in st)
            want64 = flat(*exact(x.double(), st64[0] if len(st) == 1 else st64, lengths))
        got = run_onnx(path, x, lengths, *st)
        e1 = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
        o64 = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want64, strict=True))
        r64 = max(float((w.double() - w64).abs().max()) for w, w64 in zip(want, want64,
                                                                         strict=True))
        # how far float64 outputs move when the input moves by one float32 rounding (1e-7,
        # relative): the error any float32 implementation must expect, in units of 1e-7
        dx = torch.randn_like(x, dtype=torch.float64) * 1e-7 * x.double().abs()
        with torch.no_grad():
            moved = flat(*exact(x.double() + dx, st64[0] if len(st) == 1 else st64, lengths))
        sens = max(float((a - b).abs().max()) for a, b in zip(moved, want64, strict=True)) / 1e-7
        uni = make(False)
        step = export_onnx_step(uni, d / "s.onnx")
        x = torch.randn(3, 50, 16)
        with torch.no_grad():
            want = flat(*uni(x))
        s = [np.zeros((2, 3, 32), np.float32) for _ in uni.state_names]
        ys = []
        for t in range(50):
            y, *s = run_onnx(step, x[:, t], *s)
            ys.append(y)
        got = [np.stack(ys, 1), *s]
        e2 = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
        print(f"| {name} | {e1:.1e} | {o64:.1e} / {r64:.1e} | {e2:.1e} | {sens:.1f} |")


def trained_layernorm_lstm(layers: int = 1, bidirectional: bool = False, steps: int = 40,
                           seed: int = 0) -> rnnkit.LayerNormLSTM:
    """A LayerNormLSTM (16 -> 32) after ``steps`` Adam steps (lr 1e-2, batch 16 x 30) on a toy
    memory task: output the first input feature of 3 steps back and the second of 3 steps
    ahead (so both directions of a bidirectional layer learn). Trained this little it is far
    better conditioned than at its start (its float64 outputs move ~5x a float32 rounding of
    the input, not ~100x). In eval mode."""
    torch.manual_seed(seed)
    layer = rnnkit.LayerNormLSTM(16, 32, num_layers=layers, bidirectional=bidirectional)
    head = torch.nn.Linear(layer.output_size, 2)
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(steps):
        x = torch.randn(16, 30, 16)
        y = torch.zeros(16, 30, 2)
        y[:, 3:, 0], y[:, :-3, 1] = x[:, :-3, 0], x[:, 3:, 1]
        loss = ((head(layer(x)[0]) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.eval()


def running_max(a, b) -> np.ndarray:
    """``(B, T)``: each row's largest |a - b| over its first ``t + 1`` steps and all units."""
    return np.maximum.accumulate(np.abs(np.asarray(a) - np.asarray(b)).max(-1), axis=1)


def growth(steps: tuple[int, ...] = (5, 10, 20, 40, 50, 80)) -> None:
    """Largest |difference| over the first ``T`` steps of one 80-step input (batch 7):
    onnxruntime vs PyTorch float32, PyTorch float32 vs float64, onnxruntime vs float64, and
    the float64 sensitivity (as above); then, over 256 sequences, onnxruntime's error from
    float64 over PyTorch float32's (geometric means over the sequences of each one's largest
    error over its first T steps), the statistic ``tests/test_export.py`` bounds."""
    d = Path(tempfile.mkdtemp())
    print("\n| model (1 layer, 16 -> 32) | " + " | ".join(f"T = {T}" for T in steps) + " |")
    print("|---|" + "---|" * len(steps))
    torch.manual_seed(0)
    untrained = rnnkit.LayerNormLSTM(16, 32).eval()
    torch.manual_seed(0)
    lstm = rnnkit.LSTM(16, 32).eval()
    models = {"LayerNormLSTM, untrained": untrained,
              "LayerNormLSTM, 40 Adam steps on a toy task": trained_layernorm_lstm(),
              "LSTM, untrained": lstm}
    g = torch.Generator().manual_seed(0)
    for name, m in models.items():
        path = export_onnx(m, (torch.randn(2, 5, 16),), d / "g.onnx")
        exact = copy.deepcopy(m).double()
        exact.kernel = "reference"
        x = torch.randn(7, max(steps), 16, generator=g)
        dx = torch.randn(x.shape, dtype=torch.float64, generator=g) * 1e-7 * x.double().abs()
        with torch.no_grad():
            y32, y64, moved = m(x)[0], exact(x.double())[0], exact(x.double() + dx)[0]
        ort = run_onnx(path, x)[0]
        e_ort, e_64, e_o64, e_dx = (running_max(a, b).max(0) for a, b in (
            (ort, y32), (y32, y64), (ort, y64), (moved, y64)))
        print(f"| {name}: ORT vs PyTorch / PyTorch f32 vs f64 / ORT vs f64 / sensitivity | "
              + " | ".join(f"{e_ort[T - 1]:.1e} / {e_64[T - 1]:.1e} / {e_o64[T - 1]:.1e} / "
                           f"{e_dx[T - 1] / 1e-7:.0f}" for T in steps) + " |")
        if name.startswith("LayerNormLSTM"):
            x = torch.randn(256, max(steps), 16, generator=g)
            with torch.no_grad():
                y32, y64 = m(x)[0].numpy(), exact(x.double())[0].numpy()
            ort = run_onnx(path, x)[0]
            e_ort, e_own = np.log(running_max(ort, y64)), np.log(running_max(y32, y64))
            ratio = np.exp(e_ort.mean(0) - e_own.mean(0))
            worst = running_max(ort, y32).max(0)
            print(f"| {name}, 256 sequences: ORT / PyTorch error from f64 (geometric mean) "
                  f"/ largest ORT vs PyTorch | "
                  + " | ".join(f"{ratio[T - 1]:.2f} / {worst[T - 1]:.1e}" for T in steps) + " |")


if __name__ == "__main__":
    main()
    growth()
