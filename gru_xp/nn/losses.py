"""Losses, each forward followed by its backward. Every loss is a 0-d device array (no host sync).

Legend: B batch, K outputs.
"""
from __future__ import annotations


def mse(xp, pred, target):
    """Mean over every element of (pred - target)^2."""
    diff = pred - target
    return xp.mean(diff * diff)


def mse_backward(xp, pred, target):
    """d mean((pred - target)^2) / d pred, same shape as pred."""
    n = 1
    for s in pred.shape:
        n *= s
    return (2.0 / n) * (pred - target)
