"""A trained forecaster from Python::

    fc = rnnkit.load("runs/pm25")          # or rnnkit.tasks.forecast.load
    fc.forecast(recent_df)                 # DataFrame: the next H steps, point and interval
    fc.evaluate()                          # the test-period backtest: network and ladder

``forecast(df)`` reads the last ``lookback`` rows of ``df`` (a table with the training
columns), normalises them with the training period's statistics saved in the run, and returns
one row per future step: the time (or step number), and per target ``COL`` (point: the mean
or median), ``COL_lo``/``COL_hi`` (the central interval, e.g. 80%).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.common import run_config
from rnnkit.tasks.forecast.data import Frame, frame, future_times
from rnnkit.tasks.forecast.model import ForecastNet
from rnnkit.tasks.forecast.task import ForecastTask, decode


class Forecaster:
    """A trained network with its schema and training-period statistics (see :func:`load`)."""

    def __init__(self, model: ForecastNet, config: dict[str, Any], run_dir: Path) -> None:
        self.model, self.config, self.run_dir = model.eval(), config, run_dir
        self.schema = config["schema"]
        self.mean = np.asarray(config["stats"]["mean"])
        self.std = np.asarray(config["stats"]["std"])
        s = config["settings"]
        self.lookback, self.horizon = int(s["lookback"]), int(s["horizon"])
        self.level = float(s.get("interval", 0.8))
        self.targets: list[str] = self.schema["target"]

    def _frame(self, df: Any, what: str) -> Frame:
        f = frame(df.copy(), self.schema, what=what)
        if f.names != self.config["features"]:
            raise ValueError(f"{what}: features {f.names} differ from the training features "
                             f"{self.config['features']}")
        return f

    @torch.no_grad()
    def forecast(self, df: Any, future: Any = None) -> Any:
        """The next ``horizon`` steps after the last row of ``df`` (``(H rows)`` DataFrame).
        ``future``: a table of the next ``H`` rows' known-future columns, needed only when
        the model was trained with ``--known`` columns."""
        import pandas as pd
        what = "the recent data"
        if len(df) < self.lookback:
            raise ValueError(f"{what} has {len(df)} rows; the model reads the last "
                             f"{self.lookback} (its lookback)")
        df = df.iloc[-self.lookback:].reset_index(drop=True)
        f = self._frame(df, what)
        z = (f.values - self.mean) / self.std
        H, n = self.horizon, f.n_target
        past = (*self.schema["target"], *self.schema["covariates"])
        times = None
        if f.time is not None and self.schema.get("step"):
            times = future_times(f.time[-1], self.schema["step"], H)
        if self.schema["known"]:
            if future is None or len(future) < H:
                raise ValueError(f"the model reads known-future columns "
                                 f"{self.schema['known']}: pass future= a table of the next "
                                 f"{H} rows holding them")
            fut = future.iloc[:H].copy().reset_index(drop=True)
            for c in self.schema["target"] + self.schema["covariates"]:
                if c not in fut.columns:
                    fut[c] = np.nan
            ff = frame(fut, self.schema, what="the future table", allow_empty=past)
            zf = (np.nan_to_num(ff.values) - self.mean) / self.std
        elif self.schema["calendar"]:
            fut = pd.DataFrame({c: np.nan for c in self.schema["target"] +
                                self.schema["covariates"]}, index=range(H))
            tc = self.schema["time"]
            if len(tc) == 1:
                fut[tc[0]] = times
            else:
                idx = pd.DatetimeIndex(times)
                for c in tc:
                    fut[c] = getattr(idx, c.lower())
            for c in self.schema["categories"]:
                fut[c] = np.nan
            ff = frame(fut, self.schema, what="the future rows", allow_empty=past)
            zf = (np.nan_to_num(ff.values) - self.mean) / self.std
        else:
            zf = np.zeros((H, z.shape[1]))
        x = torch.from_numpy(z[None]).float()
        futk = torch.from_numpy(zf[None, :, f.n_past:]).float()
        out = self.model(x, futk).double().numpy()
        r = decode(out, self.config["model"], self.mean[:n], self.std[:n], self.level,
                   self.model.interval_offset.double().numpy())
        cols: dict[str, Any] = {"time": times} if times is not None else {
            "step": np.arange(1, H + 1)}
        for j, c in enumerate(self.targets):
            cols[c] = r["point"][0, :, j]
            if "lo" in r:
                cols[f"{c}_lo"] = r["lo"][0, :, j]
                cols[f"{c}_hi"] = r["hi"][0, :, j]
        return pd.DataFrame(cols)

    def task(self, df: Any = None) -> ForecastTask:
        """The run's task (its split of its data, or of ``df``), for backtests."""
        return ForecastTask(self.config["settings"], self.config["model"], self.schema, df,
                            self.config["stats"])

    def evaluate(self, df: Any = None) -> dict[str, Any]:
        """The rolling-origin backtest of the test period: ``{"rows": {model: metrics}, ...}``
        (the network and the ladder on the same origins)."""
        return self.task(df).backtest(self.model)


def load(run_dir: str | Path) -> Forecaster:
    """A trained forecaster from a run folder (its ``best/`` checkpoint) or a checkpoint."""
    src, cfg = run_config(run_dir, "forecast", "a forecaster")
    F = len(cfg["features"])
    model = ckpt.build_checked(
        lambda: ForecastNet(F, F - cfg["n_past"], len(cfg["schema"]["target"]),
                            int(cfg["settings"]["horizon"]), **cfg["model"]), src)
    return Forecaster(model, cfg, Path(run_dir))
