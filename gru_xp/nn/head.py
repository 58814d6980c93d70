"""Linear (dense) layers, each forward followed by its backward.

Legend: B batch, F features into the layer (D*H for a head on the recurrent state), K outputs.
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
