"""The vanilla RNN's fast twin: same contract as nn/rnn.py, feature-major layout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ..rnn import RNNCache
from ..rnn import backward as reference_backward
from .._cell import CellParams, cut
from ._common import (CHUNK_ELEMS, DW_CHUNK_ELEMS, DW_COPY_MAX_B, GI_FULL_MAX_ELEMS, InputBackward, Ops, Workspace,
                      cache_buf, chunk_dw, chunked_steps, dg_buffer, dw_buffers, dw_operand, fold_weights, gi_buffer,
                      input_cache, is_cupy, operand, ops_for, rows, state_grad, tbh, unfold_grads)


# ---- RNN ----------------------------------------------------------------------------------------------------
# Feature-major h_t^T (H, B), x folded into the recurrent GEMM's operand [h; x[t]; 1] (see operand):
# the GEMM writes the pre-activation straight into the next state's slot, so a step is GEMM, activation in place.
@dataclass
class FastRNNCache(RNNCache):
    """RNNCache whose h is a view of feature-major storage hT. The reference backward reads it too."""

    hT: Any = None  # (T+1, H+I+1, B) hT[t] = [state after t steps; x[t]; 1], the recurrent GEMM's operands
    xT: Any = None  # (T, I+1, B) [x_t^T; 1], a view of hT


def rnn_forward(xp, p: CellParams, x, state0, *, nonlinearity: str = "tanh", ws: Workspace | None = None,
                reuse: bool = False):
    """Same contract as rnn.forward: x (T, B, I), (h0,) -> y (T, B, H), (h_T,), cache (FastRNNCache)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    w_u = fold_weights(o, ws.get(xp, "w_u", (H, H + I + 1), dt, dev), p, ((slice(0, H), slice(0, H)),), H, I)
    hT = operand(xp, o, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's operand is hT[t]
    matmul = o.matmul
    act = o.tanh if nonlinearity == "tanh" else None
    zero = o.const(0.0, dt, dev)
    for u, hx in rows(o, T, hT[:T], hT[1:, :H]):
        matmul(w_u, u, out=hx)  # (H, H+I+1) @ (H+I+1, B): the pre-activation, in the next state's slot
        if act is None:
            o.maximum(hx, zero, out=hx)
        else:
            act(hx, out=hx)
    h_v = tbh(xp, hT[:, :H, :])
    return h_v[1:], (h_v[T],), FastRNNCache(x=x, h=h_v, nonlinearity=nonlinearity, hT=hT, xT=hT[:T, H:, :])


def rnn_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                 input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as rnn.backward; dy may be None (zeros). A cache from the reference forward goes to it."""
    if not isinstance(c, FastRNNCache):
        return reference_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    T, Kc, B = c.hT.shape[0] - 1, c.hT.shape[1], c.hT.shape[2]
    H = p.w_hh.shape[1]
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    everything = ((slice(0, H), slice(0, H)),)
    dh = state_grad(xp, o, ws, "dh", dstate_T, 0, (H, B), dt, dev)
    w_t = o.copy(xp.matrix_transpose(p.w_hh), ws.get(xp, "w_hh_t", (H, H), dt, dev))
    dw = o.fill(ws.get(xp, "dw", (H, Kc), dt, dev), 0.0)  # [W_hh | W_ih | b] columns
    dwt, zb, dw_chunk = dw_buffers(xp, ws, (H, Kc), T, B, dt, dev)
    chunk = max(1, min(dw_chunk, CHUNK_ELEMS // max(1, B * H)))
    K = ws.get(xp, "K", (chunk, H, B), dt, dev)
    dA = ws.get(xp, "dg", (chunk, H, B), dt, dev)  # one chunk's pre-activation grads (step t at t - t0)
    relu = c.nonlinearity == "relu"
    mul, add, matmul = o.mul, o.add, o.matmul
    inb = InputBackward(xp, o, ws, reuse, p, everything, c.xT, H, chunk, dw_rows=slice(0, 0),  # dx only
                         dx=input_grad)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        m = t1 - t0
        Km, hc = K[:m], c.hT[t0 + 1:t1 + 1, :H, :]
        if relu:
            o.sign(hc, out=Km)  # h >= 0: [h > 0] exactly
        else:
            o.mul(hc, hc, out=Km)
            o.sub(o.const(1.0, dt, dev), Km, out=Km)  # 1 - h^2
        for t in range(t1 - 1, t0 - 1, -1):
            if dy is not None:
                add(dh, xp.matrix_transpose(dy[t, ...]), out=dh)
            dA_t = dA[t - t0]
            mul(dh, Km[t - t0], out=dA_t)
            matmul(w_t, dA_t, out=dh)  # dh_{t-1} (H, H) @ (H, B)
            if tbptt and cut(tbptt, T, t):
                o.fill(dh, 0.0)
        chunk_dw(xp, o, dA[:m], c.hT, t0, t1, dwt, dw, zb)
        inb.chunk(t0, t1, dA[:m])
        t1 = t0
    unfold_grads(o, g, dw, everything, H, Kc - H - 1)
    dx = inb.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True),)


