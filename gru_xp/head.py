"""Linear head and MSE loss, each followed by its backward.

Legend: B batch, F features into the head (D*H), K outputs (forecast horizon).
"""
from __future__ import annotations


def linear_forward(xp, w, b, h):
    """h (B, F), w (K, F), b (K,) -> out (B, K)."""
    return h @ xp.matrix_transpose(w) + b


def linear_backward(xp, w, h, dout, gw, gb):
    """dout (B, K) -> dh (B, F); accumulates gw (K, F) and gb (K,)."""
    gw += xp.matrix_transpose(dout) @ h  # (K, F)
    gb += xp.sum(dout, axis=0)  # (K,)
    return dout @ w  # (B, F)


def mse(xp, pred, target):
    """Mean over every element; a 0-d device array (no host sync)."""
    diff = pred - target
    return xp.mean(diff * diff)


def mse_backward(xp, pred, target):
    """d mean((pred - target)^2) / d pred, same shape as pred."""
    n = 1
    for s in pred.shape:
        n *= s
    return (2.0 / n) * (pred - target)
