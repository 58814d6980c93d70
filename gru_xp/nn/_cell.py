"""What every cell shares: its four parameter arrays, the sigmoid, the input projection.

Legend: T time steps, B batch, I input features, H hidden units, G gate rows (3H for GRU, 4H for LSTM, H for RNN).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class CellParams:
    """One direction of one layer, in torch's layout. Grads use the same type, same shapes."""

    w_ih: Any  # (G, I)
    w_hh: Any  # (G, H)
    b_ih: Any  # (G,)
    b_hh: Any  # (G,)

    def arrays(self) -> tuple:
        """(w_ih, w_hh, b_ih, b_hh), in that order."""
        return self.w_ih, self.w_hh, self.b_ih, self.b_hh


def sigmoid(xp, a):
    # tanh form: no overflow in exp for large |a| (float32), same value as 1/(1+exp(-a)) to rounding
    return 0.5 * xp.tanh(0.5 * a) + 0.5


def input_projection(xp, p: CellParams, x):
    """All T steps' input GEMM at once: (T, B, I) -> (T, B, G), bias b_ih folded in."""
    T, B, I = x.shape
    G = p.w_ih.shape[0]
    gi = xp.reshape(x, (T * B, I)) @ xp.matrix_transpose(p.w_ih) + p.b_ih  # (T*B, G)
    return xp.reshape(gi, (T, B, G))


def input_backward(xp, p: CellParams, x, dgi, g: CellParams, *, dx: bool = True):
    """Backward of `input_projection`: accumulates dW_ih, db_ih; returns dx (T, B, I) (None when dx=False: the
    grad of the model's input, which training never needs). One GEMM each."""
    T, B, I = x.shape
    G = dgi.shape[-1]
    dgi2 = xp.reshape(dgi, (T * B, G))  # (T*B, G)
    g.w_ih += xp.matrix_transpose(dgi2) @ xp.reshape(x, (T * B, I))  # (G, I)
    g.b_ih += xp.sum(dgi2, axis=0)  # (G,)
    return xp.reshape(dgi2 @ p.w_ih, (T, B, I)) if dx else None  # (T, B, I)


def recurrent_weight_grads(xp, dgh, hprev):
    """(sum_t dgh[t]^T hprev[t], sum_t dgh[t]): one GEMM over all T after the loop, not T small ones."""
    T, B, G = dgh.shape
    H = hprev.shape[-1]
    dgh2 = xp.reshape(dgh, (T * B, G))  # (T*B, G)
    return xp.matrix_transpose(dgh2) @ xp.reshape(hprev, (T * B, H)), xp.sum(dgh2, axis=0)  # (G, H), (G,)


def cut(tbptt: int, T: int, t: int) -> bool:
    """Truncated BPTT in chunks of `tbptt` steps counted from the end: no gradient flows from step t to t-1
    when t is a chunk boundary. tbptt=0 means full BPTT. The initial state (t = 0) is never cut, so each chunk is a
    full BPTT from its own starting state and tbptt >= T equals full BPTT, dL/dstate0 included."""
    return tbptt > 0 and t > 0 and (T - t) % tbptt == 0
