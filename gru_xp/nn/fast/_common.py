"""What the fast twins of the cells share: the `out=` helper (Ops), per-slot workspaces, the recurrent GEMM's
operands [h; x; 1] and its weight folding, chunked weight grads and the chunked input backward.

Legend: T steps, B batch, I inputs, H hidden, G gate rows (3H GRU, 4H LSTM, H RNN); arrays are feature-major.

Written against an array namespace `xp` (this module never imports numpy or cupy; `_cuda.py` is the only one that
may import cupy). The techniques (measurements and what was tried: benchmarks/NOTES.md):
  * workspaces: every temporary lives in a `Workspace` of one (layer, direction) slot, allocated once per shape;
    with `reuse=True` (the Forecaster's training step) the cache arrays live there too;
  * `out=` through `Ops`: ufuncs write into workspace / cache slices directly (NumPy and CuPy only);
  * feature-major layout: step t's state is (H, B) and its gates (G, B), so every gate is a contiguous block;
  * the input folded into the recurrent GEMM: step t's operand is [h; x[t]; 1], its weights [W_hh | W_ih | b],
    so one GEMM per step gives whole pre-activations, and one GEMM per chunk all weight and bias grads;
  * sigmoid(a) = 0.5 tanh(a/2) + 0.5 with the /2 folded into the weights (a power of two: exact);
  * backward in cache-sized chunks of steps: step-independent factors for the whole chunk in a few calls, then
    the per-step loop, then the chunk's weight grads and input backward while its gate grads are in cache;
  * an input projection that is not folded (the GRU's n rows; all rows on CuPy): one GEMM over all T while small,
    else a cache-sized chunk of steps ahead of its use;
  * per-call overheads trimmed: the wrapped library's own ufuncs, cached 0-d constants, per-step views built once.
No host syncs in the time loop: nothing reads a device value back.

The tunable constants below are read through this module at call time (`_common.CHUNK_ELEMS`), so a test can
monkeypatch them, and `is_cupy`, in one place.
"""
from __future__ import annotations

import itertools

from array_api_compat import device as device_of

from .._cell import CellParams, cut
from . import _cpu

_OUT_NAMESPACES = ("array_api_compat.numpy", "array_api_compat.cupy", "numpy", "cupy")
CHUNK_ELEMS = 1 << 16  # elements per chunk of the backward's factors and gate grads (~256 KiB per float32 array)
DW_CHUNK_ELEMS = 1 << 21  # bound on a chunk's per-step weight-grad terms
GI_CHUNK_ELEMS = 1 << 16  # forward: the input projection is computed this many elements (~256 KiB) ahead
GI_FULL_MAX_ELEMS = 1 << 20  # ... unless all T steps' projection fits in this many elements (4 MiB float32)
XB_COPY_MIN = 4  # input weight grads: the input is copied to a contiguous (T, B, I+1) operand from I+1 >= this
DW_COPY_MAX_B = 127  # up to this batch size the weight-grad GEMM's operands^T are copied contiguous first


def call_now(f, *args):
    """A fast forward's or backward's `launch` by default: f(*args), now. fast/blocks.py passes one that records the
    call for its block's thread instead (_cpu_split.run), so every compiled call that fills an output goes through
    launch, and nothing after it in that function reads what the call writes."""
    return f(*args)


def supports_out(xp) -> bool:
    """True for namespaces whose elementwise functions and matmul accept `out=` (NumPy, CuPy)."""
    return getattr(xp, "__name__", "") in _OUT_NAMESPACES


def is_cupy(xp) -> bool:
    return "cupy" in getattr(xp, "__name__", "")


class Ops:
    """mul/add/sub/tanh/maximum/sign/matmul(a, b, out=buf) writing into `buf` with the namespace's own `out=`
    (NumPy and CuPy only: `fast_cell_for` sends every other namespace to the reference cells).
    For array-api-compat's wrapper of NumPy or CuPy, the functions come from the wrapped library's module (looked
    up in sys.modules, never imported here): the wrapper adds a Python call layer to every call."""

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
        self.abs, self.greater_equal = pick("abs"), pick("greater_equal")
        # (T, F, B) -> (T, B, F) view: the array's own mT where it has one (NumPy 2: ~0.1 us against ~4 us through
        # the wrapper's permute_dims; ~5 such views a layer call)
        arr_t = getattr(lib if lib is not None else xp, "ndarray", None)
        self.tbh = (lambda a: a.mT) if arr_t is not None and hasattr(arr_t, "mT") else \
            (lambda a: xp.permute_dims(a, (0, 2, 1)))

    def const(self, value: float, dtype, device):
        """A cached 0-d array: a Python float costs NumPy a scalar conversion per ufunc call; same values (a
        Python float is cast to the array's dtype anyway)."""
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
    ops = _OPS.get(id(xp))
    if ops is None:
        ops = _OPS[id(xp)] = Ops(xp)
    return ops


class Workspace:
    """Named buffers of one (layer, direction) slot: allocated on first use and whenever a shape, dtype or device
    changes, reused otherwise. `nbytes` is what it holds between steps."""

    def __init__(self):
        self.bufs: dict = {}
        self._meta: dict = {}
        self._views: dict = {}
        self.children: dict = {}  # k -> Workspace of part k (a batch block: fast/blocks.py)

    def get(self, xp, name: str, shape: tuple, dtype, device):
        e = self._meta.get(name)  # (shape, dtype, device) as asked when allocated: no device query per call
        if e is None or e[0] != shape or e[1] != dtype or e[2] != device:
            self.bufs[name] = xp.empty(shape, dtype=dtype, device=device)
            self._meta[name] = (tuple(shape), dtype, device)
        return self.bufs[name]

    def views(self, name: str, key: tuple, build):
        """A list of per-step view tuples, built once per (buffers, shape) `key` and reused by every later call
        (slicing costs a Python call per view, ~10 views a step). Only for buffers owned by this workspace: the
        cached views keep them alive, so their ids in `key` stay unique. Also any value that depends on `key` only
        (the tbptt cut mask of (tbptt, T, device)), never written by its users."""
        e = self._views.get(name)
        if e is None or e[0] != key:
            e = self._views[name] = (key, build())
        return e[1]

    def child(self, k: int) -> Workspace:
        """The workspace of part k of this slot's work (a batch block), kept here for the next call."""
        ws = self.children.get(k)
        if ws is None:
            ws = self.children[k] = Workspace()
        return ws

    def nbytes(self) -> int:
        return (sum(int(a.size) * a.dtype.itemsize for a in self.bufs.values())
                + sum(ws.nbytes() for ws in self.children.values()))


def cache_array(xp, ws: Workspace, reuse: bool, name, shape, dt, dev):
    """A cache array: in the workspace when reused, else a fresh one (the caller may keep the cache)."""
    return ws.get(xp, name, shape, dt, dev) if reuse else xp.empty(shape, dtype=dt, device=dev)


class PerStep:
    """Stands in for a (T, ...) cache array when a forward keeps no cache (no gradients): `period` (...) buffers,
    step t's at t % period (period 1: one buffer that every step writes and the same step reads; period 2: the
    state before and after a step in different buffers, so that no kernel reads and writes one array: numba does not
    vectorise such a loop). Indexed like the array it replaces: [t] is step t's buffer; [t0:t1, ...] another PerStep
    (of the view the other indices select, counted from t0); iterating gives each step's buffer in turn."""

    def __init__(self, bufs, length: int, offset: int = 0):
        self.bufs, self.length, self.offset = bufs, length, offset  # bufs: a sequence of `period` (...) arrays

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        n = len(self.bufs)
        if n == 1:
            return itertools.repeat(self.bufs[0], self.length)
        return (self.bufs[(self.offset + k) % n] for k in range(self.length))

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        views = [b[key[1:]] for b in self.bufs] if len(key) > 1 else self.bufs
        if isinstance(key[0], slice):
            start, _, _ = key[0].indices(self.length)
            return PerStep(views, len(range(*key[0].indices(self.length))), self.offset + start)
        return views[(self.offset + key[0]) % len(views)]


def step_storage(xp, ws: Workspace, reuse: bool, keep_cache: bool, name, shape, dt, dev, *, output: bool = False,
                 period: int = 1):
    """The array behind step_array: the (T, ...) cache array (cache_array) when the forward keeps its cache, else
    (period, ...) buffers, step t's at t % period: from the workspace, or fresh (output=True and not reuse) when the
    caller returns one (a final state). The whole-sequence kernels (_cpu.py) take it as it is."""
    if keep_cache:
        return cache_array(xp, ws, reuse, name, shape, dt, dev)
    step = (period,) + tuple(shape[1:])
    return cache_array(xp, ws, reuse, name + "_steps", step, dt, dev) if output else \
        ws.get(xp, name + "_steps", step, dt, dev)


def step_array(xp, ws: Workspace, reuse: bool, keep_cache: bool, name, shape, dt, dev, *, output: bool = False,
               period: int = 1):
    """A (T, ...) cache array (cache_array) when the forward keeps its cache, else a PerStep over `period` (...)
    buffers (step_storage's)."""
    a = step_storage(xp, ws, reuse, keep_cache, name, shape, dt, dev, output=output, period=period)
    return a if keep_cache else PerStep([a[k] for k in range(period)], shape[0])


def flush_threshold(xp, dt) -> float:
    """smallest normal / eps (float32 ~9.9e-32, float64 ~1.0e-292): a carried grad at least this large times any
    factor >= eps stays a normal number."""
    fi = xp.finfo(dt)
    return float(fi.smallest_normal) / float(fi.eps)


def flush_subnormals(xp, ops: Ops, ws: Workspace, a):
    """a[|a| < flush_threshold] = 0, in place. The backward's carried grads (dh, dc) decay geometrically over long
    sequences; once they, or the gate grads they are multiplied into, are subnormal, every op on them runs through
    the CPU's slow path (~20x on the Intel Xeon here: a GRU training step at T 400, H 128 took 42x the T 100 one,
    against ~4x). Flushing only the subnormals themselves (what a CPU's flush-to-zero mode does) still left it at 20x:
    the products of a barely normal dh are subnormal. A grad below the threshold adds nothing a float32 (float64)
    sum of realistic gradients can hold. The portable loops call this once per backward chunk; the fused CPU
    kernels do it per step."""
    dt, dev = a.dtype, device_of(a)
    tiny = ops.const(flush_threshold(xp, dt), dt, dev)
    mag = ops.abs(a, out=ws.get(xp, "flush_mag", tuple(a.shape), dt, dev))  # (...) |a|
    keep = ops.greater_equal(mag, tiny, out=ws.get(xp, "flush_keep", tuple(a.shape), xp.bool, dev))  # (...) bool
    return ops.mul(a, keep, out=a)


def feature_major_to_tbh(xp, a):
    """(T, F, B) storage -> (T, B, F) view."""
    return ops_for(xp).tbh(a)


def feature_major_copy(xp, ops: Ops, ws: Workspace, name: str, a, dt, dev, launch=call_now):
    """a (T, B, F) -> a contiguous (T, F, B) copy in the workspace (None for None): one strided copy for all T, so
    that each step's (F, B) slice is contiguous (the CuPy kernels then index every argument with one flat index).
    Where the CPU kernels run and a is C-contiguous, _cpu's tiled transpose makes it (2.7x faster than NumPy's strided
    copy at (100, 128, 256); the same values: a copy). launch: how the copy is made (see call_now)."""
    if a is None:
        return None
    T, B, F = a.shape
    return feature_major_into(xp, ops, a, ws.get(xp, name, (T, F, B), dt, dev), launch)  # (T, F, B)


def feature_major_into(xp, ops: Ops, a, out, launch=call_now):
    """out (m, F, B) = a (m, B, F) transposed per step; returns out. The backwards' dy (and dc) copies, whole or a
    chunk of steps at a time: through _cpu.transpose_tbh where the CPU kernels run (a C-contiguous a, or a block
    of a batch's columns: fast/blocks.py; numba compiles the kernel for either layout)."""
    m, B, F = a.shape
    kern = _cpu.kernels() if _cpu.usable(xp, B * F) else None
    if kern is not None and a.dtype == out.dtype:  # NumPy arrays (usable: NumPy only)
        launch(kern.transpose_tbh, a, out)
    else:
        launch(ops.copy, xp.permute_dims(a, (0, 2, 1)), out)
    return out


# ---- forward: operands, folded weights, the input projection ahead of its steps --------------------------------
def recurrent_operands(xp, ops: Ops, ws: Workspace, reuse: bool, x, h0, H: int, dt, dev):
    """(T+1, H+I+1, B) storage of the recurrent GEMM's operands: operands[t] = [h; x[t]; 1] is step t's (0-based),
    h the state after t steps (operands[0, :H] = h0^T; the forward writes step t's new state into
    operands[t+1, :H]); operands[:T, H:] = [x[t]; 1] is x_ones; rows H: of operands[T] are never read."""
    T, B, I = x.shape
    operands = cache_array(xp, ws, reuse, "operands", (T + 1, H + I + 1, B), dt, dev)  # (T+1, H+I+1, B)
    kern = _cpu.kernels() if _cpu.usable(xp, B * H) else None
    if kern is not None and x.dtype == dt == h0.dtype:  # one call, the same values (_cpu_glue.fill_operands)
        kern.fill_operands(x, h0, operands, dt.type(1.0))
        return operands
    ops.copy(xp.matrix_transpose(h0), operands[0, :H, :])
    ops.copy(xp.permute_dims(x, (0, 2, 1)), operands[:T, H:H + I, :])
    ops.fill(operands[T, H:H + I, :], 0.0)  # no input after the last step (kept defined)
    ops.fill(operands[:, H + I, :], 1.0)
    return operands


def input_with_ones(xp, ops: Ops, ws: Workspace, reuse: bool, x, dt, dev):
    """(T, I+1, B) x_t^T with a ones row (the biases' column of the input weights), when x is not in the operands."""
    T, B, I = x.shape
    x_ones = cache_array(xp, ws, reuse, "x_ones", (T, I + 1, B), dt, dev)  # (T, I+1, B)
    ops.copy(xp.permute_dims(x, (0, 2, 1)), x_ones[:, :I, :])
    ops.fill(x_ones[:, I, :], 1.0)
    return x_ones


def fold_weights(ops: Ops, w, p: CellParams, blocks, H: int, I: int):
    """Fill rows of w (G, H+I+1) with [W_hh | W_ih | b_ih + b_hh]: `blocks` lists (row slice of w, torch rows)."""
    for dst, src in blocks:
        ops.copy(p.w_hh[src, :], w[dst, :H])
        ops.copy(p.w_ih[src, :], w[dst, H:H + I])
        ops.add(p.b_ih[src], p.b_hh[src], out=w[dst, H + I])
    return w


def input_proj_buffer(xp, ws: Workspace, T: int, rows: int, grad_rows: int, B: int, dt, dev, *, full: bool = True):
    """(buffer for the input projection's `rows` rows, id of the workspace array behind it). All T steps at once
    while small (one GEMM call), in the buffer the backward's gate grads (`grad_rows` rows a step) use later (dead
    until then); else (or full=False: a forward without gradients, which has no use for that buffer) chunks of
    ~GI_CHUNK_ELEMS, computed just ahead of their steps (still in cache)."""
    if full and T * rows * B <= GI_FULL_MAX_ELEMS:
        base = ws.get(xp, "proj_dgates", (T * grad_rows * B,), dt, dev)  # (T*grad_rows*B,) flat
        return xp.reshape(base[: T * rows * B], (T, rows, B)), id(base)
    base = ws.get(xp, "proj_chunk", (max(1, min(T, GI_CHUNK_ELEMS // (rows * B))), rows, B), dt, dev)  # (m, rows, B)
    return base, id(base)


def projected_steps(ops: Ops, w_x, x_ones, proj_buf, row_blocks, *arrays, views_in=None):
    """Per step: the input projection's row blocks `row_blocks` [(start, stop), ...] of w_x @ x_ones[t], then step
    t's slices of `arrays`. The projection is computed a chunk of steps at a time (one batched GEMM per chunk, into
    proj_buf = input_proj_buffer(...)), just before those steps use it. views_in=(ws, key): key identifies
    `arrays`' buffers; then the step views are built once (Workspace.views)."""
    proj, proj_id = proj_buf
    T = x_ones.shape[0]
    chunk = proj.shape[0]
    if chunk == T and views_in is not None:  # one chunk: the per-step views of a reused workspace are cached
        ws, key = views_in
        full = ops.matmul(w_x, x_ones, out=proj)
        return ws.views("fwd", key + (proj_id,),
                        lambda: list(zip(*(full[:, a:b] for a, b in row_blocks), *arrays)))
    return _projected_chunks(ops, w_x, x_ones, proj, row_blocks, arrays)


def _projected_chunks(ops: Ops, w_x, x_ones, proj, row_blocks, arrays):
    T = x_ones.shape[0]
    chunk = proj.shape[0]
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        part = ops.matmul(w_x, x_ones[t0:t1], out=proj[: t1 - t0])
        yield from zip(*(part[:, a:b] for a, b in row_blocks), *(a[t0:t1] for a in arrays))


# ---- backward: gate-grad storage, weight grads, input backward -------------------------------------------------
def chunk_row(t: int, T: int, chunk: int) -> int:
    """Row of step t in its backward chunk's block of gate grads: t - (its chunk's t0), chunks of `chunk` steps
    counted from the end (the backward's first chunk is steps T-chunk..T-1)."""
    return t - max(0, T - ((T - 1 - t) // chunk + 1) * chunk)


def params_of_dtype(dt, *cell_params: CellParams) -> bool:
    """True when every array of every CellParams has dtype dt (the CPU kernels' copies and sums take one dtype)."""
    return all(a.dtype == dt for q in cell_params for a in q.arrays())


def cut_steps(xp, ws: Workspace, tbptt: int, T: int, dev):
    """(T,) bool: True after the steps where truncated BPTT zeroes the carried grads (_cell.cut), for the
    whole-sequence kernels (_cpu.py); built once per (tbptt, T, device) and kept in ws (read only)."""
    return ws.views("cuts", (tbptt, T, dev), lambda: xp.asarray([bool(tbptt) and cut(tbptt, T, t) for t in range(T)],
                                                                 dtype=xp.bool, device=dev))


def state_grad(xp, ops: Ops, ws: Workspace, name: str, dstate_T, k: int, shape, dt, dev):
    """(H, B) workspace holding dstate_T[k]^T (zeros when absent)."""
    d = ws.get(xp, name, shape, dt, dev)  # (H, B)
    if dstate_T is None or dstate_T[k] is None:
        return ops.fill(d, 0.0)
    return ops.copy(xp.matrix_transpose(dstate_T[k]), d)


def gate_grad_buffer(xp, ws: Workspace, T: int, steps: int, grad_rows: int, B: int, dt, dev, *, shared: bool):
    """(the backward's gate-grad storage: `steps` steps of `grad_rows` rows, flat; id of the workspace array behind
    it). shared: inside the buffer that the GRU forward's full-T input projection used (input_proj_buffer: memory
    just touched, and dead by now), else a buffer of its own."""
    if shared:
        base = ws.get(xp, "proj_dgates", (T * grad_rows * B,), dt, dev)  # (T*grad_rows*B,) flat
    else:
        base = ws.get(xp, "dgates", (steps * grad_rows * B,), dt, dev)  # (steps*grad_rows*B,) flat
    return base[: steps * grad_rows * B], id(base)


def weight_grad_buffers(xp, ws: Workspace, shape, T: int, B: int, dt, dev):
    """(dw_terms: per-step dW terms of one chunk, operand_copy: contiguous operand^T buffer or None, chunk length)
    for a weight grad of `shape` (G, n_cols)."""
    G, n_cols = shape
    chunk = max(1, min(T, DW_CHUNK_ELEMS // (G * n_cols)))
    operand_copy = ws.get(xp, "operand_copy", (chunk, B, n_cols), dt, dev) if B <= DW_COPY_MAX_B else None
    return ws.get(xp, "dw_terms", (chunk, G, n_cols), dt, dev), operand_copy, chunk  # (chunk, G, n_cols)


def weight_grad_operand(xp, ops: Ops, operands, t0: int, t1: int, operand_copy):
    """operands[t0:t1] (m, n_cols, B) as the (m, B, n_cols) right operand of the weight-grad GEMM: a transposed
    view, or a contiguous copy in operand_copy (small B: OpenBLAS is faster on the contiguous operand)."""
    v = xp.permute_dims(operands[t0:t1], (0, 2, 1))
    return v if operand_copy is None else ops.copy(v, operand_copy[: t1 - t0])


def add_chunk_weight_grads(xp, ops: Ops, dgates, operands, t0: int, t1: int, dw_terms, dw, operand_copy=None):
    """dw += sum_{t0 <= t < t1} dgates[t - t0] operands[t]^T: the chunk's per-step GEMMs in one batched call, then
    m adds into dw (no temporary: a new (G, n_cols) array per chunk costs page faults)."""
    m = t1 - t0
    ops.matmul(dgates, weight_grad_operand(xp, ops, operands, t0, t1, operand_copy), out=dw_terms[:m])
    for j in range(m):
        ops.add(dw, dw_terms[j], out=dw)


def unfold_grads(ops: Ops, g: CellParams, dw, blocks, H: int, I: int):
    """The inverse of fold_weights for gradients: dw (G, H+I+1) rows -> g.w_hh, g.w_ih, g.b_ih, g.b_hh (the two
    biases add to the same pre-activation: the same grad)."""
    for dst, src in blocks:
        ops.add(g.w_hh[src, :], dw[dst, :H], out=g.w_hh[src, :])
        ops.add(g.w_ih[src, :], dw[dst, H:H + I], out=g.w_ih[src, :])
        ops.add(g.b_ih[src], dw[dst, H + I], out=g.b_ih[src])
        ops.add(g.b_hh[src], dw[dst, H + I], out=g.b_hh[src])


class InputBackward:
    """Backward of the input projection, a chunk of steps at a time, called right after the chunk's gate grads
    are written (still in cache; the backward keeps only one chunk of them): dx = W_ih^T dgates_t (internal gate
    order), and dW_ih, db_ih (and db_hh: the same grad, both biases add to the pre-activation) from x_ones, whose
    chunk is copied to a contiguous (m, B, I+1) operand first when I+1 >= XB_COPY_MIN (faster skinny GEMMs).
    `blocks` maps internal gate rows back to torch's. The weight grads may cover only some rows,
    dgates[:, dw_rows], mapped back by `dw_blocks`, or none (an empty dw_rows): with x folded into the recurrent
    GEMM's operands, its weight grads already hold those rows' input weights and biases.
    dx=False: no dx (nobody needs the grad of the model's input in training; torch skips it too), finish -> None."""

    def __init__(self, xp, ops: Ops, ws: Workspace, reuse: bool, p: CellParams, blocks, x_ones, G: int, chunk: int,
                 *, dw_rows: slice | None = None, dw_blocks=None, dx: bool = True):
        T, I1, B = x_ones.shape
        I = I1 - 1
        dt, dev = x_ones.dtype, device_of(x_ones)
        self.xp, self.ops, self.x_ones, self.I = xp, ops, x_ones, I
        self.dw_rows, self.dw_blocks = dw_rows, blocks if dw_blocks is None else dw_blocks
        rows_w = G if dw_rows is None else dw_rows.stop - dw_rows.start  # rows with weight grads
        self.dx_buf = None
        if dx:
            self.dx_buf = cache_array(xp, ws, reuse, "dx", (T, I, B), dt, dev)  # (T, I, B)
            self.w_ih_t = ws.get(xp, "w_ih_t", (I, G), dt, dev)  # (I, G) W_ih^T, internal gate order
            for dst, src in blocks:
                ops.copy(xp.matrix_transpose(p.w_ih[src, :]), self.w_ih_t[:, dst])
        self.weights = rows_w > 0
        if self.weights:
            self.dw_acc = ops.fill(ws.get(xp, "dw_ih_acc", (rows_w, I + 1), dt, dev), 0.0)  # (rows_w, I+1): W | b
            self.dw_terms = ws.get(xp, "dw_ih_terms", (chunk, rows_w, I + 1), dt, dev)  # (chunk, rows_w, I+1)
            self.x_copy = ws.get(xp, "x_copy", (chunk, B, I + 1), dt, dev) if I + 1 >= XB_COPY_MIN else None

    def add_chunk(self, t0: int, t1: int, dgates) -> None:
        """dgates (t1-t0, G, B): the gate grads of steps t0..t1-1."""
        xp, ops, m = self.xp, self.ops, t1 - t0
        if self.weights:
            xv = xp.permute_dims(self.x_ones[t0:t1], (0, 2, 1))  # (m, B, I+1)
            if self.x_copy is not None:
                xv = ops.copy(xv, self.x_copy[:m])
            dg_w = dgates if self.dw_rows is None else dgates[:, self.dw_rows, :]
            ops.add(self.dw_acc, xp.sum(ops.matmul(dg_w, xv, out=self.dw_terms[:m]), axis=0), out=self.dw_acc)
        if self.dx_buf is not None:
            ops.matmul(self.w_ih_t, dgates, out=self.dx_buf[t0:t1])  # (I, G) @ (m, G, B)

    def finish(self, g: CellParams, *, b_hh: bool = True):
        """Accumulate into g; return dx (T, B, I) (a view), or None when built with dx=False."""
        ops, I = self.ops, self.I
        for dst, src in self.dw_blocks if self.weights else ():
            acc = self.dw_acc
            ops.add(g.w_ih[src, :], acc[dst, :I], out=g.w_ih[src, :])
            ops.add(g.b_ih[src], acc[dst, I], out=g.b_ih[src])
            if b_hh:
                ops.add(g.b_hh[src], acc[dst, I], out=g.b_hh[src])
        return None if self.dx_buf is None else self.xp.permute_dims(self.dx_buf, (0, 2, 1))
