"""Every plot of gru_xp, in one style, each written atomically as a PNG (host only; matplotlib's object API, no
pyplot state, so plotting is safe off the main thread and leaks no figures).

    run_plots(folder, prep, predictions, history)  a run folder's cost, sequence, residual and forecast plots
    cost / sequence / residual / forecast          those four, one by one
    backtest(path, r)                              walk-forward folds against the baselines
    diagnostics(diag, path) / vanishing(r, path)   per-step gradient norms and gates; the vanishing-gradient curves
    curves(path, ...) / confusion(path, ...)       a classifier's loss and accuracy per epoch; its confusion matrix

One style: actual black, model red, naive gray dashed, seasonal naive orange dotted; train/validation/test blue,
green, red; light grid. Each function returns the path it wrote.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import atomic_path
from .metrics import level_name

DPI = 100
ACTUAL = {"color": "black", "lw": 1.3, "label": "actual"}
MODEL = {"color": "tab:red", "lw": 1.1}
NAIVE = {"color": "tab:gray", "lw": 1.0, "ls": "--"}
SEASONAL = {"color": "tab:orange", "lw": 1.0, "ls": ":"}
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:green", "test": "tab:red"}


def _figure(width: float, height: float, rows: int = 1, sharex: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.3)
    return fig, axes


def save(fig, path) -> str:
    """Write the figure as a PNG under a temporary name, then rename it into place."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return str(path)


def time_axis(labels) -> np.ndarray:
    """Date strings -> datetimes for a proper axis; integers (steps, years) stay integers."""
    import pandas as pd

    if len(labels) and isinstance(labels[0], str):
        return np.asarray(pd.to_datetime(labels))
    return np.asarray(labels)


# ---- a run folder -------------------------------------------------------------------------------------------------
def cost(path, train_loss, val_loss, best_epoch: int | None = None) -> str:
    fig, ax = _figure(7, 4)
    ep = np.arange(1, len(train_loss) + 1)
    ax.plot(ep, train_loss, color=SPLIT_COLORS["train"], label="train")
    if val_loss is not None and len(val_loss) and np.isfinite(val_loss).any():
        ax.plot(ep, val_loss, color=SPLIT_COLORS["val"], label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (scaled units)")
    ax.set_title("Cost per epoch")
    ax.legend()
    return save(fig, path)


def sequence(path, labels, y, fitted: dict, test_start: int, title: str = "") -> str:
    """The whole series with the 1-step-ahead predictions over train/val/test (fitted: split -> (idx, pred))."""
    fig, ax = _figure(10, 4)
    x = time_axis(labels)
    ax.plot(x, y, **{**ACTUAL, "lw": 1.0})
    for split, (idx, pred) in fitted.items():
        if len(idx):
            ax.plot(x[idx], pred, color=SPLIT_COLORS.get(split), lw=1, label=f"predicted ({split})")
    if 0 < test_start < len(y):
        ax.axvline(x[test_start], color="gray", ls="--", lw=1)
    ax.set_title(title or "Actual vs predicted (1 step ahead)")
    ax.legend()
    return save(fig, path)


def residual(path, pred, actual, split_names) -> str:
    fig, ax = _figure(6, 4)
    pred, actual, split_names = np.asarray(pred), np.asarray(actual), np.asarray(split_names)
    for split, c in SPLIT_COLORS.items():
        m = split_names == split
        if m.any():
            ax.scatter(pred[m], actual[m] - pred[m], s=6, alpha=0.6, color=c, label=split)
    ax.axhline(0, color="black", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("Residual vs predicted")
    ax.legend()
    return save(fig, path)


def forecast(path, labels, actual, model, naive, seasonal, season: int, bands: dict | None = None) -> str:
    """The test period: actual, the model and both baselines (1 step ahead); bands {level: (lower, upper)} shaded
    around the model, the widest lightest."""
    fig, ax = _figure(10, 4)
    x = time_axis(labels)
    for i, (level, (lo, up)) in enumerate(sorted((bands or {}).items(), reverse=True)):
        lo, up = np.asarray(lo, dtype=np.float64), np.asarray(up, dtype=np.float64)
        if np.isfinite(lo).any() or np.isfinite(up).any():
            ax.fill_between(x, lo, up, color=MODEL["color"], alpha=0.12 + 0.13 * i, lw=0,
                            label=f"{100 * level:g}% interval")
    ax.plot(x, actual, **{**ACTUAL, "lw": 1.5})
    ax.plot(x, model, **MODEL, label="model")
    ax.plot(x, naive, **NAIVE, label="naive (last value)")
    if season > 1:
        ax.plot(x, seasonal, **SEASONAL, label=f"seasonal naive (lag {season})")
    ax.set_title("Test period: model vs baselines" + (" (shaded: the model's prediction intervals, 1 step ahead)"
                                                      if bands else ""))
    ax.legend()
    return save(fig, path)


def run_plots(folder, prep, preds: dict, history, levels=()) -> None:
    """cost.png, sequence.png, residual.png and forecast.png of a run (prep: data.Prepared; preds: split ->
    {"anchors", "actual", "model", "naive", "seasonal_naive", "lower_80", ...} on the original scale; history:
    train.History; levels: the prediction intervals' levels, shaded in forecast.png)."""
    d = Path(folder)
    labels = np.asarray(prep.series.labels(), dtype=object)
    cost(d / "cost.png", history.train_loss, history.val_loss, history.best_epoch)
    fitted = {k: (p["anchors"] + 1, p["model"][:, 0]) for k, p in preds.items()}
    sequence(d / "sequence.png", list(labels), prep.series.y, fitted, prep.test_start,
             f"{prep.series.target}: actual vs predicted (1 step ahead)")
    allp = np.concatenate([p["model"][:, 0] for p in preds.values()])
    alla = np.concatenate([p["actual"][:, 0] for p in preds.values()])
    names = np.concatenate([[k] * len(p["anchors"]) for k, p in preds.items()])
    residual(d / "residual.png", allp, alla, names)
    if "test" in preds:
        p = preds["test"]
        bands = {c: (p[f"lower_{level_name(c)}"][:, 0], p[f"upper_{level_name(c)}"][:, 0]) for c in levels
                 if f"lower_{level_name(c)}" in p}
        forecast(d / "forecast.png", list(labels[p["anchors"] + 1]), p["actual"][:, 0], p["model"][:, 0],
                 p["naive"][:, 0], p["seasonal_naive"][:, 0], prep.pipeline.season, bands)


# ---- backtest -----------------------------------------------------------------------------------------------------
def backtest(path, r, context: int | None = None) -> str:
    """Actual vs model vs baselines (1 step ahead from each origin) over the folds, fold boundaries marked.
    r: a backtest.BacktestResult (series, boundaries, predictions, config, retrain)."""
    y, labels = r.series.y, r.series.labels()
    b = r.boundaries
    ctx = max(0, b[0] - (context if context is not None else max(r.config.seq_length, (b[-1] - b[0]) // 3)))
    x = time_axis(labels)
    p = r.predictions
    t = p["anchors"] + 1
    fig, ax = _figure(10, 4)
    ax.plot(x[ctx:], y[ctx:], **ACTUAL)
    ax.plot(x[t], p["model"][:, 0], **MODEL, label="model")
    ax.plot(x[t], p["naive"][:, 0], **NAIVE, label="naive")
    season = r.config.season or r.series.season
    if season > 1:
        ax.plot(x[t], p["seasonal_naive"][:, 0], **SEASONAL, label=f"seasonal naive ({season})")
    for i, bi in enumerate(b[:-1]):
        ax.axvline(x[bi], color="tab:blue", lw=0.8, ls="--", alpha=0.7)
        ax.text(x[bi], 1.0, f" fold {i}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                color="tab:blue")
    ax.set_title(f"Walk-forward backtest ({len(b) - 1} folds, retrain {r.retrain}): 1 step ahead")
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)


# ---- inside the network -------------------------------------------------------------------------------------------
def diagnostics(diag, path="diagnostics.png", title: str | None = None) -> str:
    """Two panels: ||dL/dh_t|| against t (log scale, one line per layer), and mean gate activations against t
    (last layer; legend gives each gate's saturation share). diag: a diagnostics.Diagnostics."""
    fig, (ax1, ax2) = _figure(8, 6.5, rows=2, sharex=True)
    L, T = diag.grad_norm.shape
    t = np.arange(T)
    for k in range(L):
        ax1.semilogy(t, np.maximum(diag.grad_norm[k], 1e-300), label=f"layer {k}")
    ax1.set_ylabel("mean ||dL/dh_t||")
    ax1.set_title(title or f"{diag.cell}: gradient reaching each time step"
                  + ("" if diag.loss is None else f" (loss {diag.loss:.4g})"))
    ax1.legend(loc="best", fontsize="small")
    if diag.gates:
        for name, m in diag.gates.items():
            ax2.plot(t, m[-1], label=f"{name} (saturated {100 * diag.saturation[name][-1]:.0f}%)")
        ax2.set_ylim(0.0, 1.0)
        ax2.set_ylabel(f"mean gate, layer {L - 1}")
        ax2.legend(loc="best", fontsize="small")
    else:
        ax2.text(0.5, 0.5, f"{diag.cell} has no gates", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("time step t")
    return save(fig, path)


def vanishing(result: dict, path="vanishing_gradient.png") -> str:
    """The cells' normalised ||dL/dh_t|| on one log-scale plot (diagnostics.vanishing_gradient_experiment)."""
    fig, ax = _figure(8, 4.5)
    for cell, curve in result["curves"].items():
        ax.semilogy(result["steps"], np.maximum(curve, 1e-300), label=f"{cell.upper()} (t=0: {curve[0]:.1e})")
    trained = f"after {result['train_steps']} Adam steps" if result["train_steps"] else "at initialisation"
    if result.get("repeats", 1) > 1:
        trained += f", geometric mean of {result['repeats']} seeds"
    ax.set_title(f"Vanishing gradient on the {result['task']} problem, T={result['T']}, "
                 f"hidden={result['hidden']}, {trained}")
    ax.set_xlabel("time step t (the loss reads the state at t = T-1)")
    ax.set_ylabel("||dL/dh_t|| / ||dL/dh_{T-1}||")
    ax.legend(loc="best")
    return save(fig, path)


# ==== classification (issue 17) ===================================================================================
def curves(path, train_loss, val_loss, train_acc, val_acc, best_epoch: int | None = None) -> str:
    """The tutorial's two panels: loss and accuracy per epoch, training and validation."""
    fig, (ax1, ax2) = _figure_row(10, 4)
    ep = np.arange(1, len(train_loss) + 1)
    for ax, tr, va, what in ((ax1, train_loss, val_loss, "loss"), (ax2, train_acc, val_acc, "accuracy")):
        ax.plot(ep, tr, color=SPLIT_COLORS["train"], label="train")
        if va is not None and len(va) and np.isfinite(np.asarray(va, dtype=float)).any():
            ax.plot(ep, va, color=SPLIT_COLORS["val"], label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_title(f"{what.capitalize()} per epoch")
        ax.legend()
    return save(fig, path)


def _figure_row(width: float, height: float):
    """Two panels side by side, the one style."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def confusion(path, matrix, classes, title: str = "Confusion matrix") -> str:
    """Counts per (true, predicted) class, shaded by each row's share."""
    m = np.asarray(matrix)
    C = len(classes)
    fig, ax = _figure(max(4.0, 0.6 * C + 2.5), max(3.5, 0.6 * C + 2.0))
    ax.grid(False)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(C):
        for j in range(C):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(C), [str(c) for c in classes], rotation=45 if C > 6 else 0)
    ax.set_yticks(range(C), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save(fig, path)


# ==== panels (issue 18) ===========================================================================================
def panel_series(path, panel, test: dict, rows: list, levels=()) -> str:
    """Three panels: the series with the best, the median and the worst model test MASE; each its history (the last
    few seasons), the test actuals, the model's forecast (its intervals shaded) and both baselines.
    test: {series index: {"origin", "actual", "model", "naive", "seasonal_naive", "lower_80", ...}}."""
    scored = sorted((r.get("test_model_mase", np.nan), i) for i, r in enumerate(rows) if i in test
                    and np.isfinite(r.get("test_model_mase", np.nan)))
    picks = [] if not scored else [("best", scored[0][1]), ("median", scored[len(scored) // 2][1]),
                                   ("worst", scored[-1][1])]
    fig, axes = _figure(10, 8, rows=max(1, len(picks)))
    for ax, (what, i) in zip(np.atleast_1d(axes), picks):
        d, y = test[i], panel.series[i].y
        t = d["origin"]
        h = d["model"].size
        start = max(0, t + 1 - max(4 * panel.season, 3 * h, 24))
        x = np.arange(start, t + 1 + h)
        ax.plot(x[:t + 1 - start], y[start:t + 1], **{**ACTUAL, "label": "history"})
        xf = np.arange(t + 1, t + 1 + h)
        for j, level in enumerate(sorted(levels or (), reverse=True)):
            lo, up = d.get(f"lower_{level_name(level)}"), d.get(f"upper_{level_name(level)}")
            if lo is not None and np.isfinite(up).all():
                ax.fill_between(xf, lo, up, color=MODEL["color"], alpha=0.12 + 0.13 * j, lw=0,
                                label=f"{100 * level:g}% interval")
        ax.plot(xf, d["actual"], **{**ACTUAL, "ls": "-", "marker": ".", "label": "test"})
        ax.plot(xf, d["model"], **MODEL, label="model")
        ax.plot(xf, d["naive"], **NAIVE, label="naive")
        if panel.season > 1:
            ax.plot(xf, d["seasonal_naive"], **SEASONAL, label=f"seasonal naive ({panel.season})")
        ax.axvline(t + 0.5, color="gray", ls="--", lw=1)
        ax.set_title(f"{what}: series {panel.names[i]} (model test MASE {rows[i]['test_model_mase']:.3f}, naive "
                     f"{rows[i].get('test_naive_mase', np.nan):.3f})", fontsize=10)
        ax.legend(loc="best", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("step (position in the series)")
    return save(fig, path)
