"""Export every rnnkit layer family to ONNX and compare onnxruntime with PyTorch: 2 layers,
bidirectional, ragged lengths and a carried state, at a batch and length other than the
export example's (7 x 40); and the step graph run 50 times against the whole sequence. The last
column is the float64 model's sensitivity: how far its outputs move, in units of 1e-7, when
the input moves by 1e-7 relative (one float32 rounding). A second table follows that
difference along time for LayerNormLSTM and LSTM (1 layer, 7 x 80): a chaotic model (one whose
small differences grow step by step) separates float32 from float64 further at every step, in
onnxruntime and in PyTorch alike.

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
    for name, (cls, kw) in FAMILIES.items():
        torch.manual_seed(0)
        bi = cls(16, 32, num_layers=2, bidirectional=True, **kw).eval()
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
        uni = cls(16, 32, num_layers=2, **kw).eval()
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


def growth(steps: tuple[int, ...] = (5, 10, 20, 40, 80)) -> None:
    """Largest |difference| over the first ``T`` steps of one 80-step input: onnxruntime vs
    PyTorch float32, PyTorch float32 vs float64, and the float64 sensitivity (as above)."""
    d = Path(tempfile.mkdtemp())
    print("\n| family (1 layer, 16 -> 32, batch 7) | " + " | ".join(f"T = {T}" for T in steps)
          + " |")
    print("|---|" + "---|" * len(steps))
    for name in ("LayerNormLSTM", "LSTM"):
        cls, kw = FAMILIES[name]
        torch.manual_seed(0)
        m = cls(16, 32, **kw).eval()
        path = export_onnx(m, (torch.randn(2, 5, 16),), d / "g.onnx")
        exact = copy.deepcopy(m).double()
        exact.kernel = "reference"
        x = torch.randn(7, max(steps), 16)
        dx = torch.randn_like(x, dtype=torch.float64) * 1e-7 * x.double().abs()
        with torch.no_grad():
            y32, y64, moved = m(x)[0], exact(x.double())[0], exact(x.double() + dx)[0]
        ort = run_onnx(path, x)[0]
        cells = []
        for T in steps:
            e_ort = float(np.abs(ort[:, :T] - y32[:, :T].numpy()).max())
            e_64 = float((y32[:, :T].double() - y64[:, :T]).abs().max())
            sens = float((moved[:, :T] - y64[:, :T]).abs().max()) / 1e-7
            cells.append(f"{e_ort:.1e} / {e_64:.1e} / {sens:.0f}")
        print(f"| {name}: ORT vs PyTorch / PyTorch f32 vs f64 / sensitivity | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
    growth()
