"""LSTM cell: forward, then its hand-derived backward, written once against an array namespace `xp`.

Legend: T time steps, B batch, I input features, H hidden units; gate rows in torch's order i, f, g, o (G = 4H).

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)        input gate
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)        forget gate
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)     candidate cell
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)        output gate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

Backward, per step, with dh = dL/dh_t (upstream dy_t plus what flows back from t+1) and dc = dL/dc_t
(what flows back from t+1, plus the path through h_t):
    dc += dh ⊙ o ⊙ (1 - tanh²(c_t))
    da_i = dc ⊙ g ⊙ i(1 - i)      da_f = dc ⊙ c_{t-1} ⊙ f(1 - f)
    da_g = dc ⊙ i ⊙ (1 - g²)      da_o = dh ⊙ tanh(c_t) ⊙ o(1 - o)
    dc_{t-1} = dc ⊙ f             dh_{t-1} = [da_i, da_f, da_g, da_o] W_hh
The pre-activation gradient is the same at the input GEMM and at the recurrent GEMM (both biases add to it).
Parameter gradients are one GEMM each after the loop, over the stacked (T, B, ·) cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ._cell import CellParams, cut, input_backward, input_projection, recurrent_weight_grads, sigmoid

GATES = 4  # i, f, g, o
STATES = 2  # (h, c)


@dataclass
class LSTMCache:
    x: Any  # (T, B, I) input of this direction
    h: Any  # (T+1, B, H) h[0] = h0, h[t+1] = h_t
    c: Any  # (T+1, B, H) c[0] = c0, c[t+1] = c_t
    i: Any  # (T, B, H) input gate
    f: Any  # (T, B, H) forget gate
    g: Any  # (T, B, H) candidate cell
    o: Any  # (T, B, H) output gate
    tc: Any  # (T, B, H) tanh(c_t)


def forward(xp, p: CellParams, x, state0):
    """x (T, B, I), state0 = (h0 (B, H), c0 (B, H)) -> y (T, B, H), (h_T, c_T), cache."""
    T, B, _ = x.shape
    H = p.w_hh.shape[1]
    h0, c0 = state0
    dev, dt = device_of(x), x.dtype
    gi = input_projection(xp, p, x)  # (T, B, 4H), b_ih folded in
    h = xp.empty((T + 1, B, H), dtype=dt, device=dev)  # (T+1, B, H)
    c = xp.empty((T + 1, B, H), dtype=dt, device=dev)  # (T+1, B, H)
    h[0, ...], c[0, ...] = h0, c0
    i = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    f = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    g = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    o = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    tc = xp.empty((T, B, H), dtype=dt, device=dev)  # (T, B, H)
    w_hh_t = xp.matrix_transpose(p.w_hh)  # (H, 4H)
    for t in range(T):
        a = gi[t, ...] + h[t, ...] @ w_hh_t + p.b_hh  # (B, 4H): the one recurrent GEMM
        i_t = sigmoid(xp, a[:, :H])  # (B, H)
        f_t = sigmoid(xp, a[:, H : 2 * H])  # (B, H)
        g_t = xp.tanh(a[:, 2 * H : 3 * H])  # (B, H)
        o_t = sigmoid(xp, a[:, 3 * H :])  # (B, H)
        c_t = f_t * c[t, ...] + i_t * g_t  # (B, H)
        tc_t = xp.tanh(c_t)  # (B, H)
        c[t + 1, ...], h[t + 1, ...] = c_t, o_t * tc_t
        i[t, ...], f[t, ...], g[t, ...], o[t, ...], tc[t, ...] = i_t, f_t, g_t, o_t, tc_t
    cache = LSTMCache(x=x, h=h, c=c, i=i, f=f, g=g, o=o, tc=tc)
    return h[1:, ...], (h[T, ...], c[T, ...]), cache


def backward(xp, p: CellParams, cc: LSTMCache, dy, dstate_T, gr: CellParams, *, tbptt: int = 0,
             dh_record=None, input_grad: bool = True, dc_steps=None):
    """dy (T, B, H) or None (zeros),
    dstate_T = (dh_T, dc_T) (either may be None) -> dx (T, B, I), (dh0, dc0). Accumulates into gr.
    input_grad=False: dx is not computed (None), as when nothing upstream needs it (a model's input).
    dh_record: optional (T, B, H) array; when given, dL/dh_t (total, before the step's backward) is written to it.
    dc_steps: optional (T, B, H) upstream gradient on c_t at every step, added to dc as dy is to dh (variable
    lengths: the gradient of each sequence's final c enters at its own last step; see recurrent.py)."""
    T, B, H = cc.i.shape
    dev, dt = device_of(cc.x), cc.x.dtype
    da = xp.empty((T, B, 4 * H), dtype=dt, device=dev)  # (T, B, 4H) pre-activation grads, gates i, f, g, o
    dh_T, dc_T = (None, None) if dstate_T is None else dstate_T
    dh = xp.zeros((B, H), dtype=dt, device=dev) if dh_T is None else dh_T  # (B, H)
    dc = xp.zeros((B, H), dtype=dt, device=dev) if dc_T is None else dc_T  # (B, H)
    for t in range(T - 1, -1, -1):
        if dy is not None:  # None: no upstream gradient on y (e.g. a head on the last state only)
            dh = dh + dy[t, ...]  # (B, H)
        if dc_steps is not None:
            dc = dc + dc_steps[t, ...]  # (B, H)
        if dh_record is not None:
            dh_record[t, ...] = dh
        i, f, g, o, tc = cc.i[t, ...], cc.f[t, ...], cc.g[t, ...], cc.o[t, ...], cc.tc[t, ...]  # (B, H) each
        dc = dc + dh * o * (1.0 - tc * tc)  # (B, H)
        da[t, :, :H] = dc * g * i * (1.0 - i)
        da[t, :, H : 2 * H] = dc * cc.c[t, ...] * f * (1.0 - f)
        da[t, :, 2 * H : 3 * H] = dc * i * (1.0 - g * g)
        da[t, :, 3 * H :] = dh * tc * o * (1.0 - o)
        dhp = da[t, ...] @ p.w_hh  # (B, 4H) @ (4H, H)
        dcp = dc * f  # (B, H)
        if cut(tbptt, T, t):
            dh, dc = xp.zeros_like(dhp), xp.zeros_like(dcp)
        else:
            dh, dc = dhp, dcp
    dw, db = recurrent_weight_grads(xp, da, cc.h[:T, ...])  # (4H, H), (4H,)
    gr.w_hh += dw
    gr.b_hh += db
    dx = input_backward(xp, p, cc.x, da, gr, dx=input_grad)  # (T, B, I) or None
    return dx, (dh, dc)
