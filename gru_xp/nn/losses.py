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


# ---- classification: losses on logits (B, K), targets (B, K) ---------------------------------------------------
def _log1p_exp_neg_abs(xp, z):
    """log(1 + exp(-|z|)): never overflows, exact for large |z| (exp underflows to 0)."""
    return xp.log1p(xp.exp(-xp.abs(z)))


def bce_with_logits(xp, logits, target):
    """Binary cross-entropy on logits z with targets y in [0, 1], mean over every element:
    -y log σ(z) - (1-y) log(1-σ(z)) = max(z, 0) - z y + log(1 + exp(-|z|)), stable for any |z|."""
    z = logits
    return xp.mean(xp.maximum(z, xp.zeros_like(z)) - z * target + _log1p_exp_neg_abs(xp, z))


def bce_with_logits_backward(xp, logits, target):
    """d bce_with_logits / d logits = (σ(z) - y) / n, same shape as logits."""
    n = 1
    for s in logits.shape:
        n *= s
    sig = 0.5 * xp.tanh(0.5 * logits) + 0.5  # σ(z) without overflow
    return (sig - target) / n


def log_softmax(xp, logits):
    """logits (B, K) -> log softmax over K, shifted by the row max (no overflow)."""
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))


def softmax_cross_entropy(xp, logits, target):
    """Softmax cross-entropy, mean over the B rows: -sum_k y_k log softmax(z)_k; target (B, K) one-hot (or any
    distribution over K)."""
    return -xp.sum(target * log_softmax(xp, logits)) / logits.shape[0]


def softmax_cross_entropy_backward(xp, logits, target):
    """d softmax_cross_entropy / d logits = (softmax(z) * sum_k y_k - y) / B (sum_k y_k = 1 for a distribution)."""
    p = xp.exp(log_softmax(xp, logits))  # (B, K)
    return (p * xp.sum(target, axis=-1, keepdims=True) - target) / logits.shape[0]


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
