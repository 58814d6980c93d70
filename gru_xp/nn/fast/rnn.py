"""The vanilla RNN's fast twin: same contract as nn/rnn.py, feature-major layout, fused CuPy kernels on GPU.

Legend: T steps, B batch, I inputs, H hidden (one gate block); arrays feature-major (T, rows, B).

Feature-major h_t^T (H, B), x folded into the recurrent GEMM's operands [h; x[t]; 1] (see recurrent_operands):
the GEMM writes the pre-activation straight into the next state's slot, so a step is GEMM, activation in place.
CuPy: the same layout and GEMMs, the activation and its backward in fused kernels (_cuda.rnn_fwd, _cuda.rnn_bwd).
NumPy with numba: the backward step's elementwise work in one fused CPU kernel (_cpu.rnn_bwd), bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ..rnn import NONLINEARITIES, RNNCache
from ..rnn import backward as reference_backward
from .._cell import CellParams, cut
from . import _common, _cpu
from ._common import (InputBackward, Workspace, add_chunk_weight_grads, feature_major_copy, feature_major_into,
                      feature_major_to_tbh, flush_subnormals, flush_threshold, fold_weights, ops_for,
                      recurrent_operands, state_grad, unfold_grads, weight_grad_buffers)


@dataclass
class FastRNNCache(RNNCache):
    """RNNCache whose h is a view of feature-major storage (the operands). The reference backward reads it too."""

    operands: Any = None  # (T+1, H+I+1, B) [state after t steps; x[t]; 1], the recurrent GEMM's operands
    x_ones: Any = None  # (T, I+1, B) [x_t^T; 1], a view of the operands


def rnn_forward(xp, p: CellParams, x, state0, *, nonlinearity: str = "tanh", ws: Workspace | None = None,
                reuse: bool = False, keep_cache: bool = True):
    """Same contract as rnn.forward: x (T, B, I), (h0,) -> y (T, B, H), (h_T,), cache (FastRNNCache).
    keep_cache=False (a forward without gradients): the cache returned is None (the states are all it stores)."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    if _common.is_cupy(xp):
        y, sT, cache = _rnn_forward_cupy(xp, p, x, state0, nonlinearity=nonlinearity, ws=ws, reuse=reuse)
        return y, sT, cache if keep_cache else None
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    w_rec = fold_weights(ops, ws.get(xp, "w_rec", (H, H + I + 1), dt, dev), p, ((slice(0, H), slice(0, H)),),
                         H, I)  # (H, H+I+1)
    operands = recurrent_operands(xp, ops, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's is [t]
    matmul = ops.matmul
    act = ops.tanh if nonlinearity == "tanh" else None
    zero = ops.const(0.0, dt, dev)
    for op_t, h_next in zip(operands[:T], operands[1:, :H]):
        matmul(w_rec, op_t, out=h_next)  # (H, H+I+1) @ (H+I+1, B): the pre-activation, in the next state's slot
        if act is None:
            ops.maximum(h_next, zero, out=h_next)
        else:
            act(h_next, out=h_next)
    if not keep_cache:
        h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H) view
        return h_v[1:], (h_v[T],), None
    return _outputs(xp, x, operands, H, nonlinearity)


def _outputs(xp, x, operands, H: int, nonlinearity: str):
    """y (T, B, H), (h_T,), FastRNNCache: views of the operands."""
    T = operands.shape[0] - 1
    h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H)
    cache = FastRNNCache(x=x, h=h_v, nonlinearity=nonlinearity, operands=operands, x_ones=operands[:T, H:, :])
    return h_v[1:], (h_v[T],), cache


def _rnn_forward_cupy(xp, p: CellParams, x, state0, *, nonlinearity: str, ws: Workspace | None, reuse: bool):
    """rnn_forward on CuPy: the same layout and folded GEMM, the activation in a fused kernel (2 launches a step)."""
    from . import _cuda

    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    w_rec = fold_weights(ops, ws.get(xp, "w_rec", (H, H + I + 1), dt, dev), p, ((slice(0, H), slice(0, H)),),
                         H, I)  # (H, H+I+1)
    operands = recurrent_operands(xp, ops, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's is [t]
    for t in range(T):
        h_next = operands[t + 1, :H]  # (H, B) contiguous
        ops.matmul(w_rec, operands[t], out=h_next)  # the pre-activation, in the next state's slot
        _cuda.rnn_fwd(nonlinearity, h_next)
    return _outputs(xp, x, operands, H, nonlinearity)


def rnn_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                 input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as rnn.backward; dy may be None (zeros). A cache from the reference forward goes to it."""
    if not isinstance(c, FastRNNCache):
        return reference_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    if _common.is_cupy(xp):
        return _rnn_backward_cupy(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=ws, reuse=reuse)
    T, n_cols, B = c.operands.shape[0] - 1, c.operands.shape[1], c.operands.shape[2]
    H = p.w_hh.shape[1]
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    all_rows = ((slice(0, H), slice(0, H)),)
    dh = state_grad(xp, ops, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B)
    w_hh_t = ops.copy(xp.matrix_transpose(p.w_hh), ws.get(xp, "w_hh_t", (H, H), dt, dev))  # (H, H)
    dw = ops.fill(ws.get(xp, "dw", (H, n_cols), dt, dev), 0.0)  # (H, n_cols) [W_hh | W_ih | b] columns
    dw_terms, operand_copy, dw_chunk = weight_grad_buffers(xp, ws, (H, n_cols), T, B, dt, dev)
    chunk = max(1, min(dw_chunk, _common.CHUNK_ELEMS // max(1, B * H)))
    da = ws.get(xp, "dgates", (chunk, H, B), dt, dev)  # (chunk, H, B) pre-activation grads (step t at t - t0)
    relu = c.nonlinearity == "relu"
    mul, add, matmul = ops.mul, ops.add, ops.matmul
    input_bwd = InputBackward(xp, ops, ws, reuse, p, all_rows, c.x_ones, H, chunk, dw_rows=slice(0, 0),  # dx only
                              dx=input_grad)
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    if kern is not None:  # the fused CPU kernel (_cpu.rnn_bwd): one call and the GEMM a step, bit-identical
        _backward_chunks_kernels(xp, ops, ws, c, dy, tbptt, kern.rnn_bwd, dh, w_hh_t, da, chunk,
                                 (dw_terms, dw, operand_copy, input_bwd))
    dact = None if kern is not None else ws.get(xp, "dact", (chunk, H, B), dt, dev)  # (chunk, H, B) act'(a_t)
    t1 = 0 if kern is not None else T  # with the kernel: done, the portable loop below runs no chunk
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        m = t1 - t0
        dact_m, h_chunk = dact[:m], c.operands[t0 + 1:t1 + 1, :H, :]
        if relu:
            ops.sign(h_chunk, out=dact_m)  # h >= 0: [h > 0] exactly
        else:
            ops.mul(h_chunk, h_chunk, out=dact_m)
            ops.sub(ops.const(1.0, dt, dev), dact_m, out=dact_m)  # 1 - h^2
        for t in range(t1 - 1, t0 - 1, -1):
            if dy is not None:
                add(dh, xp.matrix_transpose(dy[t, ...]), out=dh)
            da_t = da[t - t0]
            mul(dh, dact_m[t - t0], out=da_t)
            matmul(w_hh_t, da_t, out=dh)  # dh_{t-1} (H, H) @ (H, B)
            if tbptt and cut(tbptt, T, t):
                ops.fill(dh, 0.0)
        flush_subnormals(xp, ops, ws, dh)  # once a chunk: see _common.flush_subnormals
        add_chunk_weight_grads(xp, ops, da[:m], c.operands, t0, t1, dw_terms, dw, operand_copy)
        input_bwd.add_chunk(t0, t1, da[:m])
        t1 = t0
    unfold_grads(ops, g, dw, all_rows, H, n_cols - H - 1)
    dx = input_bwd.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True),)


def _backward_chunks_kernels(xp, ops, ws: Workspace, c: FastRNNCache, dy, tbptt: int, step, dh, w_hh_t, da,
                             chunk: int, grads):
    """rnn_backward's chunk loop with the fused CPU kernel: per chunk dy^T copied feature-major, per step the kernel
    (da from dh, dy and h) and the recurrent GEMM, then the chunk's weight grads and input backward."""
    dw_terms, dw, operand_copy, input_bwd = grads
    T, H, B = c.operands.shape[0] - 1, dh.shape[0], dh.shape[1]
    dt, dev = dh.dtype, device_of(dh)
    one, zero, tiny = dt.type(1.0), dt.type(0.0), dt.type(flush_threshold(xp, dt))
    relu = c.nonlinearity == "relu"
    dy_fm = None if dy is None else ws.get(xp, "dy_fm", (chunk, H, B), dt, dev)  # (chunk, H, B) a chunk of dy^T
    unused = ws.get(xp, "kernel_unused", (1, 1), dt, dev)  # (1, 1) for an absent dy (never read)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        m = t1 - t0
        if dy_fm is not None:
            feature_major_into(xp, ops, dy[t0:t1], dy_fm[:m])
        for t in range(t1 - 1, t0 - 1, -1):
            j = t - t0
            step(dh, unused if dy_fm is None else dy_fm[j], dy_fm is not None, c.operands[t + 1, :H], da[j], relu,
                 tiny, one, zero)
            ops.matmul(w_hh_t, da[j], out=dh)  # dh_{t-1} (H, H) @ (H, B)
            if tbptt and cut(tbptt, T, t):
                ops.fill(dh, 0.0)
        add_chunk_weight_grads(xp, ops, da[:m], c.operands, t0, t1, dw_terms, dw, operand_copy)
        input_bwd.add_chunk(t0, t1, da[:m])
        t1 = t0


def _rnn_backward_cupy(xp, p: CellParams, c: FastRNNCache, dy, dstate_T, g: CellParams, *, tbptt: int,
                       input_grad: bool, ws: Workspace | None, reuse: bool):
    """rnn_backward on CuPy: per step one fused kernel (_cuda.rnn_bwd: da = (dh + dy) act'(a), act' from h) and the
    dh GEMM; per chunk of steps (bounded by the weight-grad terms only) the weight grads and the input backward."""
    from . import _cuda

    T, n_cols, B = c.operands.shape[0] - 1, c.operands.shape[1], c.operands.shape[2]
    H = p.w_hh.shape[1]
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    all_rows = ((slice(0, H), slice(0, H)),)
    dh = state_grad(xp, ops, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B)
    w_hh_t = ops.copy(xp.matrix_transpose(p.w_hh), ws.get(xp, "w_hh_t", (H, H), dt, dev))  # (H, H)
    dw = ops.fill(ws.get(xp, "dw", (H, n_cols), dt, dev), 0.0)  # (H, n_cols) [W_hh | W_ih | b] columns
    dw_terms, operand_copy, chunk = weight_grad_buffers(xp, ws, (H, n_cols), T, B, dt, dev)
    da = ws.get(xp, "dgates", (chunk, H, B), dt, dev)  # (chunk, H, B) pre-activation grads (step t at t - t0)
    dy_fm = feature_major_copy(xp, ops, ws, "dy_fm", dy, dt, dev)  # (T, H, B) or None
    input_bwd = InputBackward(xp, ops, ws, reuse, p, all_rows, c.x_ones, H, chunk, dw_rows=slice(0, 0),  # dx only
                              dx=input_grad)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        for t in range(t1 - 1, t0 - 1, -1):
            da_t = da[t - t0]
            _cuda.rnn_bwd(c.nonlinearity, dh, None if dy_fm is None else dy_fm[t], c.operands[t + 1, :H], da_t)
            ops.matmul(w_hh_t, da_t, out=dh)  # dh_{t-1} (H, H) @ (H, B)
            if cut(tbptt, T, t):
                ops.fill(dh, 0.0)
        add_chunk_weight_grads(xp, ops, da[: t1 - t0], c.operands, t0, t1, dw_terms, dw, operand_copy)
        input_bwd.add_chunk(t0, t1, da[: t1 - t0])
        t1 = t0
    unfold_grads(ops, g, dw, all_rows, H, n_cols - H - 1)
    dx = input_bwd.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True),)
