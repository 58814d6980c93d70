"""The LSTM's fast twin: same contract as nn/lstm.py, feature-major layout, fused CuPy kernels on GPU.

Legend: T steps, B batch, I inputs, H hidden; gate rows internally [o | i | f | g]; arrays feature-major (T, rows, B).

Same layout as the GRU (each step's (4H, B) gate block contiguous, x folded into the recurrent GEMM's operands),
with the gate rows reordered internally to [o | i f g] = torch's [3H:4H | 0:3H] (two blocks, so every reorder is two
copies): the three sigmoid gates are one contiguous 3H block (their pre-activations halved in the weights, sigmoid
via tanh, so one tanh covers all 4H rows), and in the backward the three gates driven by dc (i, f, g) are one block.
CuPy: the same layout and GEMMs, a step's gate math in one fused kernel (_cuda.lstm_fwd, _cuda.lstm_bwd).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from ..lstm import LSTMCache
from ..lstm import backward as reference_backward
from .._cell import CellParams, cut
from . import _common, _cpu
from ._common import (InputBackward, Ops, Workspace, add_chunk_weight_grads, cache_array, call_now, chunk_row,
                      cut_steps, feature_major_copy, feature_major_into, feature_major_to_tbh, flush_subnormals,
                      flush_threshold, fold_weights, gate_grad_buffer, ops_for, params_of_dtype, recurrent_operands,
                      state_grad, step_array, step_storage, unfold_grads, weight_grad_buffers)


def _lstm_blocks(H: int):
    return ((slice(0, H), slice(3 * H, 4 * H)), (slice(H, 4 * H), slice(0, 3 * H)))  # (internal, torch) rows


@dataclass
class FastLSTMCache(LSTMCache):
    """LSTMCache whose (T, B, .) fields are views of feature-major storage: h, c = views of operands, cell_states;
    o, i, f, g = views of gates; tc = view of tanh_c. The reference backward reads it too."""

    operands: Any = None  # (T+1, H+I+1, B) [state after t steps; x[t]; 1], the recurrent GEMM's operands
    cell_states: Any = None  # (T+1, H, B) c_t^T
    gates: Any = None  # (T, 4H, B) [o | i | f | g] activations per step
    tanh_c: Any = None  # (T, H, B) tanh(c_t)
    x_ones: Any = None  # (T, I+1, B) [x_t^T; 1], a view of the operands


def lstm_forward(xp, p: CellParams, x, state0, *, ws: Workspace | None = None, reuse: bool = False,
                 keep_cache: bool = True, private_cache: bool = False, launch=call_now):
    """Same contract as lstm.forward: x (T, B, I), (h0, c0) -> y (T, B, H), (h_T, c_T), cache (FastLSTMCache).
    keep_cache=False (a forward without gradients): gates and tanh(c) live in one step's buffers, c in two
    alternating ones, only the states h (y) are stored, and the cache returned is None. private_cache=True (a
    layer, which keeps a cache only until its next forward): the cache arrays no output is a view of (gates,
    tanh(c): 5x the output) live in the workspace even without reuse, as in gru_forward; the operands (y) and the
    cell states (c_T) stay fresh each call. launch(f, *args): how the whole-sequence call is made (as in
    gru_forward)."""
    if _common.is_cupy(xp):
        y, sT, cache = _lstm_forward_cupy(xp, p, x, state0, ws=ws, reuse=reuse)
        return y, sT, cache if keep_cache else None
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    h0, c0 = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    H3, H4 = 3 * H, 4 * H
    half = ops.const(0.5, dt, dev)
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    # the recurrent GEMM does the input projection too: [W_hh | W_ih | b_ih + b_hh] (4H, H+I+1) on
    # step t's [h; x[t]; 1]; o, i, f rows halved (exact: sigmoid(a) = tanh(a/2)/2 + 1/2)
    w_rec = ws.get(xp, "w_rec", (H4, H + I + 1), dt, dev)  # (4H, H+I+1)
    if kern is not None and params_of_dtype(dt, p):  # one call, the same values (_cpu_glue.fold_rotated)
        kern.fold_rotated(p.w_ih, p.w_hh, p.b_ih, p.b_hh, w_rec, H3, H3, dt.type(0.5))
    else:
        fold_weights(ops, w_rec, p, _lstm_blocks(H), H, I)
        ops.mul(w_rec[:H3, :], half, out=w_rec[:H3, :])

    operands = recurrent_operands(xp, ops, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's is [t]
    seq = kern.seq("lstm_fwd_seq", dt) if kern is not None else None
    if seq is not None:  # float32 on NumPy's BLAS: the whole time loop in one call (_cpu.lstm_fwd_sequence)
        return _forward_sequence(xp, ops, ws, reuse, private_cache, keep_cache, x, c0, w_rec, operands, seq, launch)
    # without a cache: c_{t-1} and c_t in two buffers, alternating (a kernel that reads and writes one array is not
    # vectorised by numba)
    cell_states = step_array(xp, ws, reuse, keep_cache, "cell_states", (T + 1, H, B), dt, dev, output=True,
                             period=2)
    internal = reuse or private_cache
    gates = step_array(xp, ws, internal, keep_cache, "gates", (T, H4, B), dt, dev)  # (T, 4H, B) or one step's
    tanh_c = step_array(xp, ws, internal, keep_cache, "tanh_c", (T, H, B), dt, dev)  # (T, H, B) or one step's
    ops.copy(xp.matrix_transpose(c0), cell_states[0])
    ig = ws.get(xp, "scratch", (H, B), dt, dev)  # (H, B) i ⊙ g
    mul, add, tanh, matmul = ops.mul, ops.add, ops.tanh, ops.matmul
    step_arrays = (operands[:T], operands[1:, :H], cell_states[:T], cell_states[1:], gates, gates[:, :H3],
                   gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:H3], gates[:, H3:], tanh_c)
    key = (T, id(operands), id(cell_states), id(gates), id(tanh_c))
    steps = ws.views("fwd", key, lambda: list(zip(*step_arrays))) if reuse and keep_cache else zip(*step_arrays)
    if kern is not None:  # the fused CPU kernels (_cpu.py): the same operations, bit-identical, 5 calls a step
        gate_kernel, half_s = kern.lstm_fwd_gates, dt.type(0.5)
        for op_t, h_next, c_prev, c_next, gates_t, sig_t, o_t, i_t, f_t, g_t, tanh_c_t in steps:
            matmul(w_rec, op_t, out=gates_t)  # (4H, H+I+1) @ (H+I+1, B)
            tanh(gates_t, out=gates_t)
            gate_kernel(gates_t, c_prev, c_next, half_s)  # o, i, f; c = f c_{t-1} + i g
            tanh(c_next, out=tanh_c_t)
            mul(o_t, tanh_c_t, out=h_next)  # h = o tanh(c)
        steps = ()  # done: the portable loop below runs no step
    for op_t, h_next, c_prev, c_next, gates_t, sig_t, o_t, i_t, f_t, g_t, tanh_c_t in steps:
        matmul(w_rec, op_t, out=gates_t)  # (4H, H+I+1) @ (H+I+1, B)
        tanh(gates_t, out=gates_t)  # g, and the three sigmoid gates' tanh(a/2)
        mul(sig_t, half, out=sig_t)
        add(sig_t, half, out=sig_t)
        mul(f_t, c_prev, out=c_next)
        mul(i_t, g_t, out=ig)
        add(c_next, ig, out=c_next)  # c = f c_{t-1} + i g
        tanh(c_next, out=tanh_c_t)
        mul(o_t, tanh_c_t, out=h_next)  # h = o tanh(c)
    if not keep_cache:
        h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H) view
        return h_v[1:], (h_v[T], xp.matrix_transpose(cell_states[T])), None
    return _outputs(xp, x, operands, cell_states, gates, tanh_c)


def _forward_sequence(xp, ops: Ops, ws: Workspace, reuse: bool, private_cache: bool, keep_cache: bool, x, c0, w_rec,
                      operands, seq, launch=call_now):
    """lstm_forward through the whole-sequence kernel `seq` (_cpu.lstm_fwd_sequence; float32, NumPy): the cell
    states (T+1 with a cache, else two alternating, c_T a view of either: fresh unless reused), gates and tanh(c)
    (T steps or one), one call. Same returns as lstm_forward."""
    T, B, _ = x.shape
    H = w_rec.shape[0] // 4
    dev, dt = device_of(x), x.dtype
    internal = reuse or private_cache
    cell_states = step_storage(xp, ws, reuse, keep_cache, "cell_states", (T + 1, H, B), dt, dev, output=True,
                               period=2)  # (T+1, H, B), or (2, H, B): c_t at t % 2
    gates = step_storage(xp, ws, internal, keep_cache, "gates", (T, 4 * H, B), dt, dev)  # (T or 1, 4H, B)
    tanh_c = step_storage(xp, ws, internal, keep_cache, "tanh_c", (T, H, B), dt, dev)  # (T or 1, H, B)
    ops.copy(xp.matrix_transpose(c0), cell_states[0])
    launch(seq, w_rec, operands, cell_states, gates, tanh_c, keep_cache, dt.type(0.5))
    if not keep_cache:
        h_v = feature_major_to_tbh(xp, operands[:, :H, :])  # (T+1, B, H) view
        return h_v[1:], (h_v[T], xp.matrix_transpose(cell_states[T % 2])), None
    return _outputs(xp, x, operands, cell_states, gates, tanh_c)


def _outputs(xp, x, operands, cell_states, gates, tanh_c):
    """y (T, B, H), (h_T, c_T), FastLSTMCache: views of the feature-major storage."""
    T, H = tanh_c.shape[0], tanh_c.shape[1]
    H3 = 3 * H
    h_v, c_v = feature_major_to_tbh(xp, operands[:, :H, :]), feature_major_to_tbh(xp, cell_states)  # (T+1, B, H)
    cache = FastLSTMCache(x=x, h=h_v, c=c_v, i=feature_major_to_tbh(xp, gates[:, H:2 * H]),
                          f=feature_major_to_tbh(xp, gates[:, 2 * H:H3]), g=feature_major_to_tbh(xp, gates[:, H3:]),
                          o=feature_major_to_tbh(xp, gates[:, :H]), tc=feature_major_to_tbh(xp, tanh_c),
                          operands=operands, cell_states=cell_states, gates=gates, tanh_c=tanh_c,
                          x_ones=operands[:T, H:, :])
    return h_v[1:], (h_v[T], c_v[T]), cache


def _lstm_forward_cupy(xp, p: CellParams, x, state0, *, ws: Workspace | None, reuse: bool):
    """lstm_forward on CuPy: the same layout and folded recurrent GEMM, the gate math in one fused kernel per step
    (_cuda.lstm_fwd: 2 launches a step)."""
    from . import _cuda

    T, B, I = x.shape
    H = p.w_hh.shape[1]
    h0, c0 = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    H4 = 4 * H
    w_rec = fold_weights(ops, ws.get(xp, "w_rec", (H4, H + I + 1), dt, dev), p, _lstm_blocks(H), H, I)  # (4H, H+I+1)
    ops.mul(w_rec[:3 * H, :], ops.const(0.5, dt, dev), out=w_rec[:3 * H, :])  # o, i, f rows halved
    operands = recurrent_operands(xp, ops, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's is [t]
    cell_states = cache_array(xp, ws, reuse, "cell_states", (T + 1, H, B), dt, dev)  # (T+1, H, B)
    gates = cache_array(xp, ws, reuse, "gates", (T, H4, B), dt, dev)  # (T, 4H, B)
    tanh_c = cache_array(xp, ws, reuse, "tanh_c", (T, H, B), dt, dev)  # (T, H, B)
    ops.copy(xp.matrix_transpose(c0), cell_states[0])
    for t in range(T):
        ops.matmul(w_rec, operands[t], out=gates[t])  # (4H, H+I+1) @ (H+I+1, B)
        _cuda.lstm_fwd(gates[t], cell_states[t], cell_states[t + 1], tanh_c[t], operands[t + 1, :H])
    return _outputs(xp, x, operands, cell_states, gates, tanh_c)


def _lstm_factors(xp, ops: Ops, c: FastLSTMCache, t0: int, t1: int, factors):
    """For steps t0..t1-1, factors (m, 5, H, B): [tc o(1-o), g i(1-i), c_{t-1} f(1-f), i (1-g^2), o (1-tc^2)]:
    da_o = dh factors[0]; [da_i, da_f, da_g] = dc factors[1:4]; dc += dh factors[4]. 10 calls for the chunk."""
    m = t1 - t0
    H = c.tanh_c.shape[1]
    factors = factors[:m]
    gates = xp.reshape(c.gates[t0:t1], (m, 4, H, -1))  # (m, 4, H, B) [o, i, f, g]
    tanh_c, c_prev = c.tanh_c[t0:t1], c.cell_states[t0:t1]
    f_sig = factors[:, :3]
    one = ops.const(1.0, gates.dtype, device_of(gates))
    ops.sub(one, gates[:, :3], out=f_sig)
    ops.mul(f_sig, gates[:, :3], out=f_sig)  # s(1-s) for o, i, f
    ops.mul(factors[:, 0], tanh_c, out=factors[:, 0])
    ops.mul(factors[:, 1], gates[:, 3], out=factors[:, 1])
    ops.mul(factors[:, 2], c_prev, out=factors[:, 2])
    f_gc = factors[:, 3:5]
    ops.mul(gates[:, 3], gates[:, 3], out=factors[:, 3])
    ops.mul(tanh_c, tanh_c, out=factors[:, 4])
    ops.sub(one, f_gc, out=f_gc)
    ops.mul(factors[:, 3], gates[:, 1], out=factors[:, 3])
    ops.mul(factors[:, 4], gates[:, 0], out=factors[:, 4])
    return factors


def _backward_chunks_kernels(xp, ops: Ops, ws: Workspace, c: FastLSTMCache, upstream, tbptt: int, kern, bufs,
                             grads, chunk: int):
    """lstm_backward's chunk loop with the fused CPU kernels (_cpu.py), bit-identical to the portable one: per chunk
    dy^T and dc_steps^T copied feature-major, per step one kernel (the step's factors computed inside it) and the
    recurrent GEMM, then the chunk's weight grads and input backward. upstream: (dy, dc_steps), each (T, B, H) or
    None."""
    dh, dc, w_hh_t, dgates = bufs
    dw_terms, dw, operand_copy, input_bwd = grads
    T, H, B = c.tanh_c.shape
    dt, dev = c.tanh_c.dtype, device_of(c.tanh_c)
    one, matmul, step = dt.type(1.0), ops.matmul, kern.lstm_bwd
    tiny = dt.type(flush_threshold(xp, dt))  # carried grads below: zero (flush_subnormals)
    dy, dc_steps = upstream
    dy_fm = None if dy is None else ws.get(xp, "dy_fm", (chunk, H, B), dt, dev)  # (chunk, H, B) a chunk of dy^T
    dcs_fm = None if dc_steps is None else ws.get(xp, "dcs_fm", (chunk, H, B), dt, dev)  # (chunk, H, B) dc_steps^T
    # what the kernel gets for an absent dy or dc_steps (never read): not dh or dc themselves, since an argument that
    # aliases one the kernel writes (dc) keeps numba's loop from vectorising (4x slower at H 256, B 128)
    unused = ws.get(xp, "kernel_unused", (1, 1), dt, dev)  # (1, 1)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        m = t1 - t0
        for a, fm in ((dy, dy_fm), (dc_steps, dcs_fm)):
            if fm is not None:
                feature_major_into(xp, ops, a[t0:t1], fm[:m])
        for t in range(t1 - 1, t0 - 1, -1):
            j = t - t0
            step(dh, unused if dy_fm is None else dy_fm[j], dy_fm is not None,
                 unused if dcs_fm is None else dcs_fm[j], dcs_fm is not None, dc, c.gates[t], c.tanh_c[t],
                 c.cell_states[t], dgates[j], tiny, one)
            matmul(w_hh_t, dgates[j], out=dh)  # dh_{t-1} (H, 4H) @ (4H, B)
            if tbptt and cut(tbptt, T, t):
                ops.fill(dh, 0.0)
                ops.fill(dc, 0.0)
        add_chunk_weight_grads(xp, ops, dgates[:m], c.operands, t0, t1, dw_terms, dw, operand_copy)
        input_bwd.add_chunk(t0, t1, dgates[:m])
        t1 = t0


def lstm_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                  input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False, dc_steps=None,
                  launch=call_now):
    """Same contract as lstm.backward; dy may be None (zeros). A cache from the reference forward goes to it.
    dc_steps: optional (T, B, H) upstream gradient on c_t per step (lstm.backward's; variable lengths). launch: how
    the whole-sequence backward's compiled calls are made (see gru_forward); the other paths call."""
    if not isinstance(c, FastLSTMCache):
        return reference_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, dc_steps=dc_steps)
    if _common.is_cupy(xp):
        return _lstm_backward_cupy(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=ws, reuse=reuse,
                                   dc_steps=dc_steps)
    T, H, B = c.tanh_c.shape
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    H3, H4 = 3 * H, 4 * H
    blocks = _lstm_blocks(H)
    dh = state_grad(xp, ops, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dL/dh_t^T, carried backwards
    dc = state_grad(xp, ops, ws, "dc", dstate_T, 1, (H, B), dt, dev)  # (H, B) dL/dc_t^T
    dh_c = ws.get(xp, "scratch", (H, B), dt, dev)  # (H, B) dh's share of dc
    w_hh_t = ws.get(xp, "w_hh_t", (H, H4), dt, dev)  # (H, 4H) W_hh^T, internal gate order
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    seq = kern.seq("lstm_bwd_seq", dt) if kern is not None and params_of_dtype(dt, p, g) else None
    if seq is not None:  # the whole time loop in one call (_cpu.lstm_bwd_sequence); W_hh^T too (_cpu_glue)
        launch(kern.transpose_rotated, p.w_hh, w_hh_t, H3)
        return _backward_sequence(xp, ops, ws, reuse, p, c, (dy, dc_steps), (dh, dc, w_hh_t), g, tbptt, input_grad,
                                  kern, seq, launch)
    for dst, src in blocks:
        ops.copy(xp.matrix_transpose(p.w_hh[src, :]), w_hh_t[:, dst])
    n_cols = c.operands.shape[1]  # H+I+1: [W_hh | W_ih | b] columns
    dw = ops.fill(ws.get(xp, "dw", (H4, n_cols), dt, dev), 0.0)  # (4H, n_cols)
    dw_terms, operand_copy, dw_chunk = weight_grad_buffers(xp, ws, (H4, n_cols), T, B, dt, dev)
    chunk = max(1, min(dw_chunk, _common.CHUNK_ELEMS // max(1, B * H)))
    # the portable loop's factors (the CPU kernels compute each step's in registers)
    factors = None if kern is not None else ws.get(xp, "factors", (chunk, 5, H, B), dt, dev)  # (chunk, 5, H, B)
    # one chunk's gate grads (step t at t - t0)
    dgates_flat, dgates_id = gate_grad_buffer(xp, ws, T, chunk, H4, B, dt, dev, shared=False)
    dgates = xp.reshape(dgates_flat, (chunk, H4, B))  # (chunk, 4H, B) pre-activation grads [o | i f g]
    by_gate = xp.reshape(dgates_flat, (chunk, 4, H, B))  # (chunk, 4, H, B)
    forget = c.gates[:, 2 * H:H3]
    mul, add, matmul = ops.mul, ops.add, ops.matmul

    def build():  # step t's views: its factors (chunks counted from the end), gate grads, forget gate
        out = []
        for t in range(T):
            j = chunk_row(t, T, chunk)
            f = factors[j]
            out.append((f[0], f[1], f[2], f[3], f[4], by_gate[j, 0], by_gate[j, 1], by_gate[j, 2], by_gate[j, 3],
                        forget[t], dgates[j]))
        return out

    if kern is None:
        step_views = ws.views("bwd", (T, chunk, dgates_id, id(factors), id(c.gates)), build) if reuse else build()
    input_bwd = InputBackward(xp, ops, ws, reuse, p, blocks, c.x_ones, H4, chunk, dw_rows=slice(0, 0),  # dx only
                              dx=input_grad)
    if kern is not None:  # the fused CPU kernels (_cpu.py): bit-identical, one kernel and the GEMM a step
        _backward_chunks_kernels(xp, ops, ws, c, (dy, dc_steps), tbptt, kern, (dh, dc, w_hh_t, dgates),
                                 (dw_terms, dw, operand_copy, input_bwd), chunk)
    t1 = 0 if kern is not None else T  # with the kernels: done, the portable loop below runs no chunk
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        _lstm_factors(xp, ops, c, t0, t1, factors)
        for t in range(t1 - 1, t0 - 1, -1):
            fac_o, fac_i, fac_f, fac_g, fac_c, da_o, da_i, da_f, da_g, f_t, dgates_t = step_views[t]
            if dy is not None:
                add(dh, xp.matrix_transpose(dy[t, ...]), out=dh)
            if dc_steps is not None:
                add(dc, xp.matrix_transpose(dc_steps[t, ...]), out=dc)
            mul(dh, fac_c, out=dh_c)
            add(dc, dh_c, out=dc)
            mul(dh, fac_o, out=da_o)
            mul(dc, fac_i, out=da_i)  # da_i, da_f, da_g: three calls (faster than one broadcast one)
            mul(dc, fac_f, out=da_f)
            mul(dc, fac_g, out=da_g)
            mul(dc, f_t, out=dc)  # dc_{t-1}
            matmul(w_hh_t, dgates_t, out=dh)  # dh_{t-1} (H, 4H) @ (4H, B)
            if tbptt and cut(tbptt, T, t):
                ops.fill(dh, 0.0)
                ops.fill(dc, 0.0)
        flush_subnormals(xp, ops, ws, dh)  # once a chunk: see _common.flush_subnormals
        flush_subnormals(xp, ops, ws, dc)
        add_chunk_weight_grads(xp, ops, dgates[: t1 - t0], c.operands, t0, t1, dw_terms, dw, operand_copy)
        input_bwd.add_chunk(t0, t1, dgates[: t1 - t0])
        t1 = t0
    unfold_grads(ops, g, dw, blocks, H, c.x_ones.shape[1] - 1)
    dx = input_bwd.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True), xp.asarray(xp.matrix_transpose(dc), copy=True))


def _backward_sequence(xp, ops: Ops, ws: Workspace, reuse: bool, p: CellParams, c: FastLSTMCache, upstream, carried,
                       g: CellParams, tbptt: int, input_grad: bool, kern, seq, launch=call_now):
    """lstm_backward through the whole-sequence kernel `seq` (_cpu.lstm_bwd_sequence; NumPy; parameters and grads of
    the cache's dtype): the buffers, one call, then the grads into g (the transpose and the unfold as _cpu_glue's
    kernels). upstream: (dy, dc_steps), each (T, B, H) or None; carried: (dh, dc, w_hh_t) as lstm_backward set them
    up. Same returns as lstm_backward."""
    T, H, B = c.tanh_c.shape
    I = c.x_ones.shape[1] - 1
    dev, dt = device_of(c.x), c.x.dtype
    H3, H4 = 3 * H, 4 * H
    dh, dc, w_hh_t = carried
    dy, dc_steps = upstream
    w_ih_t = ws.get(xp, "w_ih_t", (I, H4), dt, dev)  # (I, 4H) W_ih^T, internal gate order
    launch(kern.transpose_rotated, p.w_ih, w_ih_t, H3)
    dw = ops.fill(ws.get(xp, "dw", (H4, c.operands.shape[1]), dt, dev), 0.0)  # (4H, n_cols)
    # stands in for an absent dy, dc_steps or dx: not dh or dc (an aliasing argument keeps numba from vectorising)
    unused = ws.get(xp, "seq_unused", (T, 1, 1), dt, dev)  # (T, 1, 1)
    dy_fm = unused if dy is None else feature_major_copy(xp, ops, ws, "dy_fm_all", dy, dt, dev, launch)  # (T, H, B)
    dcs_fm = unused if dc_steps is None else feature_major_copy(xp, ops, ws, "dcs_fm_all", dc_steps, dt, dev,
                                                                 launch)
    dgates = ws.get(xp, "dgates_step", (H4, B), dt, dev)  # (4H, B) one step's [o | i | f | g]
    dx = cache_array(xp, ws, reuse, "dx", (T, I, B), dt, dev) if input_grad else unused  # (T, I, B)
    cuts = cut_steps(xp, ws, tbptt, T, dev)  # (T,) bool
    launch(seq, dh, dc, dy_fm, dy is not None, dcs_fm, dc_steps is not None, cuts, c.gates, c.tanh_c,
           c.cell_states, c.operands, dgates, w_hh_t, w_ih_t, dw, dx, input_grad, dt.type(flush_threshold(xp, dt)),
           dt.type(1.0))
    launch(kern.unfold_rotated, g.w_ih, g.w_hh, g.b_ih, g.b_hh, dw, H3)
    dx_out = ops.tbh(dx) if input_grad else None  # (T, B, I) view
    dh0, dc0 = (xp.empty((B, H), dtype=dt, device=dev) for _ in range(2))  # (B, H) each, new (the caller keeps them)
    launch(ops.copy, xp.matrix_transpose(dh), dh0)
    launch(ops.copy, xp.matrix_transpose(dc), dc0)
    return dx_out, (dh0, dc0)


def _lstm_backward_cupy(xp, p: CellParams, c: FastLSTMCache, dy, dstate_T, g: CellParams, *, tbptt: int,
                        input_grad: bool, ws: Workspace | None, reuse: bool, dc_steps=None):
    """lstm_backward on CuPy: per step one fused kernel (_cuda.lstm_bwd: dh + dy, dc, the four gate grads) and the
    dh GEMM; per chunk of steps (bounded by the weight-grad terms only: no CPU cache to fit) the weight grads in
    one batched GEMM and the input backward. dy goes feature-major once, so every kernel argument is contiguous."""
    from . import _cuda

    T, H, B = c.tanh_c.shape
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    H4 = 4 * H
    blocks = _lstm_blocks(H)
    dh = state_grad(xp, ops, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dL/dh_t^T, carried backwards
    dc = state_grad(xp, ops, ws, "dc", dstate_T, 1, (H, B), dt, dev)  # (H, B) dL/dc_t^T
    w_hh_t = ws.get(xp, "w_hh_t", (H, H4), dt, dev)  # (H, 4H) W_hh^T, internal gate order
    for dst, src in blocks:
        ops.copy(xp.matrix_transpose(p.w_hh[src, :]), w_hh_t[:, dst])
    n_cols = c.operands.shape[1]  # H+I+1: [W_hh | W_ih | b] columns
    dw = ops.fill(ws.get(xp, "dw", (H4, n_cols), dt, dev), 0.0)  # (4H, n_cols)
    dw_terms, operand_copy, chunk = weight_grad_buffers(xp, ws, (H4, n_cols), T, B, dt, dev)
    dgates_flat, _ = gate_grad_buffer(xp, ws, T, chunk, H4, B, dt, dev, shared=False)
    dgates = xp.reshape(dgates_flat, (chunk, H4, B))  # (chunk, 4H, B) [o | i f g], step t at t - t0
    dy_fm = feature_major_copy(xp, ops, ws, "dy_fm", dy, dt, dev)  # (T, H, B) or None
    dc_fm = feature_major_copy(xp, ops, ws, "dc_fm", dc_steps, dt, dev)  # (T, H, B) or None (variable lengths)
    input_bwd = InputBackward(xp, ops, ws, reuse, p, blocks, c.x_ones, H4, chunk, dw_rows=slice(0, 0),  # dx only
                              dx=input_grad)
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        for t in range(t1 - 1, t0 - 1, -1):
            dgates_t = dgates[t - t0]
            if dc_fm is not None:  # the final c's gradient at each sequence's last step: a plain add, then the kernel
                ops.add(dc, dc_fm[t], out=dc)
            _cuda.lstm_bwd(dh, None if dy_fm is None else dy_fm[t], c.gates[t], c.cell_states[t], c.tanh_c[t], dc,
                           dgates_t)
            ops.matmul(w_hh_t, dgates_t, out=dh)  # dh_{t-1} (H, 4H) @ (4H, B)
            if cut(tbptt, T, t):
                ops.fill(dh, 0.0)
                ops.fill(dc, 0.0)
        add_chunk_weight_grads(xp, ops, dgates[: t1 - t0], c.operands, t0, t1, dw_terms, dw, operand_copy)
        input_bwd.add_chunk(t0, t1, dgates[: t1 - t0])
        t1 = t0
    unfold_grads(ops, g, dw, blocks, H, c.x_ones.shape[1] - 1)
    dx = input_bwd.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True), xp.asarray(xp.matrix_transpose(dc), copy=True))
