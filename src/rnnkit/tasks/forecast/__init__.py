"""Forecasting time series with recurrent models, against the autoregressive ladder.

Slots: ``model.py`` (:class:`ForecastNet`: encoder RNN/LSTM/GRU, direct or seq2seq head,
point/Gaussian/quantile outputs; the losses), ``data.py`` (tables, time, features, missing
values, the split by time, training-period normalisation, windows), ``task.py``
(:class:`ForecastTask` for the trainer, the backtest), ``baselines.py`` (naive, seasonal
naive, AR(1), AR(p), VAR via statsmodels), ``metrics.py`` (MAE, RMSE, MASE, sMAPE, coverage,
pinball, CRPS; the plot), ``api.py`` (:func:`load` -> :class:`Forecaster`: ``forecast(df)``,
``evaluate()``), ``cli.py`` (``rnnkit train forecast``, ``rnnkit forecast RUN``, ``rnnkit
eval RUN``; ``SPEC``).
"""

__all__ = ["SPEC", "ForecastNet", "ForecastTask", "Forecaster", "gaussian_nll", "load",
           "pinball"]

from rnnkit.tasks.forecast.api import Forecaster, load
from rnnkit.tasks.forecast.cli import SPEC
from rnnkit.tasks.forecast.model import ForecastNet, gaussian_nll, pinball
from rnnkit.tasks.forecast.task import ForecastTask
