"""The GRU's and the LSTM's fast twins with the batch in column blocks over the cores (_cpu_split.py): what a
layer calls.

Where the cell's float32 one-call loops run (NumPy, numba, NumPy's OpenBLAS; the GRU with reset_after), OpenBLAS
has more than one thread and the batch gives each core it would use a block (_cpu_split.blocks), the forward runs
fast/gru.py's (fast/lstm.py's) forward once per block of batch columns, each with its own workspace (so its own
operands, gates and state arrays), and the backward the same for the blocks' backwards: each block's Python on the
calling thread, its compiled calls (passed to the cell's `launch`) on a thread of its own (_cpu_split.run);
elsewhere both are the cell's own, unchanged.

Legend: T steps, B batch, I inputs, H hidden; P blocks, block k the columns [lo_k, hi_k), B_k = hi_k - lo_k.

What a caller gets is what the cell's fast forward returns, but y is a contiguous (T, B, H) array of its own (each
block copies its states into its columns, on its thread), h_T a view of y[T-1] and the LSTM's c_T the blocks' c_T
joined. A column's y, states, dx and state grads go through the same operations as in one call, but the compiled
loops treat the columns of a vector's tail (a width's remainder after its full vectors) in scalar code, where
contraction into fused multiply-adds may differ: a column that is a tail in one layout and not in the other can
differ in its last bits; so can a GEMM's long sums (the LSTM's dx at H 256: OpenBLAS orders its 4H = 1024-long sums
otherwise for a 64-column block than for the 128-column batch). At the benchmark shapes everything else was checked
bit for bit. The weight grads are block 0's added onto g, then each other block's (summed in its own buffers), in
block order. So: the same bits every run for a given P; float32 rounding apart from P = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from . import _common, _cpu, _cpu_split, gru, lstm
from .._cell import CellParams
from ._common import Workspace, cache_array, ops_for, params_of_dtype

FORCED: dict = {}  # {"n": n}: n blocks of near-equal width for any dtype and thread count (fast.forced_batch_blocks)


@dataclass
class BlockedCache:
    """The caches of a blocked forward, one a block (FastGRUCache or FastLSTMCache of its (T, B_k, .) views). Their
    other fields (h, r, z, n, c, o, i, f, ...: (T or T+1, B, H)) read as whole-batch arrays: the blocks' joined
    along the batch, copies (diagnostics, a packed LSTM's c; the backward reads the blocks)."""

    xp: Any
    x: Any  # (T, B, I) the forward's input
    parts: list  # [(lo, hi), ...] the blocks' columns
    blocks: list  # one cache a block

    def __getattr__(self, name):
        if name.startswith("__") or name in ("xp", "x", "parts", "blocks"):
            raise AttributeError(name)
        return self.xp.concat([getattr(c, name) for c in self.blocks], axis=1)


def _parts(cell: str, xp, p: CellParams, x, reset_after: bool) -> list | None:
    """The batch's blocks when the blocked path applies (see the module's doc), else None."""
    if _common.is_cupy(xp) or not reset_after or x.shape[0] < 1:
        return None
    B, H = x.shape[1], p.w_hh.shape[1]
    n = FORCED.get("n")
    if n is not None:  # a comparison's blocks (check.py): NumPy on the CPU, any dtype, B >= n
        numpy = getattr(xp, "__name__", "").endswith("numpy")
        return [(B * k // n, B * (k + 1) // n) for k in range(n)] if numpy and B >= n else None
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    if kern is None or kern.seq(f"{cell}_fwd_seq", x.dtype) is None or kern.seq(f"{cell}_bwd_seq", x.dtype) is None \
            or not params_of_dtype(x.dtype, p):
        return None
    parts = _cpu_split.blocks(B)
    if parts is None or not _cpu.usable(xp, min(hi - lo for lo, hi in parts) * H):
        return None  # a block too narrow for the kernels would run another path (the portable loops)
    return parts


def _blocked(cell: str, fwd, bwd):
    """(forward, backward) of `cell` with the batch in blocks, around its fast forward and backward."""

    def forward(xp, p: CellParams, x, state0, *, ws: Workspace | None = None, reuse: bool = False,
                keep_cache: bool = True, private_cache: bool = False, **opts):
        """The cell's fast forward's contract: x (T, B, I), states (B, H) -> y (T, B, H), states, cache (a
        BlockedCache when blocked; None when keep_cache=False). opts: the GRU's reset_after."""
        parts = _parts(cell, xp, p, x, opts.get("reset_after", True))
        if parts is None:
            return fwd(xp, p, x, state0, ws=ws, reuse=reuse, keep_cache=keep_cache, private_cache=private_cache,
                       **opts)
        ws = Workspace() if ws is None else ws
        T, B, _ = x.shape
        H = p.w_hh.shape[1]
        y = cache_array(xp, ws, reuse, "y_blocks", (T, B, H), x.dtype, device_of(x))  # (T, B, H)
        kern = _cpu.kernels()
        ops = ops_for(xp)
        # a block's y is copied into y, so its storage (operands included) can stay in its workspace whenever the
        # cache may (private_cache: a layer's, kept only until its next forward), saving allocations, page faults
        internal = reuse or private_cache

        def block(k, launch):
            lo, hi = parts[k]
            y_k, s_k, c_k = fwd(xp, p, x[:, lo:hi, :], tuple(s[lo:hi, :] for s in state0), ws=ws.child(k),
                                reuse=internal, keep_cache=keep_cache, launch=launch, **opts)
            if kern is not None:  # (T, H, B_k) states -> y's columns, tiled
                launch(kern.transpose_tbh, xp.permute_dims(y_k, (0, 2, 1)), y[:, lo:hi, :])
            else:  # forced blocks without numba (fast.forced_batch_blocks)
                launch(ops.copy, y_k, y[:, lo:hi, :])
            return s_k, c_k

        res = _cpu_split.run(block, len(parts))
        rest = tuple(xp.concat([r[0][i] for r in res], axis=0) for i in range(1, len(res[0][0])))  # LSTM: c_T
        cache = BlockedCache(xp=xp, x=x, parts=parts, blocks=[r[1] for r in res]) if keep_cache else None
        return y, (y[T - 1, ...],) + rest, cache

    def backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0, input_grad: bool = True,
                 ws: Workspace | None = None, reuse: bool = False, **kw):
        """The cell's fast backward's contract; a BlockedCache's blocks each run it on a thread. kw: the LSTM's
        dc_steps ((T, B, H) or None)."""
        if not isinstance(c, BlockedCache):
            return bwd(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=ws, reuse=reuse, **kw)
        ws = Workspace() if ws is None else ws
        ops = ops_for(xp)
        dev = device_of(c.x)
        grads = [g] + [CellParams(*(ops.fill(ws.child(k).get(xp, f"block_g{i}", a.shape, a.dtype, dev), 0.0)
                                    for i, a in enumerate(g.arrays())))
                       for k in range(1, len(c.parts))]

        def cols(a, lo, hi, axis):  # a block's columns of an optional array
            return None if a is None else (a[lo:hi, ...] if axis == 0 else a[:, lo:hi, ...])

        def block(k, launch):
            lo, hi = c.parts[k]
            ds = None if dstate_T is None else tuple(cols(s, lo, hi, 0) for s in dstate_T)
            return bwd(xp, p, c.blocks[k], cols(dy, lo, hi, 1), ds, grads[k], tbptt=tbptt, input_grad=input_grad,
                       ws=ws.child(k), reuse=True, launch=launch,  # dx is copied out below
                       **{name: cols(v, lo, hi, 1) for name, v in kw.items()})

        res = _cpu_split.run(block, len(c.parts))
        for g_k in grads[1:]:  # block order: the same sum every run
            for a, b in zip(g.arrays(), g_k.arrays()):
                ops.add(a, b, a)
        dx = xp.concat([r[0] for r in res], axis=1) if input_grad else None  # (T, B, I)
        return dx, tuple(xp.concat([r[1][i] for r in res], axis=0) for i in range(len(res[0][1])))  # (B, H) each

    return forward, backward


gru_forward, gru_backward = _blocked("gru", gru.gru_forward, gru.gru_backward)
lstm_forward, lstm_backward = _blocked("lstm", lstm.lstm_forward, lstm.lstm_backward)
