"""Tables for forecasting: reading, the time column, features, missing values, the split by
time, normalisation with training-period statistics, and windows.

A table becomes a :class:`Frame`: ``values`` ``(T, F)`` (missing values filled), ``observed``
``(T, N)`` (which target values were present before filling), ``time`` ``(T,)`` or None (row
order). Columns are ordered targets (``N``), past covariates (numeric, then one-hot), then the
known-future features (calendar features from the time column, then ``--known`` columns).

A window at origin ``t`` reads rows ``[t - L, t)`` (all features) and the known-future
features of rows ``[t, t + H)``, and predicts the targets of rows ``[t, t + H)``. Training
origins satisfy ``t + H <= n_train``, so no training window sees a row after the cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FILLS = ("ffill", "interpolate", "zero")
CALENDAR = ("hour", "dow", "month", "doy")
_PERIOD = {"hour": 24, "dow": 7, "month": 12, "doy": 366}
_TIME_NAMES = ("time", "date", "datetime", "timestamp", "month", "ds", "period", "week", "day")
_PARTS = ("year", "month", "day", "hour")


def _pd() -> Any:
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover
        raise ImportError("forecasting needs pandas and statsmodels: pip install "
                          "'rnnkit[forecast]'") from e
    return pd


def read_table(path: str | Path) -> Any:
    """A CSV/TSV (``NA`` and empty cells as missing) or Parquet file as a DataFrame."""
    pd = _pd()
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{path} is a folder; expected a table file (.csv, .tsv, .parquet)")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    df = pd.read_csv(p, sep=sep)
    if df.shape[1] < 1 or len(df) == 0:
        raise ValueError(f"{path}: no rows")
    return df


def synthetic(n: int = 1500, seed: int = 0) -> Any:
    """The built-in series (no data needed): hourly, a daily cycle, a slow trend, AR(2)
    noise, and a past covariate ``temp`` that leads the target by 3 hours. Columns ``time``,
    ``load``, ``temp``."""
    pd = _pd()
    rng = np.random.default_rng(seed)
    t = np.arange(n + 3)
    temp = 10 + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, n + 3)
    e = np.zeros(n)
    for i in range(2, n):
        e[i] = 0.6 * e[i - 1] + 0.2 * e[i - 2] + rng.normal(0, 1)
    load = 50 + 0.005 * t[3:] + 1.5 * temp[:n] + 4 * np.sin(2 * np.pi * t[3:] / 168) + e
    return pd.DataFrame({"time": pd.date_range("2024-01-01", periods=n, freq="h"),
                         "load": load, "temp": temp[3:]})


# -- the time column ----------------------------------------------------------------------------
def guess_time(df: Any) -> list[str]:
    """The time column(s): a column named like a time, or year/month/day(/hour) parts; []
    for row order."""
    low = {c.lower(): c for c in df.columns}
    if all(p in low for p in _PARTS[:3]):
        return [low[p] for p in _PARTS if p in low]
    for name in _TIME_NAMES:
        if name in low and not _is_number(df[low[name]]):
            return [low[name]]
    return []


def _is_number(s: Any) -> bool:
    pd = _pd()
    return bool(pd.api.types.is_numeric_dtype(s)) and not pd.api.types.is_bool_dtype(s)


def parse_time(df: Any, cols: list[str]) -> np.ndarray | None:
    """``datetime64[ns]`` ``(T,)`` from ``cols`` (one column, or year/month/day/hour parts);
    a value that does not parse or does not increase is a ValueError naming column and row."""
    pd = _pd()
    if not cols:
        return None
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"time column {c!r} not in the table (columns: "
                             f"{', '.join(map(str, df.columns))})")
    if len(cols) == 1:
        t = pd.to_datetime(df[cols[0]], errors="coerce")
    else:
        t = pd.to_datetime(df[cols].rename(columns=str.lower), errors="coerce")
    bad = np.flatnonzero(t.isna().to_numpy())
    name = "+".join(cols)
    if len(bad):
        r = int(bad[0])
        raw = df[cols].iloc[r].tolist()
        raise ValueError(f"time column {name!r}: row {r + 1} ({raw}) does not parse as a "
                         f"time ({len(bad)} such row(s))")
    t = t.to_numpy(dtype="datetime64[ns]")
    d = np.diff(t)
    nonpos = np.flatnonzero(d <= np.timedelta64(0, "ns"))
    if len(nonpos):
        r = int(nonpos[0]) + 1
        raise ValueError(f"time column {name!r} is not increasing: row {r + 1} ({t[r]}) "
                         f"does not come after row {r} ({t[r - 1]}); sort the table by time")
    return t


def time_step(t: np.ndarray | None) -> dict[str, Any] | None:
    """The series' step: ``{"months": k}`` for monthly/yearly data, else ``{"seconds": s}``
    (the median step); None for row order."""
    if t is None or len(t) < 2:
        return None
    med = float(np.median(np.diff(t).astype("timedelta64[s]").astype(np.int64)))
    days = med / 86400
    if 28 <= days <= 31:
        return {"months": 1}
    if 89 <= days <= 92:
        return {"months": 3}
    if 365 <= days <= 366:
        return {"months": 12}
    return {"seconds": med}


def future_times(last: np.datetime64, step: dict[str, Any], h: int) -> np.ndarray:
    pd = _pd()
    last = pd.Timestamp(last)
    if "months" in step:
        return np.array([(last + pd.DateOffset(months=step["months"] * k)).to_datetime64()
                         for k in range(1, h + 1)], dtype="datetime64[ns]")
    return np.array([(last + pd.Timedelta(seconds=step["seconds"] * k)).to_datetime64()
                     for k in range(1, h + 1)], dtype="datetime64[ns]")


def season_of(step: dict[str, Any] | None) -> int:
    """The seasonal period a time step suggests: hourly 24, daily 7, weekly 52, monthly 12,
    quarterly 4, else 1 (no season)."""
    if step is None:
        return 1
    if "months" in step:
        return {1: 12, 3: 4}.get(step["months"], 1)
    s = step["seconds"]
    for sec, m in ((3600, 24), (86400, 7), (7 * 86400, 52), (1800, 48), (900, 96)):
        if abs(s - sec) < 1e-6 * sec:
            return m
    return 1


def default_calendar(step: dict[str, Any] | None) -> list[str]:
    if step is None:
        return []
    if "months" in step:
        return ["month"] if step["months"] < 12 else []
    s = step["seconds"]
    return ["hour", "dow"] if s < 86400 else (["dow", "doy"] if s < 7 * 86400 else ["doy"])


def calendar_features(t: np.ndarray, which: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(T, 2 * len(which))``: sine and cosine of each calendar position (hour of day, day of
    week, month of year, day of year)."""
    pd = _pd()
    idx = pd.DatetimeIndex(t)
    pos = {"hour": idx.hour + idx.minute / 60, "dow": idx.dayofweek, "month": idx.month - 1,
           "doy": idx.dayofyear - 1}
    cols, names = [], []
    for w in which:
        a = 2 * np.pi * np.asarray(pos[w], dtype=np.float64) / _PERIOD[w]
        cols += [np.sin(a), np.cos(a)]
        names += [f"{w}_sin", f"{w}_cos"]
    return (np.stack(cols, 1) if cols else np.zeros((len(t), 0))), names


# -- the schema: which columns, how encoded (saved in the run) ----------------------------------
def _cols(spec: str | list[str] | None) -> list[str] | None:
    if spec is None:
        return None
    if isinstance(spec, list):
        return spec
    return [c.strip() for c in spec.split(",") if c.strip()]


def _index_column(df: Any, c: str) -> bool:
    s = df[c]
    if not _is_number(s) or s.isna().any():
        return False
    v = s.to_numpy()
    return bool(np.array_equal(v, np.arange(1, len(v) + 1)) or
                np.array_equal(v, np.arange(len(v))))


def make_schema(df: Any, target: str | list[str] | None, covariates: str | list[str] | None,
                known: str | list[str] | None, time: str | list[str] | None,
                calendar: str | list[str] | None, fill: str = "interpolate",
                max_levels: int = 20) -> dict[str, Any]:
    """Which columns play which part, and the categorical levels, from the training table.

    ``covariates`` None/"all": every column that is not a target, time, known or row-number
    column; "none": none. ``calendar`` None/"auto": chosen from the time step."""
    pd = _pd()
    if fill not in FILLS:
        raise ValueError(f"--fill must be one of {', '.join(FILLS)}, got {fill!r}")
    cols = [str(c) for c in df.columns]
    df.columns = cols
    time_cols = guess_time(df) if time is None else _cols(time)
    if time_cols == ["none"]:
        time_cols = []
    targets = _cols(target)
    if not targets:
        num = [c for c in cols if c not in time_cols and _is_number(df[c])
               and not _index_column(df, c)]
        if not num:
            raise ValueError("no numeric column to forecast; name it with --target COL")
        targets = [num[-1] if len(cols) == 2 else num[0]]
    for c in targets:
        if c not in cols:
            raise ValueError(f"--target {c!r} is not a column (columns: {', '.join(cols)})")
        if not _is_number(df[c]):
            bad = pd.to_numeric(df[c], errors="coerce").isna() & df[c].notna()
            r = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
            raise ValueError(f"target column {c!r} is not numeric: row {r + 1} holds "
                             f"{df[c].iloc[r]!r}")
    known_cols = _cols(known) or []
    for c in known_cols:
        if c not in cols:
            raise ValueError(f"--known {c!r} is not a column (columns: {', '.join(cols)})")
    cov = _cols(covariates)
    taken = set(targets) | set(time_cols) | set(known_cols)
    if cov is None or cov == ["all"]:
        cov = [c for c in cols if c not in taken and not _index_column(df, c)]
    elif cov == ["none"]:
        cov = []
    for c in cov:
        if c not in cols:
            raise ValueError(f"--covariates {c!r} is not a column (columns: {', '.join(cols)})")
    numeric, categorical = [], {}
    for c in cov + known_cols:
        if _is_number(df[c]):
            numeric.append(c)
        else:
            levels = sorted(map(str, df[c].dropna().unique()))
            if len(levels) > max_levels:
                raise ValueError(f"column {c!r} is not numeric and has {len(levels)} distinct "
                                 f"values (at most {max_levels} are one-hot encoded); leave it "
                                 f"out with --covariates")
            categorical[c] = levels
    t = parse_time(df, time_cols)
    step = time_step(t)
    cal = _cols(calendar)
    if cal is None or cal == ["auto"]:
        cal = default_calendar(step)
    elif cal == ["none"]:
        cal = []
    for w in cal:
        if w not in CALENDAR:
            raise ValueError(f"--calendar {w!r}: expected some of {', '.join(CALENDAR)}")
    if cal and t is None:
        raise ValueError("--calendar needs a time column (--time COL); the table has none")
    return {"target": targets, "covariates": [c for c in cov if c not in known_cols],
            "known": known_cols, "time": time_cols, "calendar": cal, "categories": categorical,
            "fill": fill, "step": step}


def _fill(x: np.ndarray, how: str) -> np.ndarray:
    """Fill NaNs of each column of ``x`` ``(T, F)``: forward fill, linear interpolation or
    zero; leading gaps take the first value."""
    pd = _pd()
    if how == "zero":
        return np.nan_to_num(x, nan=0.0)
    df = pd.DataFrame(x)
    df = df.ffill() if how == "ffill" else df.interpolate(limit_direction="both")
    return df.bfill().to_numpy(dtype=np.float64)


@dataclass
class Frame:
    values: np.ndarray  # (T, F) float64, filled, not normalised
    observed: np.ndarray  # (T, N) bool: target present before filling
    time: np.ndarray | None  # (T,) datetime64[ns] or None
    names: list[str]  # F feature names
    n_target: int
    n_past: int  # features [0, n_past) are known only in the past
    missing: dict[str, int] = field(default_factory=dict)

    @property
    def n_known(self) -> int:
        return self.values.shape[1] - self.n_past


def frame(df: Any, schema: dict[str, Any], *, what: str = "the table",
          allow_empty: tuple[str, ...] = ()) -> Frame:
    """The table as features under ``schema``; a column the schema needs that is missing or
    all empty (except those in ``allow_empty``) is a ValueError naming it."""
    pd = _pd()
    df.columns = [str(c) for c in df.columns]
    need = schema["target"] + schema["covariates"] + schema["known"] + schema["time"]
    for c in need:
        if c not in df.columns:
            role = ("target" if c in schema["target"] else "time" if c in schema["time"]
                    else "known-future" if c in schema["known"] else "covariate")
            raise ValueError(f"{what} lacks the {role} column {c!r} the model was trained "
                             f"with (columns: {', '.join(df.columns)})")
    t = parse_time(df, schema["time"])
    parts, names, missing = [], [], {}

    def numeric(c: str) -> np.ndarray:
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(v) & df[c].notna().to_numpy()
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"column {c!r}, row {r + 1}: {df[c].iloc[r]!r} is not a number")
        n = int(np.isnan(v).sum())
        if n:
            missing[c] = n
        if n == len(v) and c not in allow_empty:
            raise ValueError(f"column {c!r} is empty (all {n} values missing) in {what}")
        return v

    for c in schema["target"] + [c for c in schema["covariates"] + schema["known"]
                                 if c not in schema["categories"]]:
        if c in schema["known"]:
            continue
        parts.append(numeric(c)[:, None])
        names.append(c)
    n_cov_num = len(parts)

    def onehot(c: str) -> None:
        levels = schema["categories"][c]
        raw = df[c].to_numpy(dtype=object)
        miss = pd.isna(raw)
        s = np.array(["" if m else str(v) for v, m in zip(raw, miss, strict=True)], dtype=object)
        if miss.any():
            missing[c] = int(miss.sum())
        m = np.stack([(s == lv) for lv in levels], 1).astype(np.float64)
        m[miss] = np.nan  # filled below like any other gap
        parts.append(m)
        names.extend(f"{c}={lv}" for lv in levels)

    for c in schema["covariates"]:
        if c in schema["categories"]:
            onehot(c)
    n_past = sum(p.shape[1] for p in parts)
    del n_cov_num
    if schema["calendar"]:
        cf, cn = calendar_features(t, schema["calendar"])
        parts.append(cf)
        names += cn
    for c in schema["known"]:
        if c in schema["categories"]:
            onehot(c)
        else:
            parts.append(numeric(c)[:, None])
            names.append(c)
    raw = np.concatenate(parts, 1) if parts else np.zeros((len(df), 0))
    n = len(schema["target"])
    observed = ~np.isnan(raw[:, :n])
    return Frame(_fill(raw, schema["fill"]) if np.isnan(raw).any() else raw, observed, t,
                 names, n, n_past, missing)


# -- the split, normalisation, windows ----------------------------------------------------------
def split_points(T: int, lookback: int, horizon: int, valid_fraction: float,
                 test_fraction: float) -> tuple[int, int]:
    """``(n_train, n_fit)``: rows ``[0, n_train)`` train, ``[n_train, n_fit)`` validation,
    ``[n_fit, T)`` test (the last fractions of time, never shuffled)."""
    if T < lookback + horizon:
        raise ValueError(f"the series has {T} rows, fewer than lookback + horizon = "
                         f"{lookback} + {horizon}")
    n_test = round(T * test_fraction)
    n_valid = round(T * valid_fraction)
    n_train = T - n_test - n_valid
    if n_train < lookback + horizon + 1:
        raise ValueError(f"the training period has {n_train} rows (of {T}), fewer than "
                         f"lookback + horizon + 1 = {lookback + horizon + 1}; lower --lookback,"
                         f" --horizon or the held-out fractions")
    for name, n in (("validation", n_valid), ("test", n_test)):
        if 0 < n < horizon:
            raise ValueError(f"the {name} period has {n} rows, fewer than the horizon "
                             f"{horizon}; raise its fraction or lower --horizon")
    return n_train, n_train + n_valid


def norm_stats(values: np.ndarray, observed: np.ndarray, n_train: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``(F,)`` of each feature over the training rows
    ``[0, n_train)`` only (targets: over their observed values); a constant feature gets
    scale 1."""
    v = values[:n_train].copy()
    n = observed.shape[1]
    v[:, :n][~observed[:n_train]] = np.nan
    mean = np.nanmean(v, 0)
    std = np.nanstd(v, 0)
    std[~(std > 1e-12)] = 1.0
    return mean, std


def origins(lo: int, hi: int, lookback: int, horizon: int, stride: int = 1) -> np.ndarray:
    """Forecast origins ``t`` whose targets ``[t, t + H)`` lie in rows ``[lo, hi)`` and whose
    lookback ``[t - L, t)`` starts at row 0 or later."""
    start = max(lo, lookback)
    return np.arange(start, hi - horizon + 1, stride, dtype=np.int64)


def windows(z: np.ndarray, observed: np.ndarray, t: np.ndarray, lookback: int, horizon: int,
            n_target: int, n_past: int) -> dict[str, np.ndarray]:
    """The windows at origins ``t`` ``(B,)`` of the normalised features ``z`` ``(T, F)``:
    ``past`` ``(B, L, F)`` (rows ``[t - L, t)``), ``future`` ``(B, H, F - n_past)`` (known
    features of rows ``[t, t + H)``), ``y`` ``(B, H, N)`` and ``mask`` ``(B, H, N)``."""
    past_idx = t[:, None] + np.arange(-lookback, 0)[None]
    fut_idx = t[:, None] + np.arange(horizon)[None]
    return {"past": z[past_idx], "future": z[fut_idx][..., n_past:],
            "y": z[fut_idx][..., :n_target], "mask": observed[fut_idx]}
