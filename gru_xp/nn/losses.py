"""Losses, each forward followed by its backward. Every loss is a 0-d device array (no host sync).

Legend: B batch, K outputs, Q quantile levels.
Forecasting losses take an optional weight (B, K) >= 0 per output (issue 18: panels mask the targets a window does
not have with 0 and weight each window by its series' scale): loss = mean over every element of weight * term, so
a weight of ones gives the unweighted mean. Without a weight the unweighted code runs, unchanged.
"""
from __future__ import annotations


def mse(xp, pred, target, weight=None):
    """Mean over every element of (pred - target)^2 (times weight)."""
    diff = pred - target
    if weight is None:
        return xp.mean(diff * diff)
    return xp.mean(weight * diff * diff)


def mse_backward(xp, pred, target, weight=None):
    """d mean((pred - target)^2) / d pred, same shape as pred."""
    n = 1
    for s in pred.shape:
        n *= s
    if weight is None:
        return (2.0 / n) * (pred - target)
    return (2.0 / n) * weight * (pred - target)


def mae(xp, pred, target, weight=None):
    """Mean over every element of |pred - target| (times weight)."""
    err = xp.abs(pred - target)
    return xp.mean(err) if weight is None else xp.mean(weight * err)


def mae_backward(xp, pred, target, weight=None):
    """d mae / d pred = sign(pred - target) / n (times weight), same shape as pred; at pred == target the
    subgradient 0 (torch's choice: d|u|/du = sign(u) = 0 at 0)."""
    n = 1
    for s in pred.shape:
        n *= s
    g = xp.sign(pred - target) / n
    return g if weight is None else weight * g


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


def pinball(xp, q, target, taus, weight=None):
    """Mean over B, K, Q of the pinball (quantile) loss rho_tau(u) = max(tau * u, (tau - 1) * u), u = y - q.
    q (B, K, Q) quantile forecasts, target (B, K), taus (Q,) the quantile levels in (0, 1); weight (B, K) or None."""
    u = target[..., None] - q  # (B, K, Q)
    rho = xp.maximum(taus * u, (taus - 1.0) * u)
    return xp.mean(rho) if weight is None else xp.mean(weight[..., None] * rho)


def pinball_backward(xp, q, target, taus, weight=None):
    """d pinball / d q, same shape as q: -tau / n where the target is above the quantile (u > 0), (1 - tau) / n
    where it is below; at u == 0 (a kink) the u < 0 side's (1 - tau) / n."""
    u = target[..., None] - q  # (B, K, Q)
    n = 1
    for s in q.shape:
        n *= s
    g = xp.where(u > 0, -taus, 1.0 - taus) / n
    return g if weight is None else weight[..., None] * g
