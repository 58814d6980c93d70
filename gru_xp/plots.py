"""PNG plots of a run (matplotlib, Agg backend): cost, sequence, residual, forecast. Host only."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _x(labels):
    """Date strings -> datetimes for a proper axis; integers stay integers."""
    import pandas as pd

    if len(labels) and isinstance(labels[0], str):
        return pd.to_datetime(labels)
    return np.asarray(labels)


def cost(path: Path, train_loss, val_loss, best_epoch: int | None = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ep = np.arange(1, len(train_loss) + 1)
    ax.plot(ep, train_loss, label="train")
    if val_loss is not None and len(val_loss) and np.isfinite(val_loss).any():
        ax.plot(ep, val_loss, label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (scaled units)")
    ax.set_title("Cost per epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sequence(path: Path, labels, y, fitted: dict, test_start: int, title: str = "") -> None:
    """The whole series with the 1-step-ahead predictions over train/val/test (fitted: split -> (idx, pred))."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    x = _x(labels)
    ax.plot(x, y, color="black", lw=1, label="actual")
    colors = {"train": "tab:blue", "val": "tab:green", "test": "tab:red"}
    for split, (idx, pred) in fitted.items():
        if len(idx):
            ax.plot(x[idx], pred, color=colors.get(split), lw=1, label=f"predicted ({split})")
    if 0 < test_start < len(y):
        ax.axvline(x[test_start], color="gray", ls="--", lw=1)
    ax.set_title(title or "Actual vs predicted (1 step ahead)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def residual(path: Path, pred, actual, split_names) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    pred, actual, split_names = np.asarray(pred), np.asarray(actual), np.asarray(split_names)
    for split, c in (("train", "tab:blue"), ("val", "tab:green"), ("test", "tab:red")):
        m = split_names == split
        if m.any():
            ax.scatter(pred[m], actual[m] - pred[m], s=6, alpha=0.6, color=c, label=split)
    ax.axhline(0, color="black", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("Residual vs predicted")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def forecast(path: Path, labels, actual, model, naive, seasonal, season: int) -> None:
    """The test period: actual, the model and both baselines (1 step ahead)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    x = _x(labels)
    ax.plot(x, actual, color="black", lw=1.5, label="actual")
    ax.plot(x, model, color="tab:red", lw=1.2, label="model")
    ax.plot(x, naive, color="tab:gray", lw=1, ls="--", label="naive (last value)")
    if season > 1:
        ax.plot(x, seasonal, color="tab:orange", lw=1, ls=":", label=f"seasonal naive (lag {season})")
    ax.set_title("Test period: model vs baselines")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
