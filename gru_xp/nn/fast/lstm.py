"""The LSTM's fast twin: same contract as nn/lstm.py, feature-major layout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ..lstm import LSTMCache
from ..lstm import backward as reference_backward
from .._cell import CellParams, cut
from ._common import (CHUNK_ELEMS, DW_CHUNK_ELEMS, DW_COPY_MAX_B, GI_FULL_MAX_ELEMS, InputBackward, Ops, Workspace,
                      cache_buf, chunk_dw, chunked_steps, dg_buffer, dw_buffers, dw_operand, fold_weights, gi_buffer,
                      input_cache, is_cupy, operand, ops_for, rows, state_grad, tbh, unfold_grads)


# ---- LSTM ---------------------------------------------------------------------------------------------------
# Same layout as the GRU (feature-major, each step's (4H, B) gate block contiguous), with the gate rows reordered
# internally to [o | i f g] = torch's [3H:4H | 0:3H] (two blocks, so every reorder is two copies): the three
# sigmoid gates are one contiguous 3H block (their pre-activations halved in the weights, sigmoid via tanh, so
# one tanh covers all 4H rows), and in the backward the three gates driven by dc (i, f, g) are one block too.
def _lstm_blocks(H: int):
    return ((slice(0, H), slice(3 * H, 4 * H)), (slice(H, 4 * H), slice(0, 3 * H)))  # (internal, torch) rows


@dataclass
class FastLSTMCache(LSTMCache):
    """LSTMCache whose (T, B, .) fields are views of feature-major storage: h, c = views of hT, cT; o, i, f, g =
    views of G; tc = view of TC. The reference backward reads it too."""

    hT: Any = None  # (T+1, H+I+1, B) hT[t] = [state after t steps; x[t]; 1], the recurrent GEMM's operands
    cT: Any = None  # (T+1, H, B) c_t^T
    G: Any = None  # (T, 4H, B) [o | i | f | g] activations per step
    TC: Any = None  # (T, H, B) tanh(c_t)
    xT: Any = None  # (T, I+1, B) [x_t^T; 1], a view of hT


def lstm_forward(xp, p: CellParams, x, state0, *, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as lstm.forward: x (T, B, I), (h0, c0) -> y (T, B, H), (h_T, c_T), cache (FastLSTMCache)."""
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    h0, c0 = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H3, H4 = 3 * H, 4 * H
    half = o.const(0.5, dt, dev)
    # the recurrent GEMM does the input projection too: [W_hh | W_ih | b_ih + b_hh] (4H, H+I+1) on
    # step t's [h; x[t]; 1]; o, i, f rows halved (exact: sigmoid(a) = tanh(a/2)/2 + 1/2)
    w_u = fold_weights(o, ws.get(xp, "w_u", (H4, H + I + 1), dt, dev), p, _lstm_blocks(H), H, I)
    o.mul(w_u[:H3, :], half, out=w_u[:H3, :])

    hT = operand(xp, o, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's operand is hT[t]
    cT = cache_buf(xp, ws, reuse, "cT", (T + 1, H, B), dt, dev)
    G = cache_buf(xp, ws, reuse, "G", (T, H4, B), dt, dev)
    TC = cache_buf(xp, ws, reuse, "TC", (T, H, B), dt, dev)
    o.copy(xp.matrix_transpose(c0), cT[0])
    tmp = ws.get(xp, "tmp", (H, B), dt, dev)
    mul, add, tanh, matmul = o.mul, o.add, o.tanh, o.matmul
    step_arrays = (hT[:T], hT[1:, :H], cT[:T], cT[1:], G, G[:, :H3], G[:, :H], G[:, H:2 * H], G[:, 2 * H:H3],
                   G[:, H3:], TC)
    steps = ws.views("fwd", (T, id(hT), id(cT), id(G), id(TC)), lambda: list(zip(*step_arrays))) if reuse else \
        zip(*step_arrays)
    for u, hx, cp, cx, A, sig, o_t, i_t, f_t, gg_t, tc_t in steps:
        matmul(w_u, u, out=A)  # (4H, H+I+1) @ (H+I+1, B)
        tanh(A, out=A)  # g, and the three sigmoid gates' tanh(a/2)
        mul(sig, half, out=sig)
        add(sig, half, out=sig)
        mul(f_t, cp, out=cx)
        mul(i_t, gg_t, out=tmp)
        add(cx, tmp, out=cx)  # c = f c_{t-1} + i g
        tanh(cx, out=tc_t)
        mul(o_t, tc_t, out=hx)  # h = o tanh(c)
    h_v, c_v = tbh(xp, hT[:, :H, :]), tbh(xp, cT)
    cache = FastLSTMCache(x=x, h=h_v, c=c_v, i=tbh(xp, G[:, H:2 * H]), f=tbh(xp, G[:, 2 * H:H3]),
                          g=tbh(xp, G[:, H3:]), o=tbh(xp, G[:, :H]), tc=tbh(xp, TC), hT=hT, cT=cT, G=G, TC=TC,
                          xT=hT[:T, H:, :])
    return h_v[1:], (h_v[T], c_v[T]), cache


def _lstm_factors(xp, o: Ops, c: FastLSTMCache, t0: int, t1: int, K):
    """For steps t0..t1-1, K (m, 5, H, B): [tc o(1-o), g i(1-i), c_{t-1} f(1-f), i (1-g^2), o (1-tc^2)]:
    da_o = dh K0; [da_i, da_f, da_g] = dc K1:4; dc += dh K4. 10 calls for the whole chunk."""
    m = t1 - t0
    H = c.TC.shape[1]
    K = K[:m]
    G = xp.reshape(c.G[t0:t1], (m, 4, H, -1))  # (m, 4, H, B) [o, i, f, g]
    tc, cp = c.TC[t0:t1], c.cT[t0:t1]
    k3 = K[:, :3]
    one = o.const(1.0, G.dtype, device_of(G))
    o.sub(one, G[:, :3], out=k3)
    o.mul(k3, G[:, :3], out=k3)  # s(1-s) for o, i, f
    o.mul(K[:, 0], tc, out=K[:, 0])
    o.mul(K[:, 1], G[:, 3], out=K[:, 1])
    o.mul(K[:, 2], cp, out=K[:, 2])
    k34 = K[:, 3:5]
    o.mul(G[:, 3], G[:, 3], out=K[:, 3])
    o.mul(tc, tc, out=K[:, 4])
    o.sub(one, k34, out=k34)
    o.mul(K[:, 3], G[:, 1], out=K[:, 3])
    o.mul(K[:, 4], G[:, 0], out=K[:, 4])
    return K


def lstm_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                  input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as lstm.backward; dy may be None (zeros). A cache from the reference forward goes to it."""
    if not isinstance(c, FastLSTMCache):
        return reference_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    T, H, B = c.TC.shape
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H3, H4 = 3 * H, 4 * H
    blocks = _lstm_blocks(H)
    dh = state_grad(xp, o, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dL/dh_t^T, carried backwards
    dc = state_grad(xp, o, ws, "dc", dstate_T, 1, (H, B), dt, dev)  # (H, B) dL/dc_t^T
    tmp = ws.get(xp, "tmp", (H, B), dt, dev)
    w_t = ws.get(xp, "w_hh_t", (H, H4), dt, dev)  # W_hh^T, internal gate order
    for dst, src in blocks:
        o.copy(xp.matrix_transpose(p.w_hh[src, :]), w_t[:, dst])
    Kc = c.hT.shape[1]  # H+I+1: [W_hh | W_ih | b] columns
    dw = o.fill(ws.get(xp, "dw", (H4, Kc), dt, dev), 0.0)
    dwt, zb, dw_chunk = dw_buffers(xp, ws, (H4, Kc), T, B, dt, dev)
    chunk = max(1, min(dw_chunk, CHUNK_ELEMS // max(1, B * H)))
    K = ws.get(xp, "K", (chunk, 5, H, B), dt, dev)
    # one chunk's gate grads (step t at t - t0)
    flat, flat_id = dg_buffer(xp, ws, T, chunk, H4, B, dt, dev, shared=False)
    dA = xp.reshape(flat, (chunk, H4, B))  # pre-activation grads [o | i f g]
    D4 = xp.reshape(flat, (chunk, 4, H, B))
    f_all = c.G[:, 2 * H:H3]
    mul, add, matmul = o.mul, o.add, o.matmul

    def build():  # step t's views: its factors in K (chunks counted from the end), gate grads, forget gate
        out = []
        for t in range(T):
            j = t - max(0, T - ((T - 1 - t) // chunk + 1) * chunk)  # t - (its chunk's t0)
            k = K[j]
            out.append((k[0], k[1], k[2], k[3], k[4], D4[j, 0], D4[j, 1], D4[j, 2], D4[j, 3], f_all[t], dA[j]))
        return out

    step_views = ws.views("bwd", (T, chunk, flat_id, id(K), id(c.G)), build) if reuse else build()
    inb = InputBackward(xp, o, ws, reuse, p, blocks, c.xT, H4, chunk, dw_rows=slice(0, 0),  # dx only
                         dx=input_grad)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        _lstm_factors(xp, o, c, t0, t1, K)
        for t in range(t1 - 1, t0 - 1, -1):
            k0, k1, k2, k3, k4, da_o, da_i, da_f, da_g, f_t, dA_t = step_views[t]
            if dy is not None:
                add(dh, xp.matrix_transpose(dy[t, ...]), out=dh)
            mul(dh, k4, out=tmp)
            add(dc, tmp, out=dc)
            mul(dh, k0, out=da_o)
            mul(dc, k1, out=da_i)  # da_i, da_f, da_g: three calls (faster than one broadcast one)
            mul(dc, k2, out=da_f)
            mul(dc, k3, out=da_g)
            mul(dc, f_t, out=dc)  # dc_{t-1}
            matmul(w_t, dA_t, out=dh)  # dh_{t-1} (H, 4H) @ (4H, B)
            if tbptt and cut(tbptt, T, t):
                o.fill(dh, 0.0)
                o.fill(dc, 0.0)
        chunk_dw(xp, o, dA[: t1 - t0], c.hT, t0, t1, dwt, dw, zb)
        inb.chunk(t0, t1, dA[: t1 - t0])
        t1 = t0
    unfold_grads(o, g, dw, blocks, H, c.xT.shape[1] - 1)
    dx = inb.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True), xp.asarray(xp.matrix_transpose(dc), copy=True))


