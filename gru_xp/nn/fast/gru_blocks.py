"""The GRU's fast twin with the batch in column blocks over the cores (_cpu_split.py): what a layer calls.

Where the float32 one-call loops run (NumPy, numba, NumPy's OpenBLAS; reset_after) and OpenBLAS has more than one
thread, gru_forward runs fast/gru.py's forward once per block of batch columns, each block on a thread of its own
with its own workspace (so its own operands, gates and candidate arrays), and gru_backward the same for the blocks'
backwards; elsewhere both are fast/gru.py's, unchanged.

Legend: T steps, B batch, I inputs, H hidden; P blocks, block k the columns [lo_k, hi_k), B_k = hi_k - lo_k.

What a caller gets is what fast/gru.py returns, but y is a contiguous (T, B, H) array of its own (each block copies
its states into its columns, on its thread) and h_T a view of y[T-1]. A column's y, h_T, dx and dh_0 go through the
same operations as in one call, but the compiled loops treat the columns of a vector's tail (a width's remainder
after its full vectors) in scalar code, where contraction into fused multiply-adds may differ: a column that is a
tail in one layout and not in the other can differ in its last bits (bit for bit at the benchmark shapes, whose
blocks are multiples of 64 wide). The weight grads are block 0's added onto g, then each other block's (summed in
its own buffers), in block order. So: the same bits every run for a given P; float32 rounding apart from P = 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from . import _common, _cpu, _cpu_split, gru
from .._cell import CellParams
from ._common import Workspace, cache_array, ops_for, params_of_dtype


@dataclass
class BlockedGRUCache:
    """The caches of a blocked forward, one FastGRUCache per block (its (T, B_k, .) views). The GRUCache fields
    (x, h, r, z, n, hn) read as whole-batch arrays: concatenated copies (diagnostics; the backward reads the blocks)."""

    xp: Any
    x: Any  # (T, B, I) the forward's input
    parts: list  # [(lo, hi), ...] the blocks' columns
    blocks: list  # [FastGRUCache, ...] one a block
    reset_after: bool = True

    def _whole(self, name):
        return self.xp.concat([getattr(c, name) for c in self.blocks], axis=1)

    h = property(lambda self: self._whole("h"))  # (T+1, B, H)
    r = property(lambda self: self._whole("r"))  # (T, B, H)
    z = property(lambda self: self._whole("z"))  # (T, B, H)
    n = property(lambda self: self._whole("n"))  # (T, B, H)
    hn = property(lambda self: self._whole("hn"))  # (T, B, H)


def _parts(xp, p: CellParams, x, reset_after: bool) -> list | None:
    """The batch's blocks when the blocked path applies (see the module's doc), else None."""
    if _common.is_cupy(xp) or not reset_after or x.shape[0] < 1:
        return None
    B, H = x.shape[1], p.w_hh.shape[1]
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    if kern is None or kern.seq("gru_fwd_seq", x.dtype) is None or kern.seq("gru_bwd_seq", x.dtype) is None \
            or not params_of_dtype(x.dtype, p):
        return None
    parts = _cpu_split.blocks(B)
    if parts is None or not _cpu.usable(xp, min(hi - lo for lo, hi in parts) * H):
        return None  # a block too narrow for the kernels would run another path (the portable loops)
    return parts


def gru_forward(xp, p: CellParams, x, state0, *, reset_after: bool = True, ws: Workspace | None = None,
                reuse: bool = False, keep_cache: bool = True, private_cache: bool = False):
    """fast/gru.gru_forward's contract: x (T, B, I), (h0 (B, H),) -> y (T, B, H), (h_T,), cache (a BlockedGRUCache
    when blocked; None when keep_cache=False)."""
    parts = _parts(xp, p, x, reset_after)
    if parts is None:
        return gru.gru_forward(xp, p, x, state0, reset_after=reset_after, ws=ws, reuse=reuse, keep_cache=keep_cache,
                               private_cache=private_cache)
    ws = Workspace() if ws is None else ws
    T, B, _ = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    y = cache_array(xp, ws, reuse, "y_blocks", (T, B, H), x.dtype, device_of(x))  # (T, B, H)
    transpose = _cpu.kernels().transpose_tbh
    # a block's y is copied into y, so its storage (operands included) can stay in its workspace whenever the cache
    # may (private_cache: a layer's, kept only until its next forward), saving the allocation and page faults
    internal = reuse or private_cache

    def block(k):
        lo, hi = parts[k]
        y_k, _, c_k = gru.gru_forward(xp, p, x[:, lo:hi, :], (h0[lo:hi, :],), reset_after=True, ws=ws.child(k),
                                      reuse=internal, keep_cache=keep_cache)
        transpose(xp.permute_dims(y_k, (0, 2, 1)), y[:, lo:hi, :])  # (T, H, B_k) states -> y's columns
        return c_k

    caches = _cpu_split.run(block, len(parts))
    cache = BlockedGRUCache(xp=xp, x=x, parts=parts, blocks=caches) if keep_cache else None
    return y, (y[T - 1, ...],), cache


def gru_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0, input_grad: bool = True,
                 ws: Workspace | None = None, reuse: bool = False):
    """fast/gru.gru_backward's contract; a BlockedGRUCache's blocks each run fast/gru.gru_backward on a thread."""
    if not isinstance(c, BlockedGRUCache):
        return gru.gru_backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=ws, reuse=reuse)
    ws = Workspace() if ws is None else ws
    ops = ops_for(xp)
    dh_T = None if dstate_T is None else dstate_T[0]  # (B, H) or None
    dev = device_of(c.x)
    grads = [g] + [CellParams(*(ops.fill(ws.child(k).get(xp, f"block_g{i}", a.shape, a.dtype, dev), 0.0)
                                for i, a in enumerate((g.w_ih, g.w_hh, g.b_ih, g.b_hh))))
                   for k in range(1, len(c.parts))]

    def block(k):
        lo, hi = c.parts[k]
        return gru.gru_backward(xp, p, c.blocks[k], None if dy is None else dy[:, lo:hi, :],
                                (None if dh_T is None else dh_T[lo:hi, :],), grads[k], tbptt=tbptt,
                                input_grad=input_grad, ws=ws.child(k), reuse=True)  # dx is copied out below

    res = _cpu_split.run(block, len(c.parts))
    for g_k in grads[1:]:  # block order: the same sum every run
        for a, b in zip((g.w_ih, g.w_hh, g.b_ih, g.b_hh), (g_k.w_ih, g_k.w_hh, g_k.b_ih, g_k.b_hh)):
            ops.add(a, b, a)
    dx = xp.concat([r[0] for r in res], axis=1) if input_grad else None  # (T, B, I)
    return dx, (xp.concat([r[1][0] for r in res], axis=0),)  # (B, H) dh_0
