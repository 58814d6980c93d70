"""Vanilla (Elman) RNN cell: forward, then its hand-derived backward, written once against an array namespace `xp`.

Legend: T time steps, B batch, I input features, H hidden units; one gate block (G = H).

    h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)       act = tanh or relu (torch.nn.RNN's nonlinearity)

Backward, per step, with dh = dL/dh_t (upstream dy_t plus what flows back from t+1):
    da = dh ⊙ (1 - h_t²)     (tanh)        da = dh ⊙ [h_t > 0]     (relu)
    dh_{t-1} = da W_hh
The pre-activation gradient is the same at the input GEMM and at the recurrent GEMM.
Parameter gradients are one GEMM each after the loop, over the stacked (T, B, ·) cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ._cell import CellParams, cut, input_backward, input_projection, recurrent_weight_grads

GATES = 1
STATES = 1  # (h,)
NONLINEARITIES = ("tanh", "relu")


@dataclass
class RNNCache:
    x: Any  # (T, B, I) input of this direction
    h: Any  # (T+1, B, H) h[0] = h0, h[t+1] = h_t
    nonlinearity: str


def forward(xp, p: CellParams, x, state0, *, nonlinearity: str = "tanh"):
    """x (T, B, I), state0 = (h0 (B, H),) -> y (T, B, H), (h_T (B, H),), cache."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    T, B, _ = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    gi = input_projection(xp, p, x)  # (T, B, H), b_ih folded in
    h = xp.empty((T + 1, B, H), dtype=dt, device=dev)  # (T+1, B, H)
    h[0, ...] = h0
    w_hh_t = xp.matrix_transpose(p.w_hh)  # (H, H)
    relu = nonlinearity == "relu"
    for t in range(T):
        a = gi[t, ...] + h[t, ...] @ w_hh_t + p.b_hh  # (B, H)
        h[t + 1, ...] = a * xp.astype(a > 0, dt) if relu else xp.tanh(a)
    return h[1:, ...], (h[T, ...],), RNNCache(x=x, h=h, nonlinearity=nonlinearity)


def backward(xp, p: CellParams, c: RNNCache, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
             dh_record=None, input_grad: bool = True):
    """dy (T, B, H) or None (zeros),
    dstate_T = (dh_T (B, H),) or None -> dx (T, B, I), (dh0 (B, H),). Accumulates into g.
    input_grad=False: dx is not computed (None), as when nothing upstream needs it (a model's input).
    dh_record: optional (T, B, H) array; when given, dL/dh_t (total, before the step's backward) is written to it."""
    T, B, _ = c.x.shape
    H = p.w_hh.shape[1]
    dev, dt = device_of(c.x), c.x.dtype
    da = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H) pre-activation grads
    dh = xp.zeros((B, H), dtype=dt, device=dev) if dstate_T is None or dstate_T[0] is None else dstate_T[0]
    relu = c.nonlinearity == "relu"
    for t in range(T - 1, -1, -1):
        if dy is not None:  # None: no upstream gradient on y (e.g. a head on the last state only)
            dh = dh + dy[t, ...]  # (B, H)
        if dh_record is not None:
            dh_record[t, ...] = dh
        h_t = c.h[t + 1, ...]  # (B, H)
        da[t, ...] = dh * xp.astype(h_t > 0, dt) if relu else dh * (1.0 - h_t * h_t)
        dhp = da[t, ...] @ p.w_hh  # (B, H) @ (H, H)
        dh = xp.zeros_like(dhp) if cut(tbptt, T, t) else dhp
    dw, db = recurrent_weight_grads(xp, da, c.h[:T, ...])  # (H, H), (H,)
    g.w_hh += dw
    g.b_hh += db
    dx = input_backward(xp, p, c.x, da, g, dx=input_grad)  # (T, B, I) or None
    return dx, (dh,)
