"""Forecast accuracy on the original scale, beside the naive and seasonal-naive baselines (host, NumPy).

All metrics take actual and predicted arrays of the same shape, (N,) or (N, K); for a K-step head they are computed
over all N*K outputs.
    RMSE = sqrt(mean(e^2))     MAE = mean(|e|)     MAPE = 100 * mean(|e / actual|)  (NaN if any actual is 0)
    MASE = MAE / scale, where scale = mean |y[t] - y[t-m]| over the training part of the series (in-sample
    seasonal-naive MAE with the run's season lag m; m = 1 gives the classic naive scaling).
Prediction intervals [l, u] at level c (alpha = 1 - c), over every output with an interval (NaN bounds = none issued):
    coverage_C = mean(l <= y <= u)     width_C = mean(u - l)
    interval_score_C = mean((u - l) + (2 / alpha) * (l - y) * [y < l] + (2 / alpha) * (y - u) * [y > u])  (Winkler)
with C the level in percent (80, 95). An unbounded interval (too few errors to calibrate) covers, with width inf.
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


def level_name(level: float) -> str:
    """0.8 -> "80", 0.95 -> "95", 0.975 -> "97.5": the suffix of interval columns and metric keys."""
    return f"{100.0 * float(level):.6g}"


def interval_scores(actual, lower, upper, level: float) -> dict:
    """{coverage_C, width_C, interval_score_C} over the outputs whose interval was issued (finite or unbounded,
    not NaN); NaN values when there are none."""
    a, lo, up = (np.asarray(v, dtype=np.float64).ravel() for v in (actual, lower, upper))
    keep = ~(np.isnan(lo) | np.isnan(up) | np.isnan(a))
    c = level_name(level)
    if not keep.any():
        return {f"coverage_{c}": math.nan, f"width_{c}": math.nan, f"interval_score_{c}": math.nan}
    a, lo, up = a[keep], lo[keep], up[keep]
    alpha = 1.0 - float(level)
    with np.errstate(invalid="ignore"):  # inf - inf never happens (lower < upper); inf * 0 is guarded below
        miss = np.where(a < lo, lo - a, 0.0) + np.where(a > up, a - up, 0.0)
    return {f"coverage_{c}": float(np.mean((lo <= a) & (a <= up))), f"width_{c}": float(np.mean(up - lo)),
            f"interval_score_{c}": float(np.mean((up - lo) + (2.0 / alpha) * miss))}


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


def format_intervals(metrics: dict, levels) -> str:
    """Coverage, mean width and interval score of each level, per split with intervals and predictor."""
    cols = [(f"{k}_{level_name(c)}", f"{label} {level_name(c)}%") for c in levels
            for k, label in (("coverage", "cover"), ("width", "width"), ("interval_score", "score"))]
    head = f"{'split':<8} {'predictor':<15}" + "".join(f"{label:>13}" for _, label in cols)
    lines = [head, "-" * len(head)]
    for split, sm in metrics.items():
        for name in MODELS:
            if name in sm and cols[0][0] in sm[name]:
                lines.append(f"{split:<8} {name:<15}" + "".join(f"{_fmt(sm[name].get(k)):>13}" for k, _ in cols))
    lines.append("prediction intervals (conformal, calibrated only on errors observed before each origin); width "
                 "and interval score on the original scale; n/a: some intervals unbounded (too few errors observed "
                 "yet, e.g. at the first validation origins)")
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


# ==== classification (issue 17): accuracy, macro-F1 and log loss beside the majority and 1-NN baselines ============
CLASS_PREDICTORS = ("model", "majority", "nearest_neighbor")
CLASS_METRICS = ("accuracy", "macro_f1", "loss")


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if y_true.size else math.nan


def macro_f1(y_true, y_pred) -> float:
    """Mean F1 over the classes that occur in y_true or y_pred (a class never seen nor predicted is left out)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not y_true.size:
        return math.nan
    f1 = []
    for c in np.union1d(y_true, y_pred):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        denom = float(np.sum(y_pred == c) + np.sum(y_true == c))
        f1.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def log_softmax_host(logits) -> np.ndarray:
    """(N, K) logits -> (N, C) log-probabilities: K = 1 is one binary logit (C = 2), else softmax over K."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] == 1:  # log σ(z) = -log(1 + exp(-z)), log(1 - σ(z)) = -log(1 + exp(z)), both stable
        return np.concatenate([-np.logaddexp(0.0, z), -np.logaddexp(0.0, -z)], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def log_loss(y_true, log_probs) -> float:
    """Mean -log p(true class): the model's cross-entropy, on the host."""
    y = np.asarray(y_true, dtype=np.int64)
    lp = np.asarray(log_probs, dtype=np.float64)
    return float(-np.mean(lp[np.arange(len(y)), y])) if len(y) else math.nan


def class_scores(y_true, y_pred, log_probs=None) -> dict:
    """{accuracy, macro_f1, loss} (loss None for a predictor without probabilities, e.g. 1-NN)."""
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred),
            "loss": None if log_probs is None else log_loss(y_true, log_probs)}


def majority_baseline(train_y, n_classes: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Predict the most frequent training class (ties: the first); probabilities = the training class shares.
    -> (predictions (n,), log-probabilities (n, C))."""
    counts = np.bincount(np.asarray(train_y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    prior = counts / counts.sum()
    with np.errstate(divide="ignore"):
        lp = np.log(prior)
    return np.full(n, int(np.argmax(counts)), dtype=np.int64), np.tile(lp, (n, 1))


def nearest_neighbor(train_feats, train_y, feats, leave_one_out: bool = False, chunk: int = 512) -> np.ndarray:
    """1-nearest-neighbour labels under Euclidean distance (ties: the first training case). leave_one_out: feats
    are the training cases themselves and each one's own row is skipped (an honest training-split score)."""
    A = np.asarray(train_feats, dtype=np.float64)
    Q = np.asarray(feats, dtype=np.float64)
    y = np.asarray(train_y, dtype=np.int64)
    a2 = np.sum(A * A, axis=1)
    out = np.empty(len(Q), dtype=np.int64)
    for s in range(0, len(Q), chunk):
        q = Q[s:s + chunk]
        d = a2[None, :] - 2.0 * (q @ A.T) + np.sum(q * q, axis=1)[:, None]  # (n, N_train) squared distances
        if leave_one_out:
            d[np.arange(len(q)), np.arange(s, s + len(q))] = np.inf
        out[s:s + chunk] = y[np.argmin(d, axis=1)]
    return out


def format_class_table(mets: dict) -> str:
    """One row per (split, predictor): accuracy, macro-F1, loss."""
    head = f"{'split':<6} {'predictor':<17}{'accuracy':>10}{'macro F1':>10}{'loss':>10}"
    lines = [head, "-" * len(head)]
    for split, sm in mets.items():
        for name in CLASS_PREDICTORS:
            if name in sm:
                r = sm[name]
                lines.append(f"{split:<6} {name:<17}" + "".join(f"{fmt(r[m]):>10}" for m in CLASS_METRICS))
    lines.append("majority = most frequent training class; nearest_neighbor = 1-NN (Euclidean; training split: "
                 "leave-one-out).")
    return "\n".join(lines)


# ==== panels (issue 18): per-series scores averaged over series, as the Monash archive does =======================
PANEL_METRICS = ("mase", "mase_median", "smape", "rmse", "mae", "mape")


def smape(actual, pred) -> float:
    """The archive's sMAPE: mean of 200 |F - Y| / (|F| + |Y|) over the outputs (0/0 counts as 0)."""
    a, f = np.asarray(actual, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    den = np.abs(f) + np.abs(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(den > 0, 200.0 * np.abs(f - a) / den, 0.0)
    return float(np.mean(v))


def series_scores(actual, pred, scale: float) -> dict:
    """One series' {mase, smape, rmse, mae, mape} over its forecast steps."""
    return {"mase": mase(actual, pred, scale), "smape": smape(actual, pred), "rmse": rmse(actual, pred),
            "mae": mae(actual, pred), "mape": mape(actual, pred)}


def panel_summary(rows: list) -> dict:
    """Per-series scores -> {mase (mean over series), mase_median, smape, rmse, mae, mape (means over series),
    series}; a series whose MASE scale is 0 (a constant training part) is left out of the MASE means."""
    def col(k):
        return np.array([r[k] for r in rows], dtype=np.float64)

    def nanmean(v):
        v = v[np.isfinite(v)]
        return float(np.mean(v)) if v.size else math.nan

    m = col("mase")
    ok = m[np.isfinite(m)]
    return {"mase": nanmean(m), "mase_median": float(np.median(ok)) if ok.size else math.nan,
            "smape": nanmean(col("smape")), "rmse": nanmean(col("rmse")), "mae": nanmean(col("mae")),
            "mape": nanmean(col("mape")), "series": len(rows)}


def format_panel_table(mets: dict) -> str:
    """One row per (split, predictor): the panel metrics."""
    head = f"{'split':<6} {'predictor':<15}" + "".join(f"{k.upper():>12}" for k in PANEL_METRICS[:5])
    lines = [head, "-" * len(head)]
    for split, sm in mets.items():
        for name in MODELS:
            if name in sm:
                lines.append(f"{split:<6} {name:<15}" + "".join(f"{fmt(sm[name].get(k)):>12}"
                                                                 for k in PANEL_METRICS[:5]))
    lines.append("means over series of each series' score (MASE: its MAE / in-sample seasonal-naive MAE of its "
                 "training part); MASE_MEDIAN: the median; original scale.")
    return "\n".join(lines)
