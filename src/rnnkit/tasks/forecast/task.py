"""The forecaster in the trainer's protocol: random training windows (each batch from its own
seeded generator), the head's loss masked where the target is missing, validation loss and
MAE (original units) on the validation origins; and the backtest that scores the network and
the ladder on the same test origins."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rnnkit.tasks.forecast import baselines
from rnnkit.tasks.forecast.data import (
    Frame,
    frame,
    make_schema,
    norm_stats,
    origins,
    read_table,
    season_of,
    split_points,
    synthetic,
    windows,
)
from rnnkit.tasks.forecast.metrics import mase_scale, summarize
from rnnkit.tasks.forecast.model import ForecastNet, forecast_loss


def load_table(settings: dict[str, Any]) -> Any:
    return synthetic() if settings.get("data") is None else read_table(settings["data"])


def quantiles_for(level: float) -> tuple[float, float, float]:
    a = round((1 - level) / 2, 6)
    return (a, 0.5, round(1 - a, 6))


class Stream:
    """Training batches of windows at random training origins; batch ``i`` comes from its
    own seeded generator, so the position is one integer. Under torchrun every rank draws the
    same global batch and keeps its share: N processes train on the batches of one."""

    def __init__(self, task: ForecastTask, rank: int, world: int) -> None:
        self.task, self.rank, self.world, self.i = task, rank, world, 0

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> dict[str, Tensor]:
        rng = np.random.default_rng((self.task.seed + 1) * 1_000_003 + self.i)
        self.i += 1
        o = self.task.train_origins
        t = o[rng.integers(0, len(o), self.task.batch_size)]
        share = self.task.batch_size // self.world
        return self.task.batch(t[self.rank * share: (self.rank + 1) * share])

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.i = int(d["i"])


class ForecastTask:
    """Built from the run's ``settings`` (see ``cli.OWN``) and, when resuming or loading, its
    saved ``schema`` and normalisation ``stats``."""

    name = "forecast"
    unit = "windows"

    def __init__(self, settings: dict[str, Any], model_cfg: dict[str, Any],
                 schema: dict[str, Any] | None = None, df: Any = None,
                 stats: dict[str, list[float]] | None = None) -> None:
        s = self.settings = settings
        self.model_cfg = model_cfg
        df = load_table(s) if df is None else df
        self.schema = schema or make_schema(df, s.get("target"), s.get("covariates"),
                                            s.get("known"), s.get("time"), s.get("calendar"),
                                            s.get("fill", "interpolate"))
        self.frame: Frame = frame(df, self.schema, what=str(s.get("data") or "the series"))
        self.L, self.H = int(s["lookback"]), int(s["horizon"])
        T = len(self.frame.values)
        self.n_train, self.n_fit = split_points(T, self.L, self.H, s["valid_fraction"],
                                                s["test_fraction"])
        if stats is None:  # training-period statistics (a trained model keeps its own)
            self.mean, self.std = norm_stats(self.frame.values, self.frame.observed,
                                             self.n_train)
        else:
            self.mean, self.std = np.asarray(stats["mean"]), np.asarray(stats["std"])
        self.z = (self.frame.values - self.mean) / self.std
        self.season = int(s.get("season") or season_of(self.schema["step"]))
        self.train_origins = origins(0, self.n_train, self.L, self.H)
        if len(self.train_origins) == 0:
            raise ValueError(f"no training window: the training period has {self.n_train} "
                             f"rows, fewer than lookback + horizon = {self.L + self.H}")
        self.valid_origins = origins(self.n_train, self.n_fit, self.L, self.H,
                                     max(1, int(s.get("stride", 1))))
        if len(self.valid_origins) == 0:  # no validation period: score the last training
            self.valid_origins = self.train_origins[-max(1, len(self.train_origins) // 10):]
        self.test_origins = origins(self.n_fit, T, self.L, self.H, int(s.get("stride", 1)))
        self.batch_size, self.seed = int(s["batch_size"]), int(s["seed"])
        self.point = s.get("loss", "mse")
        self.loss_label = {"gaussian": "Gaussian NLL (normalised)", "quantile":
                           "pinball loss (normalised)"}.get(model_cfg["head"],
                                                            f"{self.point.upper()} (normalised)")
        n = self.frame.n_target
        self.scale = mase_scale(self.frame.values[:self.n_train, :n],
                                self.frame.observed[:self.n_train], self.season)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_origins) / self.batch_size))

    # -- the trainer's protocol ---------------------------------------------------------------
    def batch(self, t: np.ndarray) -> dict[str, Tensor]:
        f = self.frame
        w = windows(self.z, f.observed, t, self.L, self.H, f.n_target, f.n_past)
        return {k: torch.from_numpy(np.ascontiguousarray(v)).float() if k != "mask"
                else torch.from_numpy(v) for k, v in w.items()}

    def build_model(self) -> ForecastNet:
        f = self.frame
        return ForecastNet(f.values.shape[1], f.n_known, f.n_target, self.H, **self.model_cfg)

    def batches(self, rank: int, world_size: int) -> Stream:
        return Stream(self, rank, world_size)

    def loss(self, model: nn.Module, batch: dict[str, Tensor], carry: Any
             ) -> tuple[Tensor, None, int]:
        out = model(batch["past"], batch["future"], batch["y"])
        inner = model.module if hasattr(model, "module") else model
        return forecast_loss(inner, out, batch["y"], batch["mask"], self.point), None, \
            len(batch["y"])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        t = self.valid_origins
        loss, n = 0.0, 0
        for k in range(0, len(t), 1024):
            b = self.batch(t[k:k + 1024])
            dev = next(model.parameters()).device
            b = {key: v.to(dev) for key, v in b.items()}
            out = model(b["past"], b["future"])
            loss += float(forecast_loss(model, out, b["y"], b["mask"], self.point)) * len(
                b["y"])
            n += len(b["y"])
        res = self.forecast_at(model, t, calibrated=False)
        y, mask = self.truth(t)
        m = summarize(y, res, mask, self.scale)
        if "lo" in res:  # the checkpoint saved after this evaluation carries its calibration
            offset = conformal_offset(y, res["lo"], res["hi"], mask,
                                      float(self.settings.get("interval", 0.8)))
            n_t = self.frame.n_target
            model.interval_offset.copy_(torch.from_numpy(offset / self.std[:n_t]))
        return {"loss": loss / max(n, 1), "mae": m["mae"], "rmse": m["rmse"]}

    def config(self) -> dict[str, Any]:
        f = self.frame
        return {"task": self.name, "settings": self.settings, "model": self.model_cfg,
                "schema": self.schema, "features": f.names, "n_past": f.n_past,
                "stats": {"mean": self.mean.tolist(), "std": self.std.tolist()},
                "season": self.season,
                "split": {"rows": len(f.values), "train": self.n_train,
                          "valid": self.n_fit - self.n_train,
                          "test": len(f.values) - self.n_fit},
                "missing": f.missing}

    # -- forecasting and the backtest ---------------------------------------------------------
    def truth(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = t[:, None] + np.arange(self.H)[None]
        n = self.frame.n_target
        return self.frame.values[idx][..., :n], self.frame.observed[idx]

    @torch.no_grad()
    def forecast_at(self, model: nn.Module, t: np.ndarray, calibrated: bool = True
                    ) -> dict[str, np.ndarray]:
        """The network's forecasts from origins ``t``, in original units: ``point``,
        ``lo``/``hi`` (the ``interval`` level; ``calibrated``: widened by the model's
        ``interval_offset``) and ``quantiles`` or ``scale``; each ``(B, H, N)`` (quantiles
        ``(B, H, N, Q)``)."""
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        outs = []
        for k in range(0, len(t), 2048):
            b = self.batch(t[k:k + 2048])
            outs.append(model(b["past"].to(dev), b["future"].to(dev)).double().cpu().numpy())
        model.train(was)
        n = self.frame.n_target
        offset = model.interval_offset.double().cpu().numpy() if calibrated else None
        return decode(np.concatenate(outs, 0), self.model_cfg, self.mean[:n], self.std[:n],
                      float(self.settings.get("interval", 0.8)), offset)

    def backtest(self, model: nn.Module, t: np.ndarray | None = None,
                 label: str | None = None) -> dict[str, Any]:
        """Rolling-origin backtest over the test period (origins every ``stride`` rows): the
        network and every rung of the ladder, on the same origins."""
        t = self.test_origins if t is None else t
        if len(t) == 0:
            raise ValueError("no test origins: the test period is shorter than the horizon "
                             "(raise --test-fraction)")
        y, mask = self.truth(t)
        n = self.frame.n_target
        rows: dict[str, dict[str, Any]] = {}
        preds: dict[str, dict[str, np.ndarray]] = {}
        numeric = [i for i, c in enumerate(self.frame.names) if c in self.schema["covariates"]
                   and c not in self.schema["categories"]]
        base, info = baselines.ladder(self.frame.values[:, :n], self.n_train, t, self.H,
                                      self.season, maxlag=int(self.settings.get("maxlag")
                                                              or self.L),
                                      covariates=self.frame.values[:, numeric])
        for name, p in base.items():
            rows[name] = summarize(y, {"point": p}, mask, self.scale)
            preds[name] = {"point": p}
        res = self.forecast_at(model, t)
        q = self.model_cfg.get("quantiles") if self.model_cfg["head"] == "quantile" else None
        label = label or f"rnnkit {self.model_cfg['cell'].upper()} ({self.model_cfg['arch']}," \
                         f" {self.model_cfg['head']})"
        rows[label] = summarize(y, res, mask, self.scale, tuple(q) if q else None)
        preds[label] = res
        return {"rows": rows, "preds": preds, "origins": t, "baselines": info, "label": label}


def conformal_offset(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, mask: np.ndarray,
                     level: float) -> np.ndarray:
    """Split-conformal widening of a central interval (conformalised quantile regression,
    Romano et al. 2019), per horizon step and target: with scores ``E = max(lo - y, y - hi)``
    over the observed calibration origins (``(B, H, N)`` each), the offset ``(H, N)`` is the
    ``ceil((n + 1) level) / n`` empirical quantile of ``E``, so ``[lo - offset, hi + offset]``
    covers ``level`` of exchangeable new points. Negative offsets narrow a too-wide interval;
    a step with no observed target keeps offset 0."""
    e = np.where(mask, np.maximum(lo - y, y - hi), np.nan)
    n = mask.sum(0)
    out = np.zeros(e.shape[1:])
    for idx in zip(*np.nonzero(n), strict=True):
        v = np.sort(e[(slice(None), *idx)][mask[(slice(None), *idx)]])
        k = min(len(v), math.ceil((len(v) + 1) * level)) - 1
        out[idx] = v[k]
    return out


def decode(out: np.ndarray, model_cfg: dict[str, Any], mean: np.ndarray, std: np.ndarray,
           level: float, offset: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The network's raw output ``(B, H, N, D)`` (normalised) as forecasts in original
    units (see :meth:`ForecastTask.forecast_at`); ``offset`` ``(H, N)`` (normalised) widens
    the interval ``lo``/``hi`` (see :func:`conformal_offset`)."""
    r = _decode(out, model_cfg, mean, std, level)
    if offset is not None and "lo" in r:  # a narrowed interval still holds the point
        r["lo"] = np.minimum(r["lo"] - offset * std, r["point"])
        r["hi"] = np.maximum(r["hi"] + offset * std, r["point"])
    return r


def _decode(out: np.ndarray, model_cfg: dict[str, Any], mean: np.ndarray, std: np.ndarray,
            level: float) -> dict[str, np.ndarray]:
    head = model_cfg["head"]
    if head == "gaussian":
        mu, sd = out[..., 0] * std + mean, out[..., 1] * std
        z = NormalDist().inv_cdf(0.5 + level / 2)
        return {"point": mu, "scale": sd, "lo": mu - z * sd, "hi": mu + z * sd}
    if head == "quantile":
        qs = list(model_cfg["quantiles"])
        qv = out * std[..., None] + mean[..., None]
        med = min(range(len(qs)), key=lambda i: abs(qs[i] - 0.5))
        r = {"point": qv[..., med], "quantiles": qv}
        lo, hi = round((1 - level) / 2, 6), round((1 + level) / 2, 6)
        if lo in [round(q, 6) for q in qs] and hi in [round(q, 6) for q in qs]:
            r["lo"] = qv[..., [round(q, 6) for q in qs].index(lo)]
            r["hi"] = qv[..., [round(q, 6) for q in qs].index(hi)]
        return r
    return {"point": out[..., 0] * std + mean}
