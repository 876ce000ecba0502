"""Forecasting: the ladder against statsmodels' own fits and forecasts, metrics and losses by
hand, no leakage across the split, masked missing targets, bad input, and a tiny run through
``rnnkit train forecast`` / ``eval`` / ``forecast`` / ``rnnkit.load``."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from statsmodels.tsa.api import VAR
from statsmodels.tsa.ar_model import AutoReg, ar_select_order

import rnnkit
from rnnkit.cli import main
from rnnkit.tasks.forecast import baselines
from rnnkit.tasks.forecast.data import frame, make_schema, norm_stats, origins, windows
from rnnkit.tasks.forecast.metrics import coverage, crps_gaussian, mase_scale, point_metrics
from rnnkit.tasks.forecast.model import ForecastNet, forecast_loss, gaussian_nll, pinball
from rnnkit.tasks.forecast.task import ForecastTask, conformal_offset

MODEL = {"cell": "gru", "hidden": 8, "layers": 1, "dropout": 0.0, "head": "quantile",
         "quantiles": [0.1, 0.5, 0.9], "arch": "direct", "sampling": 0.0}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is far faster here
    yield
    torch.set_num_threads(n)


def ar_series(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    for t in range(3, n):
        y[t] = 1.0 + 0.5 * y[t - 1] - 0.3 * y[t - 2] + 0.2 * y[t - 3] + rng.normal()
    return y


# -- the ladder against statsmodels ---------------------------------------------------------
def test_ar_p_by_aic_equals_statsmodels_coefficients_and_forecasts():
    y = ar_series()
    n_train, H = 450, 5
    fit = baselines.fit_ar(y[:n_train], maxlag=8)
    sel = ar_select_order(y[:n_train], maxlag=8, ic="aic", trend="c")
    assert fit.p == max(sel.ar_lags)
    ref = AutoReg(y[:n_train], lags=fit.p, trend="c").fit()
    np.testing.assert_allclose([fit.c, *fit.phi], ref.params, rtol=1e-10)
    t = np.array([100, 300, 445, 460, 520, 595])
    ours = fit.forecast(y, t, H)
    for i, o in enumerate(t):
        if o + H <= n_train:  # in sample: statsmodels' dynamic prediction from origin o
            theirs = ref.predict(start=o, end=o + H - 1, dynamic=True)
        else:  # after the training period: the same fitted model applied to the history
            theirs = ref.apply(y[:o], refit=False).forecast(H)
        np.testing.assert_allclose(ours[i], theirs, rtol=1e-9, atol=1e-9)


def test_var_equals_statsmodels_forecasts():
    rng = np.random.default_rng(1)
    n, N = 500, 2
    y = np.zeros((n, N))
    A = np.array([[0.5, 0.2], [-0.1, 0.4]])
    for t in range(1, n):
        y[t] = 0.3 + A @ y[t - 1] + rng.normal(size=N)
    fit = baselines.fit_var(y[:400], maxlag=4)
    ref = VAR(y[:400]).fit(maxlags=4, ic="aic")
    assert fit.p == ref.k_ar
    t = np.array([50, 399, 420, 490])
    ours = fit.forecast(y, t, 6)
    for i, o in enumerate(t):
        np.testing.assert_allclose(ours[i], ref.forecast(y[o - fit.p:o], 6), rtol=1e-9)


def test_ladder_var_takes_the_covariates_and_equals_statsmodels():
    rng = np.random.default_rng(2)
    n = 500
    y = np.zeros((n, 2))  # a target driven by a covariate's lag
    for t in range(1, n):
        y[t, 1] = 0.7 * y[t - 1, 1] + rng.normal()
        y[t, 0] = 0.2 + 0.3 * y[t - 1, 0] + 0.6 * y[t - 1, 1] + 0.5 * rng.normal()
    t = np.array([400, 450, 490])
    out, info = baselines.ladder(y[:, :1], 400, t, 5, 1, maxlag=4, covariates=y[:, 1:])
    ref = VAR(y[:400]).fit(maxlags=4, ic="aic")
    assert info["var_series"] == 2 and info["var_p"] == ref.k_ar
    var = out[f"VAR({ref.k_ar}), AIC"]
    assert var.shape == (3, 5, 1)
    for i, o in enumerate(t):
        np.testing.assert_allclose(var[i, :, 0], ref.forecast(y[o - ref.k_ar:o], 5)[:, 0],
                                   rtol=1e-9)
    # the covariate's lag carries information AR(p) on the target alone cannot see
    truth = np.stack([y[o:o + 5, 0] for o in t])
    ar = next(v for k, v in out.items() if k.startswith("AR("))
    assert np.abs(var[:, 0, 0] - truth[:, 0]).mean() < np.abs(ar[:, 0, 0] - truth[:, 0]).mean()
    assert not any(k.startswith("VAR") for k in baselines.ladder(y[:, :1], 400, t, 5, 1,
                                                                  maxlag=4)[0])


def test_naive_and_seasonal_naive():
    y = np.arange(100, dtype=float)[:, None] ** 1.5
    t = np.array([30, 50])
    np.testing.assert_array_equal(baselines.naive(y, t, 3)[:, :, 0], [[y[29, 0]] * 3,
                                                                      [y[49, 0]] * 3])
    s = baselines.seasonal_naive(y, t, 9, 4)[:, :, 0]
    # step h takes the last value of the same season: t + h - 4 (1 + h // 4)
    np.testing.assert_array_equal(s[0], y[[26, 27, 28, 29, 26, 27, 28, 29, 26], 0])


# -- metrics and losses by hand ----------------------------------------------------------------
def test_mase_smape_and_coverage_by_hand():
    y_train = np.array([[1.0], [3.0], [2.0], [6.0], [np.nan], [4.0]])
    obs = ~np.isnan(y_train)
    # m = 2: pairs (1,2),(3,6),(4,2): |2-1| + |6-3| + |4-2| = 6 over 3 pairs (the one with a
    # missing value is left out)
    assert mase_scale(np.nan_to_num(y_train), obs, 2)[0] == pytest.approx(2.0)
    y = np.array([[[10.0], [20.0]], [[0.0], [5.0]]])  # (B=2, H=2, N=1)
    pred = np.array([[[12.0], [20.0]], [[0.0], [1.0]]])
    mask = np.array([[[True], [True]], [[True], [False]]])
    m = point_metrics(y, pred, mask, np.array([2.0]))
    assert m["mae"] == pytest.approx((2 + 0 + 0) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert m["mase"] == pytest.approx(1 / 3)
    assert m["smape"] == pytest.approx((200 * 2 / 22 + 0 + 0) / 3)  # 0/0 counts as 0
    # 80% interval, 10 observed truths, 8 inside (bounds included), one masked out
    yy = np.arange(11.0)[:, None, None]
    lo, hi = np.full_like(yy, 1.0), np.full_like(yy, 8.0)
    mk = np.ones_like(yy, dtype=bool)
    mk[10] = False
    assert coverage(yy, lo, hi, mk) == pytest.approx(8 / 10)


def test_conformal_offset_by_hand():
    # 9 calibration origins, H=2, N=1; step 0's interval [0, 1] is too narrow, step 1's too wide
    y = np.array([-0.5, 0.2, 0.4, 0.6, 1.1, 1.3, 1.8, 2.5, 0.5])[:, None, None].repeat(2, 1)
    lo, hi = np.zeros_like(y), np.ones_like(y)
    lo[:, 1], hi[:, 1] = -10.0, 10.0
    mask = np.ones_like(y, dtype=bool)
    mask[8, 0] = False  # a missing target is no score
    # step 0: scores max(lo - y, y - hi) of the 8 observed: .5 -.2 -.4 -.4 .1 .3 .8 1.5;
    # level .8: the ceil(9 * .8) = 8th smallest of 8 = 1.5
    # step 1: scores -(10 - |y|), all observed: the ceil(10 * .8) = 8th smallest of 9
    off = conformal_offset(y, lo, hi, mask, 0.8)
    assert off[0, 0] == pytest.approx(1.5)
    s1 = np.sort(np.maximum(-10 - y[:, 1, 0], y[:, 1, 0] - 10))
    assert off[1, 0] == pytest.approx(s1[7])
    # level .5: the ceil(9 * .5) = 5th smallest of step 0's = .3; [-.3, 1.3] covers 5 of 8
    off = conformal_offset(y, lo, hi, mask, 0.5)
    assert off[0, 0] == pytest.approx(0.3)
    assert coverage(y[:, :1], lo[:, :1] - 0.3, hi[:, :1] + 0.3, mask[:, :1]) == 5 / 8


def test_gaussian_and_quantile_losses_by_hand():
    mean = torch.tensor([0.0, 1.0, 2.0])
    scale = torch.tensor([1.0, 2.0, 0.5])
    y = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.ones(3, dtype=torch.bool)
    hand = sum(math.log(s) + 0.5 * math.log(2 * math.pi) + (v - m) ** 2 / (2 * s * s)
               for m, s, v in zip([0, 1, 2], [1, 2, 0.5], [0.5, -1, 2], strict=True)) / 3
    assert float(gaussian_nll(mean, scale, y, mask)) == pytest.approx(hand, rel=1e-6)
    q = (0.1, 0.5, 0.9)
    pred = torch.tensor([[0.0, 1.0, 2.0], [-2.0, 0.0, 1.0]])
    yq = torch.tensor([1.5, -3.0])
    # y=1.5: d = 1.5, .5, -.5 -> .15, .25, .05 ; y=-3: d = -1, -3, -4 -> .9, 1.5, .4
    hand_q = ((0.15 + 0.25 + 0.05) / 3 + (0.9 + 1.5 + 0.4) / 3) / 2
    assert float(pinball(pred, yq, torch.ones(2, dtype=torch.bool), q)) == pytest.approx(hand_q)
    from scipy.stats import norm
    yy, mu, sd = np.array([0.3]), np.array([0.0]), np.array([1.5])
    grid = np.linspace(-30, 30, 200001)  # CRPS = ∫ (F(x) - 1{x >= y})² dx
    integ = np.trapezoid((norm.cdf(grid, 0, 1.5) - (grid >= 0.3)) ** 2, grid)
    assert crps_gaussian(yy, mu, sd, np.array([True])) == pytest.approx(integ, rel=1e-4)


@pytest.mark.parametrize("head", ["point", "gaussian", "quantile"])
def test_missing_targets_are_masked_out_of_the_loss(head):
    net = ForecastNet(3, 1, 1, 4, hidden=6, head=head, quantiles=(0.1, 0.5, 0.9))
    past, fut = torch.randn(5, 10, 3), torch.randn(5, 4, 1)
    y = torch.randn(5, 4, 1)
    mask = torch.rand(5, 4, 1) > 0.4
    with torch.no_grad():
        out = net(past, fut)
    full = forecast_loss(net, out, y, mask)
    y2 = torch.where(mask, y, torch.full_like(y, 1e6))  # change only the missing values
    assert float(forecast_loss(net, out, y2, mask)) == pytest.approx(float(full))
    y3 = torch.where(mask, y, torch.full_like(y, float("nan")))
    assert float(forecast_loss(net, out, y3, mask)) == pytest.approx(float(full))
    # the same as the loss over the observed entries alone
    obs = forecast_loss(net, out[mask], y[mask], torch.ones(int(mask.sum()), dtype=torch.bool))
    assert float(full) == pytest.approx(float(obs), rel=1e-6)


# -- no leakage -------------------------------------------------------------------------------
def table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    t = pd.date_range("2024-01-01", periods=n, freq="h")
    y = 10 + np.sin(np.arange(n) * 2 * np.pi / 24) + rng.normal(0, 0.3, n)
    return pd.DataFrame({"time": t, "y": y, "x": rng.normal(size=n),
                         "wind": rng.choice(["N", "S", "E"], n)})


def test_no_training_window_sees_a_value_after_the_cut():
    df = table()
    s = {"data": None, "target": "y", "lookback": 24, "horizon": 6, "valid_fraction": 0.1,
         "test_fraction": 0.2, "batch_size": 16, "seed": 0, "stride": 1}
    base = ForecastTask(s, MODEL, df=df.copy())
    cut = base.n_train
    planted = df.copy()
    planted.loc[cut:, ["y", "x"]] = 1e9  # every value after the cut
    task = ForecastTask(s, MODEL, df=planted)
    assert task.n_train == cut
    np.testing.assert_allclose(task.mean, base.mean)  # training-period statistics only
    np.testing.assert_allclose(task.std, base.std)
    t = task.train_origins
    assert t.max() + task.H <= cut
    w = windows(task.z, task.frame.observed, t, task.L, task.H, 1, task.frame.n_past)
    assert np.abs(w["past"]).max() < 100 and np.abs(w["y"]).max() < 100
    for _ in range(20):  # and the batches the trainer draws
        b = next(task.batches(0, 1))
        assert float(b["past"].abs().max()) < 100 and float(b["y"].abs().max()) < 100
    # validation origins start at the cut; test origins after the validation period
    assert task.valid_origins.min() >= cut and task.test_origins.min() >= task.n_fit
    assert list(origins(10, 20, 4, 3)) == list(range(10, 18))


def test_frame_one_hot_calendar_and_missing_counts():
    df = table(100)
    df.loc[[3, 4, 50], "y"] = np.nan
    df.loc[7, "wind"] = np.nan
    sch = make_schema(df, "y", None, None, None, None, "interpolate")
    assert sch["time"] == ["time"] and sch["calendar"] == ["hour", "dow"]
    assert sch["categories"] == {"wind": ["E", "N", "S"]}
    f = frame(df, sch)
    assert f.names == ["y", "x", "wind=E", "wind=N", "wind=S", "hour_sin", "hour_cos",
                       "dow_sin", "dow_cos"]
    assert f.n_past == 5 and f.missing == {"y": 3, "wind": 1}
    assert not f.observed[[3, 4, 50], 0].any() and f.observed.sum() == 97
    assert f.values[3, 0] == pytest.approx(df.y[2] + (df.y[5] - df.y[2]) / 3)
    mean, _ = norm_stats(f.values, f.observed, 40)
    assert mean[0] == pytest.approx(np.nanmean(df.y[:40]))


# -- bad input --------------------------------------------------------------------------------
def test_bad_input_names_column_and_row():
    df = table(100)
    bad = df.copy()
    bad["y"] = bad["y"].astype(object)
    bad.loc[5, "y"] = "n/a?"
    with pytest.raises(ValueError, match=r"target column 'y' is not numeric: row 6"):
        make_schema(bad, "y", None, None, None, None)
    bad = df.copy()
    bad["time"] = bad["time"].astype(str)
    bad.loc[9, "time"] = "yesterday"
    with pytest.raises(ValueError, match=r"time column 'time': row 10 .*does not parse"):
        make_schema(bad, "y", None, None, None, None)
    bad = df.copy()
    bad.loc[20, "time"] = bad.loc[10, "time"]
    with pytest.raises(ValueError, match=r"not increasing: row 21"):
        make_schema(bad, "y", None, None, None, None)
    bad = df.copy()
    bad["x"] = np.nan
    with pytest.raises(ValueError, match=r"column 'x' is empty"):
        frame(bad, make_schema(bad, "y", None, None, None, None))
    s = {"data": None, "target": "y", "lookback": 90, "horizon": 20, "valid_fraction": 0.1,
         "test_fraction": 0.2, "batch_size": 16, "seed": 0}
    with pytest.raises(ValueError, match=r"100 rows, fewer than lookback \+ horizon = 90 \+ 20"):
        ForecastTask(s, MODEL, df=df)
    with pytest.raises(ValueError, match=r"--target 'z' is not a column"):
        make_schema(df, "z", None, None, None, None)


# -- a tiny run end to end --------------------------------------------------------------------
TINY = ["--steps", "20", "--hidden", "8", "--lookback", "24", "--horizon", "6", "--maxlag",
        "4", "--batch-size", "32", "--eval-every", "10", "--quiet"]


def test_tiny_run_then_eval_load_and_forecast(tmp_path, capsys):
    df = table(300)
    df.loc[[30, 31, 200], "y"] = np.nan
    data = tmp_path / "series.csv"
    df.to_csv(data, index=False)
    run = tmp_path / "run"
    assert main(["train", "forecast", "--data", str(data), "--target", "y", "--out", str(run),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "| naive |" in out and "Markov AR(1)" in out and "rnnkit GRU" in out
    assert (run / "metrics.json").is_file() and (run / "metrics.png").is_file()
    assert main(["eval", str(run)]) == 0
    assert "seasonal naive (m=24)" in capsys.readouterr().out
    fc = rnnkit.load(run)
    recent = df.iloc[:250]
    pred = fc.forecast(recent)
    assert len(pred) == 6 and list(pred.columns) == ["time", "y", "y_lo", "y_hi"]
    assert pred["time"].iloc[0] == df["time"].iloc[250]
    assert (pred.y_lo <= pred.y).all() and (pred.y <= pred.y_hi).all()
    # the saved model's interval is calibrated on the validation origins: it covers 80% there
    task = fc.task()
    assert fc.model.interval_offset.abs().sum() > 0
    yv, mv = task.truth(task.valid_origins)
    lo_hi = task.forecast_at(fc.model, task.valid_origins)
    for h in range(6):
        assert coverage(yv[:, h], lo_hi["lo"][:, h], lo_hi["hi"][:, h], mv[:, h]) >= 0.8
    ev = fc.evaluate()
    assert set(ev["rows"]) >= {"naive", "Markov AR(1)"}
    assert main(["forecast", str(run), "--data", str(data)]) == 0
    assert (run / "forecast.csv").is_file()
    with pytest.raises(ValueError, match=r"lacks the covariate column 'x'"):
        fc.forecast(recent.drop(columns="x"))
    with pytest.raises(ValueError, match=r"has 10 rows; the model reads the last 24"):
        fc.forecast(recent.iloc[:10])


def test_seq2seq_teacher_forcing_in_training_own_predictions_at_inference():
    net = ForecastNet(3, 1, 1, 5, hidden=6, head="gaussian", arch="seq2seq")
    past, fut = torch.randn(4, 8, 3), torch.randn(4, 5, 1)
    y, y2 = torch.randn(4, 5, 1), torch.randn(4, 5, 1)
    net.train()
    a, b = net(past, fut, y), net(past, fut, y2)
    torch.testing.assert_close(a[:, 0], b[:, 0])  # step 0 reads the last observed value
    assert not torch.allclose(a[:, 1:], b[:, 1:])  # later steps read the truth
    net.eval()
    torch.testing.assert_close(net(past, fut, y), net(past, fut, y2))  # its own predictions
    assert (net(past, fut)[..., 1] > 0).all()  # the scale is positive
