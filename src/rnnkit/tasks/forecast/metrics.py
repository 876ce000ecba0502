"""Forecast metrics (over observed target values only), the ladder table, and the plots.

Arrays are ``(B, H, N)``: origins, horizon steps, targets. ``mask`` marks observed truth.

* MAE, RMSE;
* MASE: MAE divided by the training period's in-sample seasonal-naive MAE,
  ``mean |y_t - y_{t-m}|`` (``m = 1``: the naive one-step error);
* sMAPE (percent): ``mean 200 |y - ŷ| / (|y| + |ŷ|)`` (0 where both are 0);
* for probabilistic forecasts: the coverage of the central interval (``lo <= y <= hi``),
  mean pinball loss of the quantiles, CRPS of the Gaussian
  (``σ [z (2Φ(z) - 1) + 2φ(z) - 1/√π]``, ``z = (y - μ)/σ``).

With several targets each metric is the mean over targets (each on its own scale).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def mase_scale(y_train: np.ndarray, observed: np.ndarray, m: int) -> np.ndarray:
    """``(N,)``: mean ``|y_t - y_{t-m}|`` over training pairs where both are observed."""
    d = np.abs(y_train[m:] - y_train[:-m])
    ok = observed[m:] & observed[:-m]
    s = np.array([d[ok[:, j], j].mean() if ok[:, j].any() else np.nan
                  for j in range(y_train.shape[1])])
    return np.where(s > 0, s, np.nan)


def _per_target(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over observed entries, per target: ``(B, H, N) -> (N,)``."""
    m = mask.astype(np.float64)
    return (np.where(mask, v, 0.0)).sum((0, 1)) / np.maximum(m.sum((0, 1)), 1)


def point_metrics(y: np.ndarray, pred: np.ndarray, mask: np.ndarray, scale: np.ndarray
                  ) -> dict[str, float]:
    e = pred - y
    mae = _per_target(np.abs(e), mask)
    rmse = np.sqrt(_per_target(e * e, mask))
    den = np.abs(y) + np.abs(pred)
    sm = np.where(den > 0, 200 * np.abs(e) / np.where(den > 0, den, 1), 0.0)
    return {"mae": float(mae.mean()), "rmse": float(rmse.mean()),
            "mase": float((mae / scale).mean()), "smape": float(_per_target(sm, mask).mean())}


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, mask: np.ndarray) -> float:
    """The fraction of observed truths inside ``[lo, hi]``."""
    inside = (y >= lo) & (y <= hi)
    return float(inside[mask].mean()) if mask.any() else math.nan


def pinball_np(y: np.ndarray, q_pred: np.ndarray, quantiles: tuple[float, ...],
               mask: np.ndarray) -> float:
    q = np.asarray(quantiles)
    d = y[..., None] - q_pred
    return float(np.maximum(q * d, (q - 1) * d).mean(-1)[mask].mean())


def crps_gaussian(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, mask: np.ndarray) -> float:
    from scipy.stats import norm
    z = (y - mu) / sigma
    c = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))
    return float(c[mask].mean())


def per_step_mae(y: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> list[float]:
    """MAE at each horizon step ``(H,)`` (over origins and targets)."""
    e = np.where(mask, np.abs(pred - y), 0.0)
    return (e.sum((0, 2)) / np.maximum(mask.sum((0, 2)), 1)).tolist()


def format_ladder(rows: dict[str, dict[str, float]], title: str) -> str:
    """The ladder as a Markdown table (MAE, RMSE, MASE, sMAPE, coverage)."""
    cov = any("coverage" in m for m in rows.values())
    head = "| model | MAE | RMSE | MASE | sMAPE % |" + (" 80% coverage |" if cov else "")
    lines = [title, "", head, "|---|---|---|---|---|" + ("---|" if cov else "")]
    best = min(rows.values(), key=lambda m: m["mae"])["mae"] if rows else None
    for name, m in rows.items():
        mae = f"**{m['mae']:.2f}**" if m["mae"] == best else f"{m['mae']:.2f}"
        c = (f" {m['coverage']:.3f} |" if "coverage" in m else " |") if cov else ""
        lines.append(f"| {name} | {mae} | {m['rmse']:.2f} | {m['mase']:.3f} | "
                     f"{m['smape']:.1f} |{c}")
    return "\n".join(lines)


def plot_forecasts(path: Path, time: np.ndarray | None, series: np.ndarray, t0: list[int],
                   preds: list[dict[str, np.ndarray]], lookback: int, target: str,
                   title: str, per_step: dict[str, list[float]] | None = None) -> None:
    """A few origins: the recent truth, the forecast and its interval; and (right) the MAE
    per horizon step of every model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(t0)
    cols = n + (1 if per_step else 0)
    fig, axes = plt.subplots(1, cols, figsize=(4.2 * cols, 3.4), squeeze=False)
    for ax, t, p in zip(axes[0], t0, preds, strict=False):
        H = len(p["point"])
        span = np.arange(max(0, t - min(lookback, 3 * H)), min(len(series), t + H))
        x = (time[span] if time is not None else span)
        xf = (time[t:t + H] if time is not None else np.arange(t, t + H))
        ax.plot(x, series[span], color="0.2", lw=1, label="truth")
        ax.plot(xf, p["point"], color="C0", lw=1.5, label="forecast")
        if "lo" in p:
            ax.fill_between(xf, p["lo"], p["hi"], color="C0", alpha=0.25,
                            label=f"{p.get('level', 0.8):.0%} interval")
        if "baseline" in p:
            ax.plot(xf, p["baseline"], color="C3", lw=1, ls="--", label=p["baseline_label"])
        ax.axvline(xf[0], color="0.6", lw=0.8, ls=":")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        when = t if time is None else time[t]
        if isinstance(when, np.datetime64):  # to the minute, not the nanosecond
            when = str(when.astype("datetime64[m]")).replace("T", " ")
        ax.set_title(f"origin {when}"[:30], fontsize=8)
        ax.set_ylabel(target, fontsize=8)
    axes[0][0].legend(fontsize=7)
    if per_step:
        ax = axes[0][-1]
        for name, v in per_step.items():
            ax.plot(np.arange(1, len(v) + 1), v, label=name, lw=2 if "rnnkit" in name else 1)
        ax.set_xlabel("steps ahead")
        ax.set_ylabel("MAE")
        ax.set_title("error by horizon step", fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(y: np.ndarray, out: dict[str, np.ndarray], mask: np.ndarray, scale: np.ndarray,
              quantiles: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Metrics of one model's forecasts ``out`` (``point``, optional ``lo``/``hi``,
    ``quantiles`` ``(B, H, N, Q)``, ``mean``/``scale``)."""
    m: dict[str, Any] = point_metrics(y, out["point"], mask, scale)
    if "lo" in out:
        m["coverage"] = coverage(y, out["lo"], out["hi"], mask)
    if "quantiles" in out and quantiles:
        m["pinball"] = pinball_np(y, out["quantiles"], quantiles, mask)
    if "scale" in out:
        m["crps"] = crps_gaussian(y, out["point"], out["scale"], mask)
    m["per_step_mae"] = per_step_mae(y, out["point"], mask)
    return m
