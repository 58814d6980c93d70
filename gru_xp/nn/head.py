"""Linear (dense) layers, ReLU, and the non-crossing quantile head, each forward followed by its backward.

Legend: B batch, F features into the layer (D*H for a head on the recurrent state), K outputs (horizon steps),
Q quantile levels.

Non-crossing quantiles by construction: the head's raw outputs r (B, K, Q) become
    q_0 = r_0,   q_j = q_{j-1} + softplus(r_j)  (j = 1 .. Q-1)
a base quantile plus cumulative non-negative increments, so q_0 <= q_1 <= ... <= q_{Q-1} for every input and every
weight: no training run, however it ends, can produce crossing quantiles.
"""
from __future__ import annotations


def linear_forward(xp, w, b, h):
    """h (B, F), w (K, F), b (K,) -> out (B, K)."""
    return h @ xp.matrix_transpose(w) + b


def linear_backward(xp, w, h, dout, gw, gb):
    """dout (B, K) -> dh (B, F); accumulates gw (K, F) and gb (K,)."""
    gw += xp.matrix_transpose(dout) @ h  # (K, F)
    gb += xp.sum(dout, axis=0)  # (K,)
    if w.shape[0] == 1:  # one output: an outer product, the same values; NumPy's matmul takes ~26 us for it at
        return dout * w  # (B, 1) * (1, F) -> (B, F)   (B 256, F 70), a broadcast multiply ~3 us
    return dout @ w  # (B, F)


def relu_forward(xp, a):
    """a (B, F) -> max(a, 0) (B, F)."""
    return xp.maximum(a, xp.zeros_like(a))


def relu_backward(xp, out, dout):
    """Backward of relu_forward given its output: dout passes where out > 0 (the subgradient at 0 is 0, as torch)."""
    return dout * xp.astype(out > 0, dout.dtype)


def dense_relu_forward(xp, w, b, h):
    """The tutorial's Dense(units, relu): h (B, F), w (K, F), b (K,) -> relu(h w^T + b) (B, K)."""
    return relu_forward(xp, linear_forward(xp, w, b, h))


def dense_relu_backward(xp, w, h, out, dout, gw, gb):
    """Backward of dense_relu_forward given its output `out`: dout (B, K) -> dh (B, F); accumulates gw, gb."""
    return linear_backward(xp, w, h, relu_backward(xp, out, dout), gw, gb)


# ---- softplus: log(1 + e^x) ------------------------------------------------------------------------------------
def softplus(xp, x):
    """Elementwise log(1 + e^x), written max(x, 0) + log1p(e^-|x|) so that no exp overflows."""
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus_backward(xp, x, dout):
    """d softplus(x) / dx = sigmoid(x) = (1 + tanh(x / 2)) / 2 (no overflow for any x); returns dout * sigmoid(x)."""
    return dout * (0.5 + 0.5 * xp.tanh(0.5 * x))


# ---- cumulative sum along the last axis ------------------------------------------------------------------------
def cumsum_last(xp, x):
    """(..., J) -> (..., J), out_j = sum_{i <= j} x_i."""
    return xp.cumulative_sum(x, axis=-1)


def cumsum_last_backward(xp, dout):
    """dx_i = sum_{j >= i} dout_j: the cumulative sum of the reversed gradient, reversed back."""
    return xp.flip(xp.cumulative_sum(xp.flip(dout, axis=-1), axis=-1), axis=-1)


# ---- the non-crossing quantile head ----------------------------------------------------------------------------
def noncrossing_forward(xp, raw):
    """raw (B, K, Q) -> q (B, K, Q), nondecreasing along Q: q_0 = raw_0, q_j = raw_0 + sum_{1 <= i <= j}
    softplus(raw_i)."""
    base = raw[..., :1]  # (B, K, 1)
    if raw.shape[-1] == 1:
        return base
    steps = cumsum_last(xp, softplus(xp, raw[..., 1:]))  # (B, K, Q-1)
    return xp.concat([base, base + steps], axis=-1)


def noncrossing_backward(xp, raw, dq):
    """dq (B, K, Q) -> draw (B, K, Q). The base raw_0 feeds every q_j (its grad is the sum of dq over Q); raw_i
    (i >= 1) feeds q_j for j >= i through softplus."""
    dbase = xp.sum(dq, axis=-1, keepdims=True)  # (B, K, 1)
    if raw.shape[-1] == 1:
        return dbase
    dsteps = cumsum_last_backward(xp, dq[..., 1:])  # (B, K, Q-1): dL/d softplus(raw_i)
    return xp.concat([dbase, softplus_backward(xp, raw[..., 1:], dsteps)], axis=-1)
