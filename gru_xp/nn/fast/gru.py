"""The GRU's fast twin: same contract as nn/gru.py, feature-major layout, fused CuPy kernels on GPU.

Legend: T steps, B batch, I inputs, H hidden; gate rows r, z, n (torch's order); arrays feature-major (T, rows, B).

Layout: each step's state is h_t^T (H, B) and its gates (3H, B), so every gate is a contiguous block of rows
(elementwise ops on contiguous memory; NumPy is much slower on row-strided slices) and the recurrent GEMM is
W (3H, n_cols) @ operands[t] (n_cols, B) with W in its own layout.
NumPy: step t's operand is [h; x[t]; 1] (see recurrent_operands), so the one recurrent GEMM also does the r, z rows'
input projection and all biases; only the n rows (whose input part must not be multiplied by r) keep a separate
input projection. CuPy: operands [h; 1 when reset_after], the input projection of all T in one GEMM, and the gate
math in _cuda's fused kernels (the layout they are written for).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ..gru import GRUCache
from ..gru import backward as reference_backward
from .._cell import CellParams, cut
from . import _common, _cpu
from ._common import (InputBackward, Ops, Workspace, add_chunk_weight_grads, cache_array, call_now, chunk_row,
                      cut_steps, feature_major_copy, feature_major_into, feature_major_to_tbh, flush_subnormals,
                      flush_threshold, fold_weights, gate_grad_buffer, input_proj_buffer, input_with_ones, ops_for,
                      params_of_dtype, projected_steps, recurrent_operands, state_grad, step_array, step_storage,
                      unfold_grads)


@dataclass
class FastGRUCache(GRUCache):
    """GRUCache whose (T, B, .) fields are views of feature-major storage (every step's block contiguous):
    h = operands[:, :H] viewed (T+1, B, H); r, z, hn = views of gates; n = view of cand. The reference backward
    reads it too."""

    # (T+1, n_cols, B) operands[t] = [state after t steps (H); x[t] (I); 1] (x_in_operands), else [state; 1 when
    # reset_after]: the recurrent GEMM's right operands
    operands: Any = None
    gates: Any = None  # (T, 3H, B) [r | z | hn] per step (reset_before: hn holds r ⊙ h_{t-1})
    cand: Any = None  # (T, H, B) candidate n
    x_ones: Any = None  # (T, I+1, B) [x_t; 1] (x_in_operands: a view of the operands' rows H:)
    x_in_operands: bool = False  # the recurrent GEMM also does the r, z input projection (the NumPy layout)


# ---- forward ----------------------------------------------------------------------------------------------------
def gru_forward(xp, p: CellParams, x, state0, *, reset_after: bool = True, ws: Workspace | None = None,
                reuse: bool = False, keep_cache: bool = True, private_cache: bool = False, launch=call_now):
    """Same contract as gru.forward: x (T, B, I), (h0 (B, H),) -> y (T, B, H), (h_T,), cache (FastGRUCache).
    `ws` holds the temporaries (a fresh one when None); `reuse=True` also keeps the cache (and so y) in it, valid
    until the next forward on this workspace. private_cache=True (a layer, which keeps a cache only until its next
    forward): the cache arrays that no output is a view of (gates, candidate) live in the workspace even without
    reuse, so a call does not allocate (and page-fault) ~4x its output anew. keep_cache=False (a forward without
    gradients): gates and candidate live in one step's buffers, only the states (y) are stored, the cache is None.
    launch(f, *args): how the whole-sequence call is made (_common.call_now; fast/blocks.py's records it)."""
    if _common.is_cupy(xp):
        y, hT, cache = _gru_forward_cupy(xp, p, x, state0, reset_after=reset_after, ws=ws, reuse=reuse)
        return y, hT, cache if keep_cache else None
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    half = ops.const(0.5, dt, dev)
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    w_rec, w_n, w_x = _weights_numpy(xp, ops, ws, p, I, reset_after, half, dt, dev, kern)
    operands = recurrent_operands(xp, ops, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's is [t]
    x_ones = operands[:T, H:, :]  # (T, I+1, B) [x_t; 1] view
    internal = reuse or private_cache
    seq = kern.seq("gru_fwd_seq", dt) if kern is not None and reset_after else None
    if seq is not None:  # float32 on NumPy's BLAS: the whole time loop in one call (_cpu.gru_fwd_sequence)
        gates = step_storage(xp, ws, internal, keep_cache, "gates", (T, H3, B), dt, dev)  # (T or 1, 3H, B)
        cand = step_storage(xp, ws, internal, keep_cache, "cand", (T, H, B), dt, dev)  # (T or 1, H, B)
        launch(seq, w_rec, w_x, operands, gates, cand, keep_cache, dt.type(0.5))
        if not keep_cache:
            h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H) view
            return h_v[1:, ...], (h_v[T, ...],), None
        return _outputs(xp, x, operands, gates, cand, x_ones, reset_after, x_in_operands=True)
    gates = step_array(xp, ws, internal, keep_cache, "gates", (T, H3, B), dt, dev)  # (T, 3H, B) or one step's
    cand = step_array(xp, ws, internal, keep_cache, "cand", (T, H, B), dt, dev)  # (T, H, B) or one step's

    mul, add, sub, tanh, matmul = ops.mul, ops.add, ops.sub, ops.tanh, ops.matmul
    proj_buf = input_proj_buffer(xp, ws, T, H, 4 * H, B, dt, dev, full=keep_cache)  # n rows' input projection
    key = (T, reset_after, id(operands), id(gates), id(cand)) if reuse and keep_cache else None
    steps = projected_steps(ops, w_x, x_ones, proj_buf, ((0, H),), operands[:T], operands[:T, :H, :],
                            operands[1:, :H, :], gates, gates[:, :H2, :], gates[:, :H, :], gates[:, H:H2, :],
                            gates[:, H2:, :], cand, views_in=None if key is None else (ws, key))
    if kern is not None and reset_after:  # the fused CPU kernels (_cpu.py): the same operations, bit-identical
        gate_kernel, state_kernel, half_s = kern.gru_fwd_after_gates, kern.gru_fwd_state, dt.type(0.5)
        for proj_n, op_t, h_prev, h_next, gates_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_rec, op_t, gates_t)  # (3H, H+I+1) @ (H+I+1, B): [a_r/2, a_z/2, W_hn h + b_hn]
            tanh(rz_t, rz_t)
            gate_kernel(gates_t, proj_n, n_t, half_s)  # r, z; r hn + W_in x + b_in
            tanh(n_t, n_t)
            state_kernel(h_prev, n_t, gates_t, h_next)  # n + z (h - n)
    elif reset_after:
        # NumPy only (CuPy has its own branch), so `out` is passed positionally: cheaper than out=
        for proj_n, op_t, h_prev, h_next, gates_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_rec, op_t, gates_t)  # (3H, H+I+1) @ (H+I+1, B): [a_r/2, a_z/2, W_hn h + b_hn]
            tanh(rz_t, rz_t)  # r, z jointly
            mul(rz_t, half, rz_t)
            add(rz_t, half, rz_t)  # sigmoid
            mul(r_t, hn_t, n_t)
            add(n_t, proj_n, n_t)
            tanh(n_t, n_t)
            sub(h_prev, n_t, h_next)  # h - n (not cached: the backward recomputes it)
            mul(h_next, z_t, h_next)
            add(h_next, n_t, h_next)  # n + z (h - n)
    elif kern is not None:  # reset_before with the fused CPU kernels: 7 calls a step instead of 11
        wn_rh = ws.get(xp, "wn_rh", (H, B), dt, dev)  # (H, B) W_hn (r ⊙ h)
        rz_kernel, state_kernel, half_s = kern.gru_fwd_before_rz, kern.gru_fwd_state, dt.type(0.5)
        for proj_n, op_t, h_prev, h_next, gates_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_rec, op_t, rz_t)  # (2H, H+I+1) @ (H+I+1, B)
            tanh(rz_t, rz_t)
            rz_kernel(gates_t, h_prev, half_s)  # r, z; hn = r ⊙ h
            matmul(w_n, hn_t, wn_rh)  # (H, H) @ (H, B)
            add(wn_rh, proj_n, n_t)
            tanh(n_t, n_t)
            state_kernel(h_prev, n_t, gates_t, h_next)  # n + z (h - n)
    else:
        wn_rh = ws.get(xp, "wn_rh", (H, B), dt, dev)  # (H, B) W_hn (r ⊙ h)
        for proj_n, op_t, h_prev, h_next, gates_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_rec, op_t, rz_t)  # (2H, H+I+1) @ (H+I+1, B)
            tanh(rz_t, rz_t)
            mul(rz_t, half, rz_t)
            add(rz_t, half, rz_t)
            mul(r_t, h_prev, hn_t)  # r ⊙ h
            matmul(w_n, hn_t, wn_rh)  # (H, H) @ (H, B)
            add(wn_rh, proj_n, n_t)
            tanh(n_t, n_t)
            sub(h_prev, n_t, h_next)
            mul(h_next, z_t, h_next)
            add(h_next, n_t, h_next)
    if not keep_cache:
        h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H) view
        return h_v[1:, ...], (h_v[T, ...],), None
    return _outputs(xp, x, operands, gates, cand, x_ones, reset_after, x_in_operands=True)


def _weights_numpy(xp, ops: Ops, ws: Workspace, p: CellParams, I: int, reset_after: bool, half, dt, dev, kern=None):
    """(w_rec, w_n, w_x) for the NumPy forward. w_rec: the recurrent GEMM's weights on [h; x[t]; 1]: r, z rows
    [W_h | W_i | b_i + b_h] / 2 (exact: sigmoid via tanh(a/2)); reset_after, n rows [W_hn | 0 | b_hn] (the part
    multiplied by r). w_n: reset_before, W_hn (on r ⊙ h), else None. w_x: the n rows' input projection on [x_t; 1],
    [W_in | b_in (+ b_hn, additive when reset_before)]. kern (the CPU kernels): reset_after in one call, the same
    values (_cpu_glue.gru_fold_after)."""
    H = p.w_hh.shape[1]
    H2, H3 = 2 * H, 3 * H
    w_rec = ws.get(xp, "w_rec", (H3 if reset_after else H2, H + I + 1), dt, dev)  # (3H or 2H, H+I+1)
    if kern is not None and reset_after and params_of_dtype(dt, p):
        w_x = ws.get(xp, "w_x", (H, I + 1), dt, dev)  # (H, I+1)
        kern.gru_fold_after(p.w_ih, p.w_hh, p.b_ih, p.b_hh, w_rec, w_x, dt.type(0.5))
        return w_rec, None, w_x
    fold_weights(ops, w_rec, p, ((slice(0, H2), slice(0, H2)),), H, I)
    ops.mul(w_rec[:H2, :], half, out=w_rec[:H2, :])
    w_n = None
    if reset_after:
        ops.copy(p.w_hh[H2:, :], w_rec[H2:, :H])
        ops.fill(w_rec[H2:, H:H + I], 0.0)
        ops.copy(p.b_hh[H2:], w_rec[H2:, H + I])
    else:
        w_n = p.w_hh[H2:, :]  # (H, H)
    w_x = ws.get(xp, "w_x", (H, I + 1), dt, dev)  # (H, I+1)
    ops.copy(p.w_ih[H2:, :], w_x[:, :I])
    if reset_after:
        ops.copy(p.b_ih[H2:], w_x[:, I])
    else:
        ops.add(p.b_ih[H2:], p.b_hh[H2:], out=w_x[:, I])
    return w_rec, w_n, w_x


def _outputs(xp, x, operands, gates, cand, x_ones, reset_after: bool, *, x_in_operands: bool):
    """y (T, B, H), (h_T,), FastGRUCache: views of the feature-major storage."""
    T, H = cand.shape[0], cand.shape[1]
    h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H) view
    cache = FastGRUCache(x=x, h=h_v, r=feature_major_to_tbh(xp, gates[:, :H, :]),
                         z=feature_major_to_tbh(xp, gates[:, H:2 * H, :]), n=feature_major_to_tbh(xp, cand),
                         hn=feature_major_to_tbh(xp, gates[:, 2 * H:, :]), reset_after=reset_after,
                         operands=operands, gates=gates, cand=cand, x_ones=x_ones, x_in_operands=x_in_operands)
    return h_v[1:, ...], (h_v[T, ...],), cache


def _gru_forward_cupy(xp, p: CellParams, x, state0, *, reset_after: bool, ws: Workspace | None, reuse: bool):
    """gru_forward on CuPy: the input projection of all T in one GEMM, the gate math in _cuda's fused kernels
    (one launch per step besides the GEMM); operands rows [h; 1 when reset_after], x kept in x_ones."""
    from . import _cuda

    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    n_cols = H + 1 if reset_after else H  # rows of the operands used by the recurrent GEMM

    # input weights with the biases as an extra column; r, z rows scaled by 1/2 (exact: sigmoid via tanh)
    w_x = ws.get(xp, "w_x", (H3, I + 1), dt, dev)  # (3H, I+1)
    ops.copy(p.w_ih, w_x[:, :I])
    ops.add(p.b_ih, p.b_hh, out=w_x[:, I])  # r, z: b_ih + b_hh; n: b_in + b_hn (reset_before)
    if reset_after:
        ops.copy(p.b_ih[H2:], w_x[H2:, I])  # n: b_in only, b_hn is multiplied by r
    ops.mul(w_x[:H2, :], 0.5, out=w_x[:H2, :])
    if reset_after:  # (3H, H+1): W_hh with [0, 0, b_hn] as the last column
        w_h = ws.get(xp, "w_h", (H3, H + 1), dt, dev)  # (3H, H+1)
        ops.copy(p.w_hh, w_h[:, :H])
        ops.fill(w_h[:H2, H], 0.0)
        ops.copy(p.b_hh[H2:], w_h[H2:, H])
        ops.mul(w_h[:H2, :], 0.5, out=w_h[:H2, :])
    else:
        w_h = ops.mul(p.w_hh[:H2, :], 0.5, out=ws.get(xp, "w_h", (H2, H), dt, dev))  # (2H, H)
        w_n = p.w_hh[H2:, :]  # (H, H)

    x_ones = input_with_ones(xp, ops, ws, reuse, x, dt, dev)  # (T, I+1, B)
    operands = cache_array(xp, ws, reuse, "operands", (T + 1, n_cols, B), dt, dev)  # (T+1, H(+1), B)
    gates = cache_array(xp, ws, reuse, "gates", (T, H3, B), dt, dev)  # (T, 3H, B)
    cand = cache_array(xp, ws, reuse, "cand", (T, H, B), dt, dev)  # (T, H, B)
    if reset_after:
        ops.fill(operands[:, H, :], 1.0)
    ops.copy(xp.matrix_transpose(h0), operands[0, :H, :])
    proj_dgates = ws.get(xp, "proj_dgates", (T * 4 * H * B,), dt, dev)  # (T*4H*B,) the projection now, gate grads later
    proj = xp.reshape(proj_dgates[: T * H3 * B], (T, H3, B))  # (T, 3H, B)
    ops.matmul(w_x, x_ones, out=proj)
    wn_rh = None if reset_after else ws.get(xp, "wn_rh", (H, B), dt, dev)  # (H, B) W_hn (r ⊙ h)
    for t in range(T):
        op_t, h_next, proj_t, gates_t = operands[t], operands[t + 1, :H, :], proj[t], gates[t]
        if reset_after:
            ops.matmul(w_h, op_t, out=gates_t)
            _cuda.gru_fwd_after(proj_t, gates_t, op_t[:H], cand[t], h_next)
        else:
            ops.matmul(w_h, op_t, out=gates_t[:H2])
            _cuda.gru_fwd_before_rz(proj_t, gates_t, op_t)
            ops.matmul(w_n, gates_t[H2:], out=wn_rh)
            _cuda.gru_fwd_before_n(proj_t, wn_rh, gates_t, op_t, cand[t], h_next)
    return _outputs(xp, x, operands, gates, cand, x_ones, reset_after, x_in_operands=False)


# ---- backward ---------------------------------------------------------------------------------------------------
# Both loops run backwards over chunks of steps; after each chunk, its recurrent weight grads (one batched GEMM)
# and its input backward. NumPy: chunks sized for the CPU caches, each chunk's step-independent factors computed
# first (_gru_factors), gate grads of one chunk held. CuPy: the gate grads of all T held (in the forward's
# projection buffer), the fused kernels compute the factors per step.
@dataclass
class _BackwardBuffers:
    """What the NumPy and CuPy backward loops share. `held` steps of gate grads: one chunk (NumPy) or all T
    (CuPy); step t's are at row t - (its chunk's t0) on NumPy, at row t on CuPy."""

    chunk: int  # steps per chunk
    dh: Any  # (H, B) dL/dh_t^T, carried backwards
    dhp: Any  # (H, B) the recurrent GEMM's output
    dgates: Any  # (held, 4H, B) [n_h | r | z | n_i] (reset_after) or (held, 3H, B) [r | z | n]
    dgates_id: int  # id of the workspace array behind dgates
    dgh: Any  # (held, 3H or 2H, B) the rows at the recurrent GEMM: [n_h | r | z] or [r | z]
    dgi: Any  # (held, 3H, B) the rows at the input projection, torch's order [r | z | n]
    da_r: Any  # (held, H, B) views of dgates, one per gate: da_r, da_z, da_n
    da_z: Any
    da_n: Any
    dn_h: Any  # reset_after: (held, H, B) da_n ⊙ r, the n row at the recurrent GEMM; else None
    w_hh_t: Any  # transposed W_hh rows that multiply dgh: (H, 3H) rows [n | r | z] or (H, 2H) rows [r | z]
    w_n_t: Any  # reset_before: (H, H) W_hn^T; else None
    drh: Any  # reset_before: (H, B) d(r ⊙ h); else None
    dw: Any  # (3H or 2H, n_cols) recurrent weight grads: rows [n | r | z] or [r | z] x columns of the operands
    dw_terms: Any  # (chunk, 3H or 2H, n_cols) one chunk's per-step terms of dw
    operand_copy: Any  # (chunk, B, n_cols) contiguous operands^T, or None
    dw_n: Any  # reset_before: (H, H) n rows x (r ⊙ h); else None
    dw_n_terms: Any  # reset_before: (chunk, H, H); else None
    factors: Any  # NumPy's portable loop: (chunk, 3, H, B) see _gru_factors; CuPy and the CPU kernels: None
    h_minus_n: Any  # NumPy's portable loop: (chunk, H, B) scratch of _gru_factors; else None
    dhz: Any  # CuPy: (H, B) dh ⊙ z of the step after (dh = dhz + dhp (+ dy)); NumPy: None
    input_bwd: InputBackward


def gru_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                 input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False, launch=call_now):
    """Same contract as gru.backward; dy may be None (zeros). A cache from the reference forward goes to it.
    launch: how the whole-sequence backward's compiled calls are made (see gru_forward); the other paths call."""
    if not isinstance(c, FastGRUCache):
        return reference_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    cuda = _common.is_cupy(xp)
    step_elems = c.cand.shape[1] * c.cand.shape[2]  # H·B
    kern = _cpu.kernels() if not cuda and _cpu.usable(xp, step_elems) else None
    seq = kern.seq("gru_bwd_seq", c.x.dtype) if kern is not None and c.reset_after and c.x_in_operands and \
        params_of_dtype(c.x.dtype, p, g) else None
    if seq is not None:  # the whole time loop in one call (_cpu.gru_bwd_sequence)
        return _backward_sequence(xp, ops, ws, reuse, p, c, dy, dstate_T, g, tbptt, input_grad, kern, seq, launch)
    bufs = _backward_buffers(xp, ops, ws, reuse, p, c, dstate_T, input_grad, cuda, factors=kern is None)
    if cuda:  # dy feature-major once: every kernel argument contiguous
        dy_fm = feature_major_copy(xp, ops, ws, "dy_fm", dy, c.x.dtype, device_of(c.x))  # (T, H, B) or None
        _backward_loop_cupy(xp, ops, c, bufs, dy_fm, tbptt)
    elif kern is not None:
        _backward_loop_kernels(xp, ops, ws, reuse, c, bufs, dy, tbptt, kern)
    else:
        _backward_loop_numpy(xp, ops, ws, reuse, c, bufs, dy, tbptt)
    _add_recurrent_grads(ops, g, c, bufs.dw, bufs.dw_n)
    # input weights: every row (CuPy layout) or the n rows; reset_before: b_hn is additive, same grad as b_in
    dx = bufs.input_bwd.finish(g, b_hh=not c.reset_after)
    return dx, (xp.asarray(xp.matrix_transpose(bufs.dh), copy=True),)


def _backward_sequence(xp, ops: Ops, ws: Workspace, reuse: bool, p: CellParams, c: FastGRUCache, dy, dstate_T,
                       g: CellParams, tbptt: int, input_grad: bool, kern, seq, launch=call_now):
    """gru_backward through the whole-sequence kernel `seq` (_cpu.gru_bwd_sequence; reset_after, x in the operands,
    NumPy; parameters and grads of the cache's dtype): the buffers, one call, then the grads into g; the copies and
    sums around it are _cpu_glue's kernels. Same contract and returns as gru_backward."""
    T, H, B = c.cand.shape
    I = c.x_ones.shape[1] - 1
    dev, dt = device_of(c.x), c.x.dtype
    H3 = 3 * H
    dhz = state_grad(xp, ops, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dh z, starts as dh_T
    dhp = ws.get(xp, "dhp", (H, B), dt, dev)  # (H, B) the recurrent GEMM's output, zeroed below
    unused = ws.get(xp, "seq_unused", (T, 1, 1), dt, dev)  # (T, 1, 1) stands in for an absent dy or dx
    dy_fm = unused if dy is None else feature_major_copy(xp, ops, ws, "dy_fm", dy, dt, dev, launch)  # (T, H, B)
    dgates = ws.get(xp, "dgates_step", (4 * H, B), dt, dev)  # (4H, B) one step's [n_h | r | z | n_i]
    w_hh_t = ws.get(xp, "w_hh_nrz_t", (H, H3), dt, dev)  # (H, 3H) (W_hh rows n, r, z)^T
    w_ih_t = ws.get(xp, "w_ih_t", (I, H3), dt, dev)  # (I, 3H) W_ih^T, torch's order
    dw = ws.get(xp, "dw", (H3, H + I + 1), dt, dev)  # (3H, n_cols) rows n, r, z x [h | x | 1], zeroed below
    dw_in = ws.get(xp, "dw_in", (H, I + 1), dt, dev)  # (H, I+1) n rows x [x | 1], zeroed below
    launch(kern.transpose_rotated, p.w_hh, w_hh_t, 2 * H)  # rows n, r, z
    launch(kern.transpose_rotated, p.w_ih, w_ih_t, 0)
    for a in (dw, dw_in, dhp):
        ops.fill(a, 0.0)
    dx = cache_array(xp, ws, reuse, "dx", (T, I, B), dt, dev) if input_grad else unused  # (T, I, B)
    cuts = cut_steps(xp, ws, tbptt, T, dev)  # (T,) bool
    launch(seq, dhz, dhp, dy_fm, dy is not None, cuts, c.gates, c.operands, c.cand, dgates, w_hh_t, w_ih_t, dw,
           dw_in, dx, input_grad, dt.type(flush_threshold(xp, dt)), dt.type(1.0))
    dx_out = ops.tbh(dx) if input_grad else None  # (T, B, I) view
    launch(kern.gru_unfold_after, g.w_ih, g.w_hh, g.b_ih, g.b_hh, dw, dw_in)  # recurrent, n-row input, bias grads
    dh0 = xp.empty((B, H), dtype=dt, device=dev)  # (B, H) dh_0, a new array (the caller keeps it)
    launch(kern.add_transposed, dhz, dhp, dh0)
    return dx_out, (dh0,)


def _backward_buffers(xp, ops: Ops, ws: Workspace, reuse: bool, p: CellParams, c: FastGRUCache, dstate_T,
                      input_grad: bool, cuda: bool, *, factors: bool = True) -> _BackwardBuffers:
    """The backward's buffers from the workspace, transposed recurrent weights copied in, weight grads zeroed.
    factors=False: no factor buffers (the CPU kernels compute each step's factors in registers)."""
    T, H, B = c.cand.shape
    dev, dt = device_of(c.x), c.x.dtype
    H2, H3 = 2 * H, 3 * H
    n_cols = c.operands.shape[1]  # columns of the recurrent weight grads: [h | x | 1], [h | 1] or [h]
    dh = state_grad(xp, ops, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B)
    dhp = ws.get(xp, "dhp", (H, B), dt, dev)  # (H, B)
    # CuPy keeps every gate grad anyway, so only the weight-grad bound applies there (the cache bound would give
    # tiny chunks at large B·H: extra kernel launches for nothing)
    cache_bound = T if cuda else _common.CHUNK_ELEMS // max(1, B * H)
    chunk = max(1, min(T, cache_bound, _common.DW_CHUNK_ELEMS // (H3 * n_cols)))
    held = T if cuda else chunk
    # in the forward's full-T input-projection buffer when it used one (CuPy always does), else their own
    dgates_flat, dgates_id = gate_grad_buffer(xp, ws, T, held, 4 * H, B, dt, dev,
                                              shared=cuda or T * H * B <= _common.GI_FULL_MAX_ELEMS)
    dw_n = dw_n_terms = w_n_t = drh = dn_h = None
    if c.reset_after:  # per step [n_h | r | z | n_i]: dgh = rows 0:3H (n, r, z), dgi = rows H:4H, both views
        dgates = xp.reshape(dgates_flat, (held, 4 * H, B))  # (held, 4H, B)
        dgh, dgi = dgates[:, :H3, :], dgates[:, H:, :]
        w_hh_t = ws.get(xp, "w_hh_nrz_t", (H, H3), dt, dev)  # (H, 3H) (W_hh rows n, r, z)^T
        ops.copy(xp.matrix_transpose(p.w_hh[H2:, :]), w_hh_t[:, :H])
        ops.copy(xp.matrix_transpose(p.w_hh[:H2, :]), w_hh_t[:, H:])
        by_gate = xp.reshape(dgates_flat, (held, 4, H, B))  # (held, 4, H, B)
        da_z, da_r, dn_h, da_n = by_gate[:, 2], by_gate[:, 1], by_gate[:, 0], by_gate[:, 3]
        dw = ops.fill(ws.get(xp, "dw", (H3, n_cols), dt, dev), 0.0)  # (3H, n_cols) rows n, r, z
    else:  # per step [r | z | n]
        dgates = xp.reshape(dgates_flat[: held * H3 * B], (held, H3, B))  # (held, 3H, B)
        dgh, dgi = dgates[:, :H2, :], dgates
        w_hh_t = ops.copy(xp.matrix_transpose(p.w_hh[:H2, :]), ws.get(xp, "w_hh_rz_t", (H, H2), dt, dev))  # (H, 2H)
        w_n_t = ops.copy(xp.matrix_transpose(p.w_hh[H2:, :]), ws.get(xp, "w_hn_t", (H, H), dt, dev))  # (H, H)
        by_gate = xp.reshape(dgates, (held, 3, H, B))  # (held, 3, H, B)
        da_z, da_r, da_n = by_gate[:, 1], by_gate[:, 0], by_gate[:, 2]
        drh = ws.get(xp, "drh", (H, B), dt, dev)  # (H, B)
        dw = ops.fill(ws.get(xp, "dw", (H2, n_cols), dt, dev), 0.0)  # (2H, n_cols) rows r, z
        dw_n = ops.fill(ws.get(xp, "dw_n", (H, H), dt, dev), 0.0)  # (H, H) n rows x (r ⊙ h)
        dw_n_terms = ws.get(xp, "dw_n_terms", (chunk, H, H), dt, dev)  # (chunk, H, H)
    dw_terms = ws.get(xp, "dw_terms", (chunk,) + tuple(dw.shape), dt, dev)  # (chunk, 3H or 2H, n_cols)
    operand_copy = ws.get(xp, "operand_copy", (chunk, B, n_cols), dt, dev) if B <= _common.DW_COPY_MAX_B else None
    fac = h_minus_n = dhz = None
    if cuda:
        dhz = ws.get(xp, "dhz", (H, B), dt, dev)  # (H, B)
    elif factors:
        fac = ws.get(xp, "factors", (chunk, 3, H, B), dt, dev)  # (chunk, 3, H, B)
        h_minus_n = ws.get(xp, "h_minus_n", (chunk, H, B), dt, dev)  # (chunk, H, B)
    # input backward: dx from all three gate rows; the weight grads from the n rows only when x sits in the
    # operands (the recurrent weight grads then hold the r, z rows' input weights and biases)
    x_in_operands = c.x_in_operands
    input_bwd = InputBackward(xp, ops, ws, reuse, p, ((slice(0, H3), slice(0, H3)),), c.x_ones, H3, chunk,
                              dw_rows=slice(H2, H3) if x_in_operands else None,
                              dw_blocks=((slice(0, H), slice(H2, H3)),) if x_in_operands else None, dx=input_grad)
    return _BackwardBuffers(chunk=chunk, dh=dh, dhp=dhp, dgates=dgates, dgates_id=dgates_id, dgh=dgh, dgi=dgi,
                            da_r=da_r, da_z=da_z, da_n=da_n, dn_h=dn_h, w_hh_t=w_hh_t, w_n_t=w_n_t, drh=drh, dw=dw,
                            dw_terms=dw_terms, operand_copy=operand_copy, dw_n=dw_n, dw_n_terms=dw_n_terms,
                            factors=fac, h_minus_n=h_minus_n, dhz=dhz, input_bwd=input_bwd)


def _gru_factors(xp, ops: Ops, c: FastGRUCache, t0: int, t1: int, factors, h_minus_n):
    """For steps t0..t1-1, factors (m, 3, H, B): [r(1-r)·(hn | h_{t-1}), z(1-z)(h_{t-1} - n), (1-z)(1-n^2)]
    (da_r = (da_n | drh) factors[0], da_z = dh factors[1], da_n = dh factors[2]). 8 calls for the whole chunk;
    h_{t-1} - n is recomputed here, not cached by the forward: one array less to read back from memory."""
    m = t1 - t0
    H = c.cand.shape[1]
    factors, h_minus_n = factors[:m], h_minus_n[:m]
    gates = xp.reshape(c.gates[t0:t1], (m, 3, H, -1))  # (m, 3, H, B) [r, z, hn]
    h_prev, cand = c.operands[t0:t1, :H, :], c.cand[t0:t1]
    f_rz, f_n = factors[:, :2], factors[:, 2]
    one = ops.const(1.0, gates.dtype, device_of(gates))
    ops.sub(one, gates[:, :2], out=f_rz)  # 1-r, 1-z
    ops.mul(cand, cand, out=f_n)
    ops.sub(one, f_n, out=f_n)
    ops.mul(f_n, factors[:, 1], out=f_n)  # (1-z)(1-n^2)
    ops.mul(f_rz, gates[:, :2], out=f_rz)  # r(1-r), z(1-z)
    ops.mul(factors[:, 0], gates[:, 2] if c.reset_after else h_prev, out=factors[:, 0])
    ops.mul(factors[:, 1], ops.sub(h_prev, cand, out=h_minus_n), out=factors[:, 1])  # z(1-z)(h_{t-1} - n)
    return factors


def _backward_loop_numpy(xp, ops: Ops, ws: Workspace, reuse: bool, c: FastGRUCache, b: _BackwardBuffers, dy,
                         tbptt: int):
    """The NumPy backward: per chunk, its factors, then per step 7-8 ufunc calls and one or two GEMMs, all views
    prebuilt (and cached with a reused workspace), `out` positional."""
    T, H = c.cand.shape[0], c.cand.shape[1]
    H2, chunk, reset_after, gates, factors = 2 * H, b.chunk, c.reset_after, c.gates, b.factors
    da_z, da_n, da_r, dn_h, dgh = b.da_z, b.da_n, b.da_r, b.dn_h, b.dgh

    def build():  # step t's views: its factors (chunks counted from the end), gate grads, gates
        out = []
        for t in range(T):
            j = chunk_row(t, T, chunk)
            f = factors[j]
            out.append((f[0], f[1], f[2], da_z[j], da_n[j], da_r[j], gates[t, :H], gates[t, H:H2],
                        dn_h[j] if reset_after else None, dgh[j]))
        return out

    key = (T, chunk, reset_after, b.dgates_id, id(factors), id(gates))
    step_views = ws.views("bwd", key, build) if reuse or ws.bufs.get("gates") is gates else build()
    mul, add, matmul = ops.mul, ops.add, ops.matmul
    dh, dhp, drh, w_hh_t, w_n_t = b.dh, b.dhp, b.drh, b.w_hh_t, b.w_n_t
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        _gru_factors(xp, ops, c, t0, t1, factors, b.h_minus_n)
        for t in range(t1 - 1, t0 - 1, -1):
            dy_t = None if dy is None else xp.matrix_transpose(dy[t, ...])  # (H, B) view
            fac_r, fac_z, fac_n, da_z_t, da_n_t, da_r_t, r_t, z_t, dn_h_t, dgh_t = step_views[t]
            if dy_t is not None:
                add(dh, dy_t, dh)
            # `out` positional (cheaper than out=); two multiplies: a broadcast one is slower at small H·B
            mul(dh, fac_z, da_z_t)
            mul(dh, fac_n, da_n_t)
            if reset_after:
                mul(da_n_t, fac_r, da_r_t)  # da_r = da_n · hn · r(1-r)
                mul(da_n_t, r_t, dn_h_t)  # da_n ⊙ r: the n row of dgh
                matmul(w_hh_t, dgh_t, dhp)  # (H, 3H) @ (3H, B)
                mul(dh, z_t, dh)
                add(dh, dhp, dh)
            else:
                matmul(w_n_t, da_n_t, drh)  # d(r ⊙ h) (H, B)
                mul(drh, fac_r, da_r_t)  # da_r = drh · h · r(1-r)
                matmul(w_hh_t, dgh_t, dhp)  # (H, 2H) @ (2H, B)
                mul(drh, r_t, drh)
                add(dhp, drh, dhp)
                mul(dh, z_t, dh)
                add(dh, dhp, dh)
            if tbptt and cut(tbptt, T, t):
                ops.fill(dh, 0.0)
        flush_subnormals(xp, ops, ws, dh)  # once a chunk: long sequences' vanishing dh leaves the CPU's slow path
        _chunk_weight_grads(xp, ops, c, b, t0, t1, t0)
        t1 = t0


def _backward_loop_kernels(xp, ops: Ops, ws: Workspace, reuse: bool, c: FastGRUCache, b: _BackwardBuffers, dy,
                           tbptt: int, kern):
    """_backward_loop_numpy with the fused CPU kernels (_cpu.py), bit-identical, each step's factors computed inside
    its kernel. reset_after: per step one kernel and the recurrent GEMM (8 calls and a share of the chunk's factor
    pass before); dh is carried as dhz + dhp (b.dh holds dh z). reset_before: per step a kernel, the n rows' GEMM, a
    kernel, the r, z rows' GEMM (10 calls before); dh is carried as dhz + (dhp + drr) (dh z, the r, z rows' GEMM,
    d(r h) r), summed by the next step's kernel in the portable loop's order."""
    T, H, B = c.cand.shape
    chunk, gates, dgates, dgh, da_n, operands, cand = b.chunk, c.gates, b.dgates, b.dgh, b.da_n, c.operands, c.cand
    dt, dev, after = c.cand.dtype, device_of(c.cand), c.reset_after

    def build():  # step t's views: gate grads (chunks counted from the end), gates, h_{t-1}, n
        out = []
        for t in range(T):
            j = chunk_row(t, T, chunk)
            out.append((dgates[j], dgh[j], da_n[j], gates[t], operands[t, :H, :], cand[t]))
        return out

    key = (T, chunk, after, b.dgates_id, id(gates), id(operands), id(cand))
    # cached only when every array they view is the workspace's (reuse): a layer's operands are its own each call,
    # and cached views would keep the last ones alive
    step_views = ws.views("bwd_kernels", key, build) if reuse else build()
    one, tiny = dt.type(1.0), dt.type(flush_threshold(xp, dt))
    dhz, dhp, drh, matmul, w_hh_t, w_n_t = b.dh, b.dhp, b.drh, ops.matmul, b.w_hh_t, b.w_n_t
    dy_fm = None if dy is None else ws.get(xp, "dy_fm_chunk", (chunk, H, B), dt, dev)  # (chunk, H, B) dy^T
    unused = ws.get(xp, "kernel_unused", (1, 1), dt, dev)  # (1, 1) for an absent dy
    carried = (dhz, dhp)
    if not after:
        dh = ws.get(xp, "dh_step", (H, B), dt, dev)  # (H, B) the step's whole dh
        drr = ops.fill(ws.get(xp, "drr", (H, B), dt, dev), 0.0)  # (H, B) d(r ⊙ h) ⊙ r of the step after
        carried = (dhz, dhp, drr)
    ops.fill(dhp, 0.0)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        if dy_fm is not None:
            feature_major_into(xp, ops, dy[t0:t1], dy_fm[: t1 - t0])
        for t in range(t1 - 1, t0 - 1, -1):
            dgates_t, dgh_t, da_n_t, gates_t, h_prev, n_t = step_views[t]
            dy_t = unused if dy_fm is None else dy_fm[t - t0]
            if after:
                kern.gru_bwd_after(dhz, dhp, dy_t, dy_fm is not None, gates_t, h_prev, n_t, dgates_t, tiny, one)
                matmul(w_hh_t, dgh_t, dhp)  # (H, 3H) @ (3H, B)
            else:
                kern.gru_bwd_before_zn(dhz, dhp, drr, dy_t, dy_fm is not None, gates_t, h_prev, n_t, dgates_t, dh,
                                       tiny, one)
                matmul(w_n_t, da_n_t, drh)  # (H, H) @ (H, B): d(r ⊙ h)
                kern.gru_bwd_before_r(drh, gates_t, h_prev, dh, dgates_t, dhz, drr, one)
                matmul(w_hh_t, dgh_t, dhp)  # (H, 2H) @ (2H, B)
            if tbptt and cut(tbptt, T, t):
                for a in carried:
                    ops.fill(a, 0.0)
        _chunk_weight_grads(xp, ops, c, b, t0, t1, t0)
        t1 = t0
    if not after:
        ops.add(dhp, drr, out=dhp)
    ops.add(dhz, dhp, out=b.dh)  # dh_0 = dh z + dhp (+ d(r ⊙ h) r), as the portable loop ends


def _backward_loop_cupy(xp, ops: Ops, c: FastGRUCache, b: _BackwardBuffers, dy_fm, tbptt: int):
    """The CuPy backward: per step one or two fused kernels and one or two GEMMs; dh is carried as dhz + dhp (the
    kernels add them, and dy, on the fly). dy_fm: (T, H, B) dy, feature-major and contiguous, or None."""
    from . import _cuda

    T, H = c.cand.shape[0], c.cand.shape[1]
    H2, chunk, reset_after = 2 * H, b.chunk, c.reset_after
    gates, operands, cand, dgates, dgh, da_n = c.gates, c.operands, c.cand, b.dgates, b.dgh, b.da_n
    dh, dhp, dhz, drh, w_hh_t, w_n_t = b.dh, b.dhp, b.dhz, b.drh, b.w_hh_t, b.w_n_t
    matmul = ops.matmul
    ops.copy(dh, dhz)
    ops.fill(dhp, 0.0)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        for t in range(t1 - 1, t0 - 1, -1):
            dy_t = None if dy_fm is None else dy_fm[t]  # (H, B) contiguous
            if reset_after:
                _cuda.gru_bwd_after(dhz, dhp, dy_t, gates[t], operands[t, :H, :], cand[t], dgates[t])
                matmul(w_hh_t, dgh[t], out=dhp)
            else:
                _cuda.gru_bwd_before_zn(dhz, dhp, dy_t, gates[t], operands[t], cand[t], dgates[t], dh)
                matmul(w_n_t, da_n[t], out=drh)
                _cuda.gru_bwd_before_r(drh, dh, gates[t], operands[t], dgates[t], dhz)
                matmul(w_hh_t, dgates[t, :H2], out=dhp)
            if cut(tbptt, T, t):
                ops.fill(dhz, 0.0)
                ops.fill(dhp, 0.0)
        _chunk_weight_grads(xp, ops, c, b, t0, t1, 0)
        t1 = t0
    ops.add(dhz, dhp, out=dh)


def _chunk_weight_grads(xp, ops: Ops, c: FastGRUCache, b: _BackwardBuffers, t0: int, t1: int, row0_step: int):
    """Steps t0..t1-1 (gate grads of step t at row t - row0_step of b.dgates): the recurrent weight grads, then the
    input backward, while the chunk's gate grads are in cache."""
    r0, r1 = t0 - row0_step, t1 - row0_step
    add_chunk_weight_grads(xp, ops, b.dgh[r0:r1], c.operands, t0, t1, b.dw_terms, b.dw, b.operand_copy)
    if not c.reset_after:  # n rows x (r ⊙ h), kept in the gates' hn slot
        H2 = 2 * c.cand.shape[1]
        add_chunk_weight_grads(xp, ops, b.dgates[r0:r1, H2:], c.gates[:, H2:], t0, t1, b.dw_n_terms, b.dw_n)
    b.input_bwd.add_chunk(t0, t1, b.dgi[r0:r1])


def _add_recurrent_grads(ops: Ops, g: CellParams, c: FastGRUCache, dw, dw_n_rh):
    """Accumulate the recurrent weight grads into g. dw rows [n | r | z] (reset_after) or [r | z] (+ dw_n_rh, the n
    rows x (r ⊙ h)) x columns [h | x | 1] or [h | 1] or [h]; the ones column is each bias's grad (b_ih = b_hh for
    r, z)."""
    H = c.cand.shape[1]
    I = c.x_ones.shape[1] - 1
    H2, reset_after, add = 2 * H, c.reset_after, ops.add
    ones_col = H + I if c.x_in_operands else (H if reset_after else None)  # the ones column, if any
    dw_rz, dw_n = (dw[H:], dw[:H, :H]) if reset_after else (dw, dw_n_rh)
    if c.x_in_operands:  # r, z rows: [W_hh | W_ih | b] as folded by the forward
        unfold_grads(ops, g, dw_rz, ((slice(0, H2), slice(0, H2)),), H, I)
    else:
        add(g.w_hh[:H2, :], dw_rz[:, :H], out=g.w_hh[:H2, :])
        if reset_after:
            add(g.b_hh[:H2], dw_rz[:, ones_col], out=g.b_hh[:H2])
    add(g.w_hh[H2:, :], dw_n, out=g.w_hh[H2:, :])
    if reset_after:
        add(g.b_hh[H2:], dw[:H, ones_col], out=g.b_hh[H2:])  # b_hn: inside r ⊙ (...), its own grad
