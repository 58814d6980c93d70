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
