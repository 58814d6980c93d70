"""Losses, each forward followed by its backward. Every loss is a 0-d device array (no host sync).

Legend: B batch, K outputs, Q quantile levels.
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


def pinball(xp, q, target, taus):
    """Mean over B, K, Q of the pinball (quantile) loss rho_tau(u) = max(tau * u, (tau - 1) * u), u = y - q.
    q (B, K, Q) quantile forecasts, target (B, K), taus (Q,) the quantile levels in (0, 1)."""
    u = target[..., None] - q  # (B, K, Q)
    return xp.mean(xp.maximum(taus * u, (taus - 1.0) * u))


def pinball_backward(xp, q, target, taus):
    """d pinball / d q, same shape as q: -tau / n where the target is above the quantile (u > 0), (1 - tau) / n
    where it is below; at u == 0 (a kink) the u < 0 side's (1 - tau) / n."""
    u = target[..., None] - q  # (B, K, Q)
    n = 1
    for s in q.shape:
        n *= s
    return xp.where(u > 0, -taus, 1.0 - taus) / n
