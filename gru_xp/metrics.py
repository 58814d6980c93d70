"""Forecast accuracy on the original scale, beside the naive and seasonal-naive baselines (host, NumPy).

All metrics take actual and predicted arrays of the same shape, (N,) or (N, K); for a K-step head they are computed
over all N*K outputs.
    RMSE = sqrt(mean(e^2))     MAE = mean(|e|)     MAPE = 100 * mean(|e / actual|)  (NaN if any actual is 0)
    MASE = MAE / scale, where scale = mean |y[t] - y[t-m]| over the training part of the series (in-sample
    seasonal-naive MAE with the run's season lag m; m = 1 gives the classic naive scaling).
"""
from __future__ import annotations

import math

import numpy as np

METRICS = ("rmse", "mae", "mape", "mase")
MODELS = ("model", "naive", "seasonal_naive")


def rmse(actual, pred) -> float:
    e = np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return float(np.sqrt(np.mean(e * e)))


def mae(actual, pred) -> float:
    e = np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return float(np.mean(np.abs(e)))


def mape(actual, pred) -> float:
    a = np.asarray(actual, dtype=np.float64)
    if np.any(a == 0):
        return math.nan
    return float(100.0 * np.mean(np.abs((np.asarray(pred, dtype=np.float64) - a) / a)))


def mase_scale(y_train, season: int = 1) -> float:
    """In-sample MAE of the seasonal-naive forecast (lag `season`) on the training part."""
    y = np.asarray(y_train, dtype=np.float64)
    m = max(int(season), 1)
    if y.size <= m:
        return math.nan
    s = float(np.mean(np.abs(y[m:] - y[:-m])))
    return s if s > 0 else math.nan


def mase(actual, pred, scale: float) -> float:
    if not (scale > 0):
        return math.nan
    return mae(actual, pred) / scale


def score(actual, pred, scale: float) -> dict:
    return {"rmse": rmse(actual, pred), "mae": mae(actual, pred), "mape": mape(actual, pred),
            "mase": mase(actual, pred, scale)}


def evaluate(actual, preds: dict, scale: float) -> dict:
    """{name: {rmse, mae, mape, mase}} for each prediction array in `preds` (model, naive, seasonal_naive)."""
    return {name: score(actual, p, scale) for name, p in preds.items()}


def skill(split_metrics: dict, baseline: str, metric: str = "rmse") -> float:
    """model / baseline for one split's metrics; < 1 means the model beats the baseline."""
    b = split_metrics[baseline][metric]
    m = split_metrics["model"][metric]
    return m / b if b and b > 0 and math.isfinite(b) else math.nan


def fmt(v) -> str:
    """A metric for a table: 4 significant digits, 'n/a' for None/NaN/inf."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


_fmt = fmt


def format_table(metrics: dict) -> str:
    """A plain-text table: one row per (split, predictor), metrics as columns, plus the RMSE skill ratios."""
    head = f"{'split':<6} {'predictor':<15}" + "".join(f"{m.upper():>10}" for m in METRICS) + f"{'RMSE/base':>11}"
    lines = [head, "-" * len(head)]
    for split, sm in metrics.items():
        for name in MODELS:
            if name not in sm:
                continue
            row = f"{split:<6} {name:<15}" + "".join(f"{_fmt(sm[name][m]):>10}" for m in METRICS)
            row += f"{'':>11}" if name == "model" else f"{_fmt(skill(sm, name)):>11}"
            lines.append(row)
    lines.append("RMSE/base = model RMSE / baseline RMSE (< 1: the model beats that baseline); original scale.")
    return "\n".join(lines)


def jsonable(obj):
    """NaN/inf -> None so that metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
