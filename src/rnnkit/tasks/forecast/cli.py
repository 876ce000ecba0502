"""The forecaster's command line: ``rnnkit train forecast``, ``rnnkit forecast RUN``,
``rnnkit eval RUN``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit import checkpoint as ckpt
from rnnkit.tasks.args import FRACTION, POS_INT, number, pick
from rnnkit.tasks.forecast.api import load
from rnnkit.tasks.forecast.data import CALENDAR, FILLS, read_table
from rnnkit.tasks.forecast.metrics import format_ladder, plot_forecasts
from rnnkit.tasks.forecast.model import ARCHS, FORECAST_CELLS, HEADS
from rnnkit.tasks.forecast.task import ForecastTask, quantiles_for
from rnnkit.tasks.spec import task_spec, tell, verb
from rnnkit.train import TrainResult

DESCRIPTION = """Forecast a time series (one or more target columns of a CSV/Parquet table)
H steps ahead from the last L steps of every column, with a recurrent encoder (rnnkit
RNN/LSTM/GRU) and a point, Gaussian or quantile head; then backtest it from every test origin
against the autoregressive ladder fitted on the same training period: naive, seasonal naive,
the Markov model AR(1), AR(p) with p by AIC (statsmodels AutoReg) and, for several targets,
VAR. Splits are by time (train, validation, test: the last fractions); normalisation uses the
training period only. Without --data, a built-in synthetic hourly series (daily cycle, AR
noise, a leading covariate) is used. Metrics (MAE, RMSE, MASE, sMAPE, interval coverage) go to
metrics.json, the forecasts with intervals to forecast.png."""

DEFAULTS: dict[str, Any] = {
    "steps": 1500, "minutes": None, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.0,
    "warmup": 50, "clip": 1.0, "eval_every": 250, "log_every": 50, "seed": 0,
    "device": "auto", "cell": "gru", "hidden": 64, "layers": 1, "dropout": 0.1,
    "best_metric": "mae", "best_mode": "min",
}
OWN: dict[str, Any] = {
    "target": None, "covariates": None, "known": None, "time": None, "calendar": None,
    "fill": "interpolate", "lookback": 48, "horizon": 24, "stride": 1, "valid_fraction": 0.1,
    "test_fraction": 0.2, "season": None, "head": "quantile", "interval": 0.8,
    "quantiles": None, "loss": "mse", "arch": "direct", "sampling": 0.0, "maxlag": None,
}
MODEL_KEYS = ("cell", "hidden", "layers", "dropout", "head", "quantiles", "arch", "sampling")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("forecasting")
    a = g.add_argument
    a("--data", help="table with a time column and numeric columns (.csv, .tsv, .parquet); "
      "default: a built-in synthetic hourly series")
    a("--target", help="column(s) to forecast, comma-separated (default: the first numeric "
      "column)")
    a("--covariates", help="past-observed columns, comma-separated; 'all' (default: every other "
      "column) or 'none'. Non-numeric ones are one-hot encoded")
    a("--known", help="columns known in the future (comma-separated; forecasting then needs "
      "their next H values)")
    a("--time", help="time column, or year,month,day,hour parts; 'none' for row order "
      "(default: guessed from the names)")
    a("--calendar", help=f"calendar features from the time column, known in the future: "
      f"some of {','.join(CALENDAR)}, 'none' (default: auto, from the time step)")
    a("--fill", choices=FILLS, help="how gaps are filled in the inputs (missing targets never "
      "count in the loss or the metrics) (default: interpolate)")
    a("--lookback", type=POS_INT, metavar="L", help="steps read (default: 48)")
    a("--horizon", type=POS_INT, metavar="H", help="steps predicted (default: 24)")
    a("--stride", type=POS_INT, help="steps between test origins (default: 1)")
    a("--valid-fraction", type=FRACTION, help="validation: the period before the test one "
      "(default: 0.1)")
    a("--test-fraction", type=FRACTION, help="test: the last part of time (default: 0.2)")
    a("--season", type=POS_INT, help="seasonal period for seasonal naive and MASE (default: "
      "from the time step: hourly 24, daily 7, monthly 12)")
    a("--head", choices=HEADS, help="point (MSE/MAE), gaussian (NLL) or quantile (pinball) "
      "(default: quantile)")
    a("--interval", type=number(float, 0, 1, lo_open=True), help="central prediction interval "
      "(default: 0.8)")
    a("--quantiles", help="quantile head's levels, comma-separated (default: the interval's "
      "ends and 0.5)")
    a("--loss", choices=("mse", "mae"), help="point head's loss (default: mse)")
    a("--arch", choices=ARCHS, help="direct: all H steps from the last state at once; "
      "seq2seq: a decoder over the horizon (default: direct)")
    a("--sampling", type=FRACTION, help="seq2seq: scheduled-sampling probability of feeding "
      "the decoder its own prediction while training (default: 0, teacher forcing)")
    a("--maxlag", type=POS_INT, help="largest AR order tried by AIC (default: the lookback)")


def _quantiles(s: dict[str, Any]) -> list[float]:
    if s.get("quantiles"):
        try:
            q = sorted(float(v) for v in str(s["quantiles"]).split(","))
        except ValueError:
            raise ValueError(f"--quantiles: expected numbers in (0, 1) separated by commas, "
                             f"got {s['quantiles']!r}") from None
        if not all(0 < v < 1 for v in q):
            raise ValueError(f"--quantiles must lie in (0, 1), got {s['quantiles']!r}")
        return q
    return list(quantiles_for(s["interval"]))


def from_args(args: argparse.Namespace, out: str) -> ForecastTask:
    s = {**pick(args, OWN, *OWN), "data": args.data, **pick(args, DEFAULTS, "batch_size",
                                                             "seed")}
    model = pick(args, DEFAULTS, "cell", "hidden", "layers", "dropout")
    if model["cell"] not in FORECAST_CELLS:
        raise ValueError(f"--cell must be one of {', '.join(FORECAST_CELLS)}, got "
                         f"{model['cell']!r}")
    model.update(head=s["head"], quantiles=_quantiles(s), arch=s["arch"],
                 sampling=s["sampling"])
    task = ForecastTask(s, model)
    f, sch = task.frame, task.schema
    miss = ", ".join(f"{c} {n:,}" for c, n in f.missing.items()) or "none"
    tell(f"{s['data'] or 'built-in synthetic series'}: {len(f.values):,} rows",
         f"target {', '.join(sch['target'])}",
         f"{len(f.names)} features ({', '.join(f.names)})",
         f"missing values: {miss} (filled: {sch['fill']})",
         f"train {task.n_train:,} rows ({len(task.train_origins):,} windows), validation "
         f"{task.n_fit - task.n_train:,}, test {len(f.values) - task.n_fit:,} "
         f"({len(task.test_origins):,} origins)", f"season {task.season}")
    return task


def from_config(config: dict[str, Any], run_dir: Path) -> ForecastTask:
    return ForecastTask(config["settings"], config["model"], config["schema"],
                        stats=config["stats"])


def saved_flags(config: dict[str, Any]) -> dict[str, Any]:
    s = config.get("settings", {})
    return {**{k: s.get(k) for k in (*OWN, "data")}, **config["model"],
            "batch_size": s.get("batch_size")}


def _write_report(fc: Any, task: ForecastTask, out: Path, name: str) -> dict[str, Any]:
    bt = task.backtest(fc.model)
    rows = bt["rows"]
    title = (f"{name}: {len(bt['origins']):,} origins, horizon {task.H}, lookback {task.L}, "
             f"target {', '.join(task.schema['target'])}")
    print(format_ladder(rows, title))
    label = bt["label"]
    base = {k: v for k, v in rows.items() if k != label}
    best_base = min(base, key=lambda k: base[k]["mae"])
    gain = 1 - rows[label]["mae"] / base[best_base]["mae"]
    print(f"{label}: MAE {rows[label]['mae']:.3f}, {abs(gain):.1%} "
          f"{'below' if gain >= 0 else 'above'} the best baseline ({best_base}, "
          f"{base[best_base]['mae']:.3f})" + (f"; {task.settings.get('interval', 0.8):.0%} "
                                              f"interval coverage {rows[label]['coverage']:.3f}"
                                              if "coverage" in rows[label] else ""))
    # the plot: three origins spread over the test period, first target
    t = bt["origins"]
    pick_i = np.linspace(0, len(t) - 1, 3).astype(int)
    p = bt["preds"][label]
    shown = []
    for i in pick_i:
        d = {"point": p["point"][i, :, 0],
             "baseline": bt["preds"][best_base]["point"][i, :, 0], "baseline_label": best_base,
             "level": float(task.settings.get("interval", 0.8))}
        if "lo" in p:
            d["lo"], d["hi"] = p["lo"][i, :, 0], p["hi"][i, :, 0]
        shown.append(d)
    png = out / f"{name}.png"
    plot_forecasts(png, task.frame.time, task.frame.values[:, 0], [int(t[i]) for i in pick_i],
                   shown, task.L, task.schema["target"][0], title,
                   {k: v["per_step_mae"] for k, v in rows.items()})
    summary = {"rows": rows, "baselines": bt["baselines"], "origins": len(t),
               "best_baseline": best_base, "gain_over_best_baseline": gain,
               "split": task.config()["split"], "missing": task.frame.missing}
    ckpt.atomic_write(out / f"{name}.json", json.dumps(summary, indent=1))
    print(f"wrote {out / (name + '.json')}, {png}")
    return summary


def report(task: ForecastTask, res: TrainResult, args: argparse.Namespace) -> None:
    fc = load(res.run_dir)
    _write_report(fc, task, Path(res.run_dir), "metrics")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    pass


def evaluate(args: argparse.Namespace) -> int:
    """``rnnkit eval RUN [--data FILE]``: the test-period backtest, network and ladder, on
    the run's data or on FILE (same columns, same split fractions)."""
    run = Path(args.run_dir)
    fc = load(run)
    df = read_table(args.data) if args.data else None
    name = f"eval_{Path(args.data).stem}" if args.data else "eval"
    _write_report(fc, fc.task(df), run, name)
    return 0


def add_forecast_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="recent data: the training columns, at least lookback rows "
                   "(default: the run's own data)")
    p.add_argument("--future", help="the next H rows of the known-future columns (only for "
                   "models trained with --known)")
    p.add_argument("--out", help="CSV written (default: RUN/forecast.csv)")


def forecast(args: argparse.Namespace) -> int:
    """Print and write the next H steps after the last row of --data, with the interval."""
    from rnnkit.tasks.forecast.task import load_table
    fc = load(args.run_dir)
    df = read_table(args.data) if args.data else load_table(fc.config["settings"])
    fut = read_table(args.future) if args.future else None
    table = fc.forecast(df, fut)
    out = Path(args.out) if args.out else Path(args.run_dir) / "forecast.csv"
    table.to_csv(out, index=False)
    print(table.to_string(index=False))
    print(f"wrote {out}", file=sys.stderr)
    return 0


SPEC = task_spec(
    globals(), "forecast", "forecast a time series (multi-step, with intervals) against the "
    "AR ladder", model_cells=list(FORECAST_CELLS),
    verbs=(verb(forecast, "forecast the next steps with a trained forecaster",
                add_forecast_args),),
)
