"""Forecasting networks and their losses.

:class:`ForecastNet` reads the lookback window ``past`` ``(B, L, F)`` with an rnnkit
RNN/LSTM/GRU stack (the latent autoregressive model: the past summarised in a hidden state)
and predicts ``(B, H, N, D)``: for each of ``H`` steps and ``N`` targets, ``D`` numbers, by
the head: ``point`` (D = 1), ``gaussian`` (mean, scale; D = 2) or ``quantile`` (one per
quantile). Two architectures:

* ``direct``: one linear map from the last hidden state and the known-future features of all
  ``H`` steps to all ``H`` outputs at once;
* ``seq2seq``: a decoder cell, started from the encoder's state, runs over the horizon reading
  the known-future features and its previous step's value: the truth while training (teacher
  forcing; ``sampling`` > 0 feeds its own prediction with that probability: scheduled
  sampling), its own prediction at inference.

Predictions are offsets from the last observed (normalised) target value, so an untrained
network starts near the naive forecast.

The buffer ``interval_offset`` ``(H, N)`` (normalised units, saved with the weights) widens
(or narrows) the central interval by conformalised quantile regression (Romano et al. 2019):
the task sets it from the validation origins' errors, so the interval covers its level there
(``ForecastTask.evaluate``, ``task.conformal_offset``). ``forward`` does not use it;
decoding the output does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import CELLS
from rnnkit.tasks.common import one_of

HEADS = ("point", "gaussian", "quantile")
ARCHS = ("direct", "seq2seq")
FORECAST_CELLS = ("rnn", "lstm", "gru")


class ForecastNet(nn.Module):
    """``forward(past (B, L, F), future (B, H, K), y=None) -> (B, H, N, D)`` (see the module
    docstring); ``y`` ``(B, H, N)`` (normalised targets) is used only by the seq2seq decoder
    while training (teacher forcing)."""

    def __init__(self, n_features: int, n_known: int, n_target: int, horizon: int, *,
                 cell: str = "gru", hidden: int = 64, layers: int = 1, dropout: float = 0.0,
                 head: str = "quantile", quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
                 arch: str = "direct", sampling: float = 0.0) -> None:
        super().__init__()
        one_of("cell", cell, FORECAST_CELLS)
        one_of("head", head, HEADS)
        one_of("arch", arch, ARCHS)
        self.n_known, self.n_target, self.horizon = n_known, n_target, horizon
        self.head_kind, self.arch, self.sampling = head, arch, sampling
        self.quantiles = tuple(float(q) for q in quantiles)
        self.D = {"point": 1, "gaussian": 2, "quantile": len(self.quantiles)}[head]
        self.encoder = CELLS[cell](n_features, hidden, num_layers=layers,
                                   dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        out = n_target * self.D
        if arch == "direct":
            self.head = nn.Linear(hidden + horizon * n_known, horizon * out)
        else:
            self.decoder = CELLS[cell](n_target + n_known, hidden, num_layers=layers)
            self.head = nn.Linear(hidden, out)
        with torch.no_grad():  # start from the last value (offset 0) with unit scale
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.register_buffer("interval_offset", torch.zeros(horizon, n_target))

    def forward(self, past: Tensor, future: Tensor, y: Tensor | None = None) -> Tensor:
        B, H, N = past.shape[0], self.horizon, self.n_target
        enc, state = self.encoder(past)
        last = past[:, -1, :N]  # (B, N) last target value (normalised)
        if self.arch == "direct":
            z = torch.cat([self.drop(enc[:, -1]), future.reshape(B, -1)], 1)
            out = self.head(z).view(B, H, N, self.D)
        else:
            prev, outs = last, []
            for h in range(H):
                inp = torch.cat([prev, future[:, h]], 1)[:, None]
                dec, state = self.decoder(inp, state)
                o = self.head(self.drop(dec[:, 0])).view(B, N, self.D)
                outs.append(o)
                point = last + self._center(o)
                if y is not None and self.training:
                    prev = y[:, h]
                    if self.sampling > 0:
                        use_own = torch.rand(B, 1, device=past.device) < self.sampling
                        prev = torch.where(use_own, point.detach(), prev)
                    prev = torch.nan_to_num(prev)
                else:
                    prev = point
            out = torch.stack(outs, 1)
        return self._offset(out, last)

    def _center(self, o: Tensor) -> Tensor:
        """The point forecast's offset within one step's output ``(..., D)``."""
        if self.head_kind == "quantile":
            return o[..., self.median_index]
        return o[..., 0]

    @property
    def median_index(self) -> int:
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))

    def _offset(self, out: Tensor, last: Tensor) -> Tensor:
        lastb = last[:, None, :, None]
        if self.head_kind == "gaussian":
            return torch.stack([out[..., 0] + lastb[..., 0],
                                F.softplus(out[..., 1] + 0.5413) + 1e-3], -1)  # softplus⁻¹(1)
        if self.head_kind == "quantile":  # sorted quantiles: no crossing
            return lastb + torch.sort(out, -1).values
        return lastb + out


# -- losses (masked: missing targets do not count) ---------------------------------------------
def _masked_mean(v: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(v.dtype)
    return (v * m).sum() / m.sum().clamp_min(1.0)


def gaussian_nll(mean: Tensor, scale: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Mean over observed entries of ``-log N(y; mean, scale²)`` = ``log σ + ½ log 2π +
    (y - μ)² / (2σ²)``."""
    y = torch.nan_to_num(y)
    v = torch.log(scale) + 0.5 * math.log(2 * math.pi) + (y - mean) ** 2 / (2 * scale ** 2)
    return _masked_mean(v, mask)


def pinball(pred: Tensor, y: Tensor, mask: Tensor, quantiles: tuple[float, ...]) -> Tensor:
    """Mean over observed entries and quantiles of ``max(q (y - ŷ_q), (q - 1)(y - ŷ_q))``;
    ``pred`` ``(..., Q)``, ``y`` and ``mask`` ``(...)``."""
    q = torch.tensor(quantiles, dtype=pred.dtype, device=pred.device)
    d = torch.nan_to_num(y)[..., None] - pred
    v = torch.maximum(q * d, (q - 1) * d).mean(-1)
    return _masked_mean(v, mask)


def point_loss(pred: Tensor, y: Tensor, mask: Tensor, kind: str = "mse") -> Tensor:
    d = pred - torch.nan_to_num(y)
    return _masked_mean(d * d if kind == "mse" else d.abs(), mask)


def forecast_loss(model: ForecastNet, out: Tensor, y: Tensor, mask: Tensor,
                  point: str = "mse") -> Tensor:
    """The head's loss on ``out`` ``(B, H, N, D)`` against ``y`` ``(B, H, N)``."""
    if model.head_kind == "gaussian":
        return gaussian_nll(out[..., 0], out[..., 1], y, mask)
    if model.head_kind == "quantile":
        return pinball(out, y, mask, model.quantiles)
    return point_loss(out[..., 0], y, mask, point)
