"""The autoregressive ladder as baselines, fitted on the training period and forecast from
the same origins as the network:

* ``naive``: the last value (conditions on the whole past only through its end);
* ``seasonal naive``: the value one season earlier;
* ``Markov AR(1)``: the first-order Markov model, statsmodels ``AutoReg(lags=1)``;
* ``AR(p)``: ``p`` chosen by AIC (statsmodels ``ar_select_order``), ``AutoReg(lags=p)``;
* ``VAR(p)``: statsmodels ``VAR`` over the targets and the numeric past covariates together
  (the multivariate AR: every series' lags predict every series), ``p`` by AIC; scored on the
  targets. Present when there is more than one such series.

The fits are statsmodels'; forecasting from thousands of origins uses the fitted
coefficients in one vectorised recursion (``tests/test_forecast.py`` checks it equals
statsmodels' own ``forecast``/``predict`` from each origin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def naive(y: np.ndarray, t: np.ndarray, H: int) -> np.ndarray:
    """``(B, H, N)``: ``y[t - 1]`` for every step; ``y`` ``(T, N)``, origins ``t`` ``(B,)``."""
    return np.repeat(y[t - 1][:, None], H, 1)


def seasonal_naive(y: np.ndarray, t: np.ndarray, H: int, m: int) -> np.ndarray:
    """``(B, H, N)``: step ``h`` (0-based) takes ``y[t + h - m (1 + h // m)]``, the same
    season's last value."""
    h = np.arange(H)
    idx = t[:, None] + h[None] - m * (1 + h[None] // m)
    return y[idx]


@dataclass
class ARFit:
    """An AR(p) with intercept ``c`` and lag coefficients ``phi`` ``(p,)`` (lag 1 first)."""

    c: float
    phi: np.ndarray
    results: Any = None  # statsmodels' AutoRegResults

    @property
    def p(self) -> int:
        return len(self.phi)

    def forecast(self, y: np.ndarray, t: np.ndarray, H: int) -> np.ndarray:
        """``(B, H)`` from origins ``t`` of the 1-D series ``y`` (iterated one-step)."""
        p = self.p
        hist = y[t[:, None] - np.arange(1, p + 1)[None]]  # (B, p): lag 1 first
        out = np.empty((len(t), H))
        for h in range(H):
            f = self.c + hist @ self.phi
            out[:, h] = f
            hist = np.concatenate([f[:, None], hist[:, :-1]], 1)
        return out


def fit_ar(y: np.ndarray, lags: int | None = None, maxlag: int = 48) -> ARFit:
    """statsmodels ``AutoReg`` with a constant on the 1-D training series ``y``: ``lags``
    given, or chosen by AIC among ``1..maxlag`` (``ar_select_order``)."""
    from statsmodels.tsa.ar_model import AutoReg, ar_select_order
    if lags is None:
        maxlag = max(1, min(maxlag, len(y) // 4))
        sel = ar_select_order(y, maxlag=maxlag, ic="aic", trend="c")
        lags = max(sel.ar_lags) if sel.ar_lags else 1
    res = AutoReg(y, lags=lags, trend="c").fit()
    return ARFit(float(res.params[0]), np.asarray(res.params[1:], dtype=np.float64), res)


@dataclass
class VARFit:
    """A VAR(p): intercept ``c`` ``(N,)``, coefficients ``A`` ``(p, N, N)`` (lag 1 first)."""

    c: np.ndarray
    A: np.ndarray
    results: Any = None

    @property
    def p(self) -> int:
        return self.A.shape[0]

    def forecast(self, y: np.ndarray, t: np.ndarray, H: int) -> np.ndarray:
        """``(B, H, N)`` from origins ``t`` of ``y`` ``(T, N)``."""
        p = self.p
        hist = y[t[:, None] - np.arange(1, p + 1)[None]]  # (B, p, N)
        out = np.empty((len(t), H, y.shape[1]))
        for h in range(H):
            f = self.c + np.einsum("bpn,pmn->bm", hist, self.A)
            out[:, h] = f
            hist = np.concatenate([f[:, None], hist[:, :-1]], 1)
        return out


def fit_var(y: np.ndarray, maxlag: int = 24) -> VARFit:
    """statsmodels ``VAR`` on ``y`` ``(T, N)``, the order chosen by AIC up to ``maxlag``."""
    from statsmodels.tsa.api import VAR
    res = VAR(y).fit(maxlags=max(1, min(maxlag, len(y) // (4 * y.shape[1]))), ic="aic")
    if res.k_ar == 0:
        res = VAR(y).fit(1)
    return VARFit(np.asarray(res.intercept, dtype=np.float64),
                  np.asarray(res.coefs, dtype=np.float64), res)


def ladder(y: np.ndarray, n_train: int, t: np.ndarray, H: int, season: int,
           maxlag: int = 48, covariates: np.ndarray | None = None
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every rung's forecasts ``{label: (B, H, N)}`` from origins ``t`` of the filled
    targets ``y`` ``(T, N)``, fitted on rows ``[0, n_train)``; and what was fitted
    (orders, coefficients). ``covariates`` ``(T, C)``: numeric past covariates, which join
    the targets in the VAR (forecast jointly, scored on the targets)."""
    N = y.shape[1]
    out = {"naive": naive(y, t, H)}
    info: dict[str, Any] = {"season": season}
    if season > 1 and t.min() >= season:
        out[f"seasonal naive (m={season})"] = seasonal_naive(y, t, H, season)
    ar1 = [fit_ar(y[:n_train, j], lags=1) for j in range(N)]
    out["Markov AR(1)"] = np.stack([f.forecast(y[:, j], t, H) for j, f in enumerate(ar1)], -1)
    arp = [fit_ar(y[:n_train, j], maxlag=maxlag) for j in range(N)]
    ps = [f.p for f in arp]
    if t.min() >= max(ps):
        label = f"AR({ps[0]})" if N == 1 else "AR(p) " + ",".join(map(str, ps))
        out[label + ", AIC"] = np.stack([f.forecast(y[:, j], t, H) for j, f in enumerate(arp)],
                                        -1)
    info["ar1"] = [[f.c, *f.phi.tolist()] for f in ar1]
    info["ar_p"] = ps
    series = y if covariates is None or covariates.shape[1] == 0 else np.concatenate(
        [y, covariates], 1)
    if series.shape[1] > 1:
        v = fit_var(series[:n_train], maxlag=min(maxlag, 24))
        if t.min() >= v.p:
            out[f"VAR({v.p}), AIC"] = v.forecast(series, t, H)[..., :N]
        info["var_p"], info["var_series"] = v.p, int(series.shape[1])
    return out, info
