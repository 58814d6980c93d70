"""What the fast twins of the cells share: the `out=` helper (Ops), per-slot workspaces, the recurrent GEMM's
operand [h; x; 1] and its weight folding, chunked weight grads and the chunked input backward.


Legend: T time steps, B batch, I input features, H hidden units; GRU gate rows r, z, n (torch's order).

What makes it fast, while staying written against an array namespace `xp` (this module never imports numpy or
cupy; `_cuda.py` is the only math module that may import cupy):
  * workspaces: every temporary (gate pre-activations, per-step GEMM outputs, backward gate grads) lives in a
    `Workspace` owned by one (layer, direction) slot, allocated once per shape and reused by every later call;
    with `reuse=True` (the Forecaster's training step) the cache arrays are reused too;
  * `out=` in the time loop through `Ops`, a small namespace-aware helper: NumPy and CuPy ufuncs write into the
    workspace / cache slices directly (the cache slice IS the output buffer, no copy); the wrapper dispatches
    here only for NumPy and CuPy: other namespaces run the reference cells;
  * a feature-major layout chosen for the recurrent GEMM and for contiguous gate blocks (see the GRU section);
  * the input folded into the recurrent GEMM: step t's operand is [h; x[t]; 1], h the state before the step (all
    of them stored as one (T+1, H+I+1, B) array whose rows :H the forward fills with the states), its weights
    [W_hh | W_ih | b], so one GEMM per step gives whole pre-activations, biases included: no input projection, no
    per-step add (LSTM, RNN: 5 % of the step at H 64; the GRU's n rows, whose input part is not multiplied by r,
    keep a separate projection, and its CuPy branch keeps the older layout its fused kernels are written for);
    the backward's weight-grad GEMM against those operands gives W_hh, W_ih and bias grads at once;
  * the r and z gates computed jointly on one (B, 2H) slice; sigmoid(a) = 0.5 tanh(a/2) + 0.5 with the /2
    folded into the r, z weight columns (a power-of-two scale: exact), so a sigmoid is 3 in-place ops;
  * backward: the step-independent factors z(1-z)(h_{t-1}-n), (1-z)(1-n^2), r(1-r)·hn are computed for a
    chunk of steps at once (few calls, cache-sized chunks; h_{t-1}-n is recomputed there, not cached: at
    H 128 the cache outgrows the CPU caches, so each cached array costs a round trip to memory: 1-1.5 % of
    the step); the per-step work is 6 elementwise ops and one GEMM (no broadcasting op: slower at small H·B);
    gate grads are written straight into one (T, B, 4H) buffer laid out [n_h | r | z | n_i] so that
    [n_h, r, z] is the recurrent GEMM's operand and [r, z, n_i] is dgi in torch's order, both without copies;
  * parameter gradients: one batched GEMM call per weight (per chunk of steps for the recurrent one, summed
    with in-place adds, no temporaries), bias grads from the ones rows / column;
  * what input projection is left (the GRU's n rows; all rows on CuPy) is one batched GEMM over all T while
    small (<= GI_FULL_MAX_ELEMS), else computed a cache-sized chunk of steps ahead of its use (its (T, G, B)
    result then never round-trips to memory);
  * per-call overheads trimmed: NumPy's own ufuncs/matmul (not the array-api-compat wrappers), cached 0-d
    constants instead of Python floats, per-step view tuples built once per reused workspace.
LSTM and RNN (below) use the same techniques; see their sections.
No host syncs in the time loop: nothing reads a device value back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from array_api_compat import device as device_of

from .._cell import CellParams

_OUT_NAMESPACES = ("array_api_compat.numpy", "array_api_compat.cupy", "numpy", "cupy")
CHUNK_ELEMS = 1 << 16  # elements per chunk of the backward's factors and gate grads (~256 KiB per float32 array)
DW_CHUNK_ELEMS = 1 << 21  # bound on a chunk's per-step weight-grad terms
GI_CHUNK_ELEMS = 1 << 16  # forward: the input projection is computed this many elements (~256 KiB) ahead
XB_COPY_MIN = 4  # dW_ih: the input is copied to a contiguous (T, B, I+1) operand from I+1 >= this (I 8: 1.5x)
GI_FULL_MAX_ELEMS = 1 << 20  # ... unless all T steps' projection fits in this many elements (4 MiB float32)
# Below this batch size the per-step weight-grad GEMM dA_t (G, B) @ h_t^T is faster with h_t^T copied to a
# contiguous (B, K) operand first (OpenBLAS, small K = B: ~20 % on the GEMM at B 64; no gain at B >= 128).
DW_COPY_MAX_B = 127


def supports_out(xp) -> bool:
    """True for namespaces whose elementwise functions and matmul accept `out=` (NumPy, CuPy)."""
    return getattr(xp, "__name__", "") in _OUT_NAMESPACES


def is_cupy(xp) -> bool:
    return "cupy" in getattr(xp, "__name__", "")


class Ops:
    """mul/add/sub/tanh/maximum/sign/matmul(a, b, out=o) writing into `o` with the namespace's own `out=`
    (NumPy and CuPy only: `fast_cell_for` sends every other namespace to the reference cells).
    Where the namespace is array-api-compat's wrapper of NumPy or CuPy, the functions are taken from the wrapped
    library's module itself (already imported by the wrapper; looked up in sys.modules, never imported here):
    the wrapper's matmul/sign add a Python call layer (~0.5-1 us) per call, paid a few hundred times per step."""

    def __init__(self, xp):
        self.xp = xp
        self._consts: dict = {}
        if not supports_out(xp):
            raise ValueError(f"the fast path needs a namespace with out= (NumPy, CuPy), got {xp!r}")
        lib = _wrapped_module(xp)
        pick = (lambda n: getattr(lib, n, None) or getattr(xp, n)) if lib is not None else \
            (lambda n: getattr(xp, n))
        self.mul, self.add, self.sub, self.tanh = pick("multiply"), pick("add"), pick("subtract"), pick("tanh")
        self.maximum, self.sign, self.matmul = pick("maximum"), pick("sign"), pick("matmul")

    def const(self, value: float, dtype, device):
        """A cached 0-d array: NumPy's ufuncs take it ~0.3 us faster than a Python float (no scalar
        conversion per call); same values (a Python float is cast to the array's dtype anyway)."""
        key = (value, dtype, device)
        try:
            c = self._consts.get(key)
        except TypeError:  # an unhashable device object
            key = (value, str(dtype), str(device))
            c = self._consts.get(key)
        if c is None:
            c = self._consts[key] = self.xp.asarray(value, dtype=dtype, device=device)
        return c

    def copy(self, a, out):
        out[...] = a
        return out

    def fill(self, out, value: float):
        out[...] = value
        return out


def _wrapped_module(xp):
    """The library module that an array-api-compat namespace wraps (numpy / cupy), if it is loaded; else None."""
    import sys

    name = getattr(xp, "__name__", "")
    if name.startswith("array_api_compat."):
        return sys.modules.get(name[len("array_api_compat."):])
    return None


_OPS: dict = {}


def ops_for(xp) -> Ops:
    o = _OPS.get(id(xp))
    if o is None:
        o = _OPS[id(xp)] = Ops(xp)
    return o


def chunked_steps(xp, o: Ops, w_in, xT, gi_buf, parts, *arrays, cache=None):
    """Per step: the input projection's row blocks `parts` [(start, stop), ...] of w_in @ x_t^T, then step t's
    slices of `arrays`. The projection is computed a chunk of steps at a time (one batched GEMM per chunk, into
    the small buffer gib), just before those steps use it: still in cache, never a (T, G, B) array.
    gi_buf = gi_buffer(...); cache=(ws, key): key identifies `arrays`' buffers; then the step views are built
    once (Workspace.views)."""
    gib, gib_id = gi_buf
    T = xT.shape[0]
    chunk = gib.shape[0]
    if chunk == T and cache is not None:  # one chunk: the per-step views of a reused workspace are cached
        ws, key = cache
        g = o.matmul(w_in, xT, out=gib)
        return ws.views("fwd", key + (gib_id,), lambda: list(rows(o, T, *(g[:, a:b] for a, b in parts), *arrays)))
    return chunk_gen(o, w_in, xT, gib, parts, arrays)


def chunk_gen(o: Ops, w_in, xT, gib, parts, arrays):
    T = xT.shape[0]
    chunk = gib.shape[0]
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        g = o.matmul(w_in, xT[t0:t1], out=gib[: t1 - t0])
        yield from rows(o, t1 - t0, *(g[:, a:b] for a, b in parts), *(a[t0:t1] for a in arrays))


def gi_buffer(xp, ws: Workspace, T: int, G: int, G4: int, B: int, dt, dev):
    """(buffer, id of the workspace array behind it). All T steps at once while the projection is small (one
    GEMM call); chunks of ~GI_CHUNK_ELEMS otherwise (H 128, T 100, B 128: 6 % of the whole step saved; H <= 70:
    2 % lost by chunking)."""
    if T * G * B <= GI_FULL_MAX_ELEMS:  # in the buffer of the backward's gate grads (dead until then)
        base = ws.get(xp, "gates", (T * G4 * B,), dt, dev)
        return xp.reshape(base[: T * G * B], (T, G, B)), id(base)
    base = ws.get(xp, "gi", (max(1, min(T, GI_CHUNK_ELEMS // (G * B))), G, B), dt, dev)
    return base, id(base)


def dg_buffer(xp, ws: Workspace, T: int, Tb: int, G4: int, B: int, dt, dev, *, shared: bool):
    """(the backward's gate-grad storage: Tb steps of G4 rows, flat; id of the workspace array behind it).
    shared: inside the buffer "gates" (T*G4*B) that the GRU forward's full-T input projection used (gi_buffer:
    memory just touched, and dead by now), else a buffer of its own."""
    base = ws.get(xp, "gates", (T * G4 * B,), dt, dev) if shared else ws.get(xp, "dg", (Tb * G4 * B,), dt, dev)
    return base[: Tb * G4 * B], id(base)


def rows(o: Ops, T: int, *arrays):
    """Step t's slices of several (T, ...) arrays (NumPy and CuPy arrays iterate over their first axis)."""
    return zip(*arrays)


class Workspace:
    """Named buffers of one (layer, direction) slot: allocated on first use and whenever a shape, dtype or device
    changes, reused otherwise. `nbytes` is what it holds between steps."""

    def __init__(self):
        self.bufs: dict = {}
        self._meta: dict = {}
        self._views: dict = {}

    def get(self, xp, name: str, shape: tuple, dtype, device):
        e = self._meta.get(name)  # (shape, dtype, device) as asked when allocated: no device query per call
        if e is None or e[0] != shape or e[1] != dtype or e[2] != device:
            self.bufs[name] = xp.empty(shape, dtype=dtype, device=device)
            self._meta[name] = (tuple(shape), dtype, device)
        return self.bufs[name]

    def views(self, name: str, key: tuple, build):
        """A list of per-step view tuples, built once per (buffers, shape) `key` and reused by every later call
        (slicing costs ~0.1-0.2 us a view, ~10 views a step). Only for buffers owned by this workspace: the
        cached views keep them alive, so their ids in `key` stay unique."""
        e = self._views.get(name)
        if e is None or e[0] != key:
            e = self._views[name] = (key, build())
        return e[1]

    def nbytes(self) -> int:
        return sum(int(a.size) * a.dtype.itemsize for a in self.bufs.values())



def cache_buf(xp, ws: Workspace, reuse: bool, name, shape, dt, dev):
    return ws.get(xp, name, shape, dt, dev) if reuse else xp.empty(shape, dtype=dt, device=dev)


def tbh(xp, a):
    """(T, F, B) storage -> (T, B, F) view."""
    return xp.permute_dims(a, (0, 2, 1))


# ---- shared by LSTM and RNN -----------------------------------------------------------------------------------
def dw_operand(xp, o: Ops, Z, t0: int, t1: int, zb):
    """Z[t0:t1] (m, K, B) as the (m, B, K) right operand of the weight-grad GEMM: a transposed view, or a
    contiguous copy in zb (see DW_COPY_MAX_B)."""
    v = xp.permute_dims(Z[t0:t1], (0, 2, 1))
    return v if zb is None else o.copy(v, zb[: t1 - t0])


def operand(xp, o: Ops, ws: Workspace, reuse: bool, x, h0, H: int, dt, dev):
    """(T+1, H+I+1, B) storage of the recurrent GEMM's operands: hT[t] = [h; x[t]; 1] is step t's (0-based), h the
    state after t steps (hT[0, :H] = h0^T; the forward writes step t's new state into hT[t+1, :H]); hT[:T, H:] =
    [x[t]; 1] is xT; rows H: of hT[T] are never read."""
    T, B, I = x.shape
    u = cache_buf(xp, ws, reuse, "hT", (T + 1, H + I + 1, B), dt, dev)
    o.copy(xp.matrix_transpose(h0), u[0, :H, :])
    o.copy(xp.permute_dims(x, (0, 2, 1)), u[:T, H:H + I, :])
    o.fill(u[T, H:H + I, :], 0.0)  # no input after the last step (kept defined)
    o.fill(u[:, H + I, :], 1.0)
    return u


def fold_weights(o: Ops, w, p: CellParams, blocks, H: int, I: int):
    """Fill rows of w (G, H+I+1) with [W_hh | W_ih | b_ih + b_hh]: `blocks` lists (row slice of w, torch rows)."""
    for dst, src in blocks:
        o.copy(p.w_hh[src, :], w[dst, :H])
        o.copy(p.w_ih[src, :], w[dst, H:H + I])
        o.add(p.b_ih[src], p.b_hh[src], out=w[dst, H + I])
    return w


def unfold_grads(o: Ops, g: CellParams, dw, blocks, H: int, I: int):
    """The inverse of fold_weights for gradients: dw (G, H+I+1) rows -> g.w_hh, g.w_ih, g.b_ih, g.b_hh (the two
    biases add to the same pre-activation: the same grad)."""
    for dst, src in blocks:
        o.add(g.w_hh[src, :], dw[dst, :H], out=g.w_hh[src, :])
        o.add(g.w_ih[src, :], dw[dst, H:H + I], out=g.w_ih[src, :])
        o.add(g.b_ih[src], dw[dst, H + I], out=g.b_ih[src])
        o.add(g.b_hh[src], dw[dst, H + I], out=g.b_hh[src])


def input_cache(xp, o: Ops, ws: Workspace, reuse: bool, x, dt, dev):
    """(T, I+1, B) x_t^T with a ones row (the biases' column of the input weights)."""
    T, B, I = x.shape
    xT = cache_buf(xp, ws, reuse, "xT", (T, I + 1, B), dt, dev)
    o.copy(xp.permute_dims(x, (0, 2, 1)), xT[:, :I, :])
    o.fill(xT[:, I, :], 1.0)
    return xT


def chunk_dw(xp, o: Ops, dAc, Z, t0: int, t1: int, dwt, dw, zb=None):
    """dw += sum_{t0 <= t < t1} dA_t Z[t]^T, dAc = (dA_t0 .. dA_t1-1): the chunk's per-step GEMMs in one
    batched call, then m adds into dw (no temporary)."""
    m = t1 - t0
    o.matmul(dAc, dw_operand(xp, o, Z, t0, t1, zb), out=dwt[:m])
    for j in range(m):
        o.add(dw, dwt[j], out=dw)


def dw_buffers(xp, ws: Workspace, shape, T: int, B: int, dt, dev):
    """(dwt: per-step dW terms of one chunk, zb: contiguous h^T operand or None, chunk length)."""
    G, K = shape
    chunk = max(1, min(T, DW_CHUNK_ELEMS // (G * K)))
    zb = ws.get(xp, "zb", (chunk, B, K), dt, dev) if B <= DW_COPY_MAX_B else None
    return ws.get(xp, "dwt", (chunk, G, K), dt, dev), zb, chunk


class InputBackward:
    """Backward of the input projection, a chunk of steps at a time, called right after the chunk's gate grads
    are written (still in cache; the backward keeps only one chunk of them): dx = W_ih^T dA_t (internal gate
    order), and dW_ih, db_ih (and db_hh: the same grad, both biases add to the pre-activation) from the
    ones-row input, whose chunk is copied to a contiguous (m, B, I+1) operand first when I+1 >= XB_COPY_MIN
    (~1.5x faster skinny GEMMs). `blocks` maps internal gate rows back to torch's. The weight grads may cover
    only some rows, dA[:, dw_rows], mapped back by `dw_blocks`, or none (an empty dw_rows): with x folded into
    the recurrent GEMM's operand, its weight grads already hold those rows' input weights and biases.
    dx=False: no dx (nobody needs the grad of the model's input in training; torch skips it too), finish -> None."""

    def __init__(self, xp, o: Ops, ws: Workspace, reuse: bool, p: CellParams, blocks, xT, G: int, chunk: int, *,
                 dw_rows: slice | None = None, dw_blocks=None, dx: bool = True):
        T, I1, B = xT.shape
        I = I1 - 1
        dt, dev = xT.dtype, device_of(xT)
        self.xp, self.o, self.xT, self.I = xp, o, xT, I
        self.dw_rows, self.dw_blocks = dw_rows, blocks if dw_blocks is None else dw_blocks
        Gw = G if dw_rows is None else dw_rows.stop - dw_rows.start  # rows with weight grads
        self.dxT = None
        if dx:
            self.dxT = cache_buf(xp, ws, reuse, "dxT", (T, I, B), dt, dev)
            self.wi_t = ws.get(xp, "w_ih_t", (I, G), dt, dev)  # W_ih^T, internal gate order
            for dst, src in blocks:
                o.copy(xp.matrix_transpose(p.w_ih[src, :]), self.wi_t[:, dst])
        self.weights = Gw > 0
        if self.weights:
            self.acc = o.fill(ws.get(xp, "dwi_acc", (Gw, I + 1), dt, dev), 0.0)  # (Gw, I+1): W | b
            self.dwi = ws.get(xp, "dwi", (chunk, Gw, I + 1), dt, dev)
            self.xb = ws.get(xp, "xb", (chunk, B, I + 1), dt, dev) if I + 1 >= XB_COPY_MIN else None

    def chunk(self, t0: int, t1: int, dA) -> None:
        """dA (t1-t0, G, B): the gate grads of steps t0..t1-1."""
        xp, o, m = self.xp, self.o, t1 - t0
        if self.weights:
            xv = xp.permute_dims(self.xT[t0:t1], (0, 2, 1))  # (m, B, I+1)
            if self.xb is not None:
                xv = o.copy(xv, self.xb[:m])
            dAw = dA if self.dw_rows is None else dA[:, self.dw_rows, :]
            o.add(self.acc, xp.sum(o.matmul(dAw, xv, out=self.dwi[:m]), axis=0), out=self.acc)
        if self.dxT is not None:
            o.matmul(self.wi_t, dA, out=self.dxT[t0:t1])  # (I, G) @ (m, G, B)

    def finish(self, g: CellParams, *, b_hh: bool = True):
        """Accumulate into g; return dx (T, B, I) (a view), or None when built with dx=False."""
        o, I = self.o, self.I
        for dst, src in self.dw_blocks if self.weights else ():
            acc = self.acc
            o.add(g.w_ih[src, :], acc[dst, :I], out=g.w_ih[src, :])
            o.add(g.b_ih[src], acc[dst, I], out=g.b_ih[src])
            if b_hh:
                o.add(g.b_hh[src], acc[dst, I], out=g.b_hh[src])
        return None if self.dxT is None else self.xp.permute_dims(self.dxT, (0, 2, 1))


def state_grad(xp, o: Ops, ws: Workspace, name: str, dstate_T, k: int, shape, dt, dev):
    """(H, B) workspace holding dstate_T[k]^T (zeros when absent)."""
    d = ws.get(xp, name, shape, dt, dev)
    if dstate_T is None or dstate_T[k] is None:
        return o.fill(d, 0.0)
    return o.copy(xp.matrix_transpose(dstate_T[k]), d)


