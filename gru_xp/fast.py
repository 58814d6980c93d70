"""The fast path: the same cells as gru.py, lstm.py and rnn.py, same contract, built for speed.

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

from ._cell import CellParams, cut
from .gru import GRUCache
from .lstm import LSTMCache
from .rnn import RNNCache

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


def _chunked_steps(xp, o: Ops, w_in, xT, gi_buf, parts, *arrays, cache=None):
    """Per step: the input projection's row blocks `parts` [(start, stop), ...] of w_in @ x_t^T, then step t's
    slices of `arrays`. The projection is computed a chunk of steps at a time (one batched GEMM per chunk, into
    the small buffer gib), just before those steps use it: still in cache, never a (T, G, B) array.
    gi_buf = _gi_buffer(...); cache=(ws, key): key identifies `arrays`' buffers; then the step views are built
    once (Workspace.views)."""
    gib, gib_id = gi_buf
    T = xT.shape[0]
    chunk = gib.shape[0]
    if chunk == T and cache is not None:  # one chunk: the per-step views of a reused workspace are cached
        ws, key = cache
        g = o.matmul(w_in, xT, out=gib)
        return ws.views("fwd", key + (gib_id,), lambda: list(_rows(o, T, *(g[:, a:b] for a, b in parts), *arrays)))
    return _chunk_gen(o, w_in, xT, gib, parts, arrays)


def _chunk_gen(o: Ops, w_in, xT, gib, parts, arrays):
    T = xT.shape[0]
    chunk = gib.shape[0]
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        g = o.matmul(w_in, xT[t0:t1], out=gib[: t1 - t0])
        yield from _rows(o, t1 - t0, *(g[:, a:b] for a, b in parts), *(a[t0:t1] for a in arrays))


def _gi_buffer(xp, ws: Workspace, T: int, G: int, G4: int, B: int, dt, dev):
    """(buffer, id of the workspace array behind it). All T steps at once while the projection is small (one
    GEMM call); chunks of ~GI_CHUNK_ELEMS otherwise (H 128, T 100, B 128: 6 % of the whole step saved; H <= 70:
    2 % lost by chunking)."""
    if T * G * B <= GI_FULL_MAX_ELEMS:  # in the buffer of the backward's gate grads (dead until then)
        base = ws.get(xp, "gates", (T * G4 * B,), dt, dev)
        return xp.reshape(base[: T * G * B], (T, G, B)), id(base)
    base = ws.get(xp, "gi", (max(1, min(T, GI_CHUNK_ELEMS // (G * B))), G, B), dt, dev)
    return base, id(base)


def _dg_buffer(xp, ws: Workspace, T: int, Tb: int, G4: int, B: int, dt, dev, *, shared: bool):
    """(the backward's gate-grad storage: Tb steps of G4 rows, flat; id of the workspace array behind it).
    shared: inside the buffer "gates" (T*G4*B) that the GRU forward's full-T input projection used (_gi_buffer:
    memory just touched, and dead by now), else a buffer of its own."""
    base = ws.get(xp, "gates", (T * G4 * B,), dt, dev) if shared else ws.get(xp, "dg", (Tb * G4 * B,), dt, dev)
    return base[: Tb * G4 * B], id(base)


def _rows(o: Ops, T: int, *arrays):
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


@dataclass
class FastGRUCache(GRUCache):
    """GRUCache whose (T, B, .) fields are views of feature-major storage (every step's block contiguous):
    h = hT[:, :H] viewed (T+1, B, H), r, z, hn = views of G, n = view of nT. The reference backward reads it too."""

    hT: Any = None  # (T+1, K, B) hT[t] = [state after t steps (H); x[t] (I); 1] (fold_x), else [state; 1 if ra]
    G: Any = None  # (T, 3H, B) [r | z | hn] per step (reset_before: hn holds r ⊙ h_{t-1})
    nT: Any = None  # (T, H, B) candidate
    xT: Any = None  # (T, I+1, B) [x_t; 1] (fold_x: a view of hT's rows H:)
    fold_x: bool = False  # x_t and the ones row sit in hT: the recurrent GEMM also does the r, z input projection


def _cache_buf(xp, ws: Workspace, reuse: bool, name, shape, dt, dev):
    return ws.get(xp, name, shape, dt, dev) if reuse else xp.empty(shape, dtype=dt, device=dev)


def _tbh(xp, a):
    """(T, F, B) storage -> (T, B, F) view."""
    return xp.permute_dims(a, (0, 2, 1))


# ---- GRU ----------------------------------------------------------------------------------------------------
# Layout: feature-major. Each step's state is h_t^T (H, B) and its gates (3H, B), so every gate is a contiguous
# block of rows: elementwise ops run on contiguous memory (NumPy is ~8x slower on row-strided slices), and the
# recurrent GEMM is W (3H, K) @ hT[t] (K, B) with W in its own layout.
# NumPy: step t's operand is [h; x[t]; 1] (see _operand), so the one recurrent GEMM also does the r, z rows' input
# projection and all biases: the r, z pre-activations come out whole (no per-step add of a projected input), and
# only the n rows (whose input part must not be multiplied by r) keep a separate input projection. Costs I+1 more
# GEMM columns: at I 1 a net 3-4 % of the step saved (seed, H 64), at I 8 about 1 %.
def gru_forward(xp, p: CellParams, x, state0, *, reset_after: bool = True, ws: Workspace | None = None,
                reuse: bool = False):
    """Same contract as gru.forward: x (T, B, I), (h0 (B, H),) -> y (T, B, H), (h_T,), cache (FastGRUCache).
    `ws` holds the temporaries (a fresh one when None); `reuse=True` also keeps the cache (and so y) in it, valid
    until the next forward on this workspace."""
    if is_cupy(xp):
        return _gru_forward_cupy(xp, p, x, state0, reset_after=reset_after, ws=ws, reuse=reuse)
    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    K = H + I + 1  # rows of the recurrent GEMM's operand [h; x[t]; 1]
    half = o.const(0.5, dt, dev)

    # recurrent weights on [h; x[t]; 1]. r, z rows: [W_h | W_i | b_i + b_h] / 2 (exact: sigmoid via tanh(a/2));
    # reset_after, n rows: [W_hn | 0 | b_hn] (the part multiplied by r)
    w_u = ws.get(xp, "w_u", (H3 if reset_after else H2, K), dt, dev)  # (3H or 2H, K)
    _fold_weights(o, w_u, p, ((slice(0, H2), slice(0, H2)),), H, I)
    o.mul(w_u[:H2, :], half, out=w_u[:H2, :])
    if reset_after:
        o.copy(p.w_hh[H2:, :], w_u[H2:, :H])
        o.fill(w_u[H2:, H:H + I], 0.0)
        o.copy(p.b_hh[H2:], w_u[H2:, H + I])
    else:
        w_n = p.w_hh[H2:, :]  # (H, H), on r ⊙ h
    # n rows' input projection on [x_t; 1]: [W_in | b_in (+ b_hn, additive when reset_before)]
    w_in = ws.get(xp, "w_in", (H, I + 1), dt, dev)  # (H, I+1)
    o.copy(p.w_ih[H2:, :], w_in[:, :I])
    if reset_after:
        o.copy(p.b_ih[H2:], w_in[:, I])
    else:
        o.add(p.b_ih[H2:], p.b_hh[H2:], out=w_in[:, I])

    # cache storage (feature-major)
    hT = _operand(xp, o, ws, reuse, x, h0, H, dt, dev)  # (T+1, K, B): step t's operand is hT[t]
    xT = hT[:T, H:, :]  # (T, I+1, B) [x_t; 1] view
    G = _cache_buf(xp, ws, reuse, "G", (T, H3, B), dt, dev)  # (T, 3H, B)
    nT = _cache_buf(xp, ws, reuse, "nT", (T, H, B), dt, dev)  # (T, H, B)

    mul, add, sub, tanh, matmul = o.mul, o.add, o.sub, o.tanh, o.matmul
    gi_buf = _gi_buffer(xp, ws, T, H, 4 * H, B, dt, dev)  # n rows' input projection, chunks or all T
    key = (T, reset_after, id(hT), id(G), id(nT)) if reuse else None
    steps = _chunked_steps(xp, o, w_in, xT, gi_buf, ((0, H),), hT[:T], hT[:T, :H, :], hT[1:, :H, :], G,
                           G[:, :H2, :], G[:, :H, :], G[:, H:H2, :], G[:, H2:, :], nT,
                           cache=None if key is None else (ws, key))
    if reset_after:
        # NumPy only (CuPy has its own branch), so `out` is passed positionally: ~40 ns a call less than out=
        for g_n, u, hp, hx, G_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_u, u, G_t)  # (3H, K) @ (K, B): [a_r/2, a_z/2, W_hn h + b_hn]
            tanh(rz_t, rz_t)  # r, z jointly
            mul(rz_t, half, rz_t)
            add(rz_t, half, rz_t)  # sigmoid
            mul(r_t, hn_t, n_t)
            add(n_t, g_n, n_t)
            tanh(n_t, n_t)
            sub(hp, n_t, hx)  # h - n (not cached: the backward recomputes it)
            mul(hx, z_t, hx)
            add(hx, n_t, hx)  # n + z (h - n)
    else:
        tmp = ws.get(xp, "tmp", (H, B), dt, dev)
        for g_n, u, hp, hx, G_t, rz_t, r_t, z_t, hn_t, n_t in steps:
            matmul(w_u, u, rz_t)  # (2H, K) @ (K, B)
            tanh(rz_t, rz_t)
            mul(rz_t, half, rz_t)
            add(rz_t, half, rz_t)
            mul(r_t, hp, hn_t)  # r ⊙ h
            matmul(w_n, hn_t, tmp)  # (H, H) @ (H, B)
            add(tmp, g_n, n_t)
            tanh(n_t, n_t)
            sub(hp, n_t, hx)
            mul(hx, z_t, hx)
            add(hx, n_t, hx)
    return _gru_outputs(xp, x, hT, G, nT, xT, reset_after, fold_x=True)


def _gru_outputs(xp, x, hT, G, nT, xT, reset_after: bool, *, fold_x: bool):
    """y (T, B, H), (h_T,), FastGRUCache: views of the feature-major storage."""
    T, H = nT.shape[0], nT.shape[1]
    h_v = _tbh(xp, hT[:, :H, :])  # (T+1, B, H) view
    cache = FastGRUCache(x=x, h=h_v, r=_tbh(xp, G[:, :H, :]), z=_tbh(xp, G[:, H:2 * H, :]), n=_tbh(xp, nT),
                         hn=_tbh(xp, G[:, 2 * H:, :]), reset_after=reset_after, hT=hT, G=G, nT=nT, xT=xT,
                         fold_x=fold_x)
    return h_v[1:, ...], (h_v[T, ...],), cache


def _gru_forward_cupy(xp, p: CellParams, x, state0, *, reset_after: bool, ws: Workspace | None, reuse: bool):
    """gru_forward on CuPy: the input projection of all T in one GEMM, the gate math in _cuda's fused kernels
    (one launch per step besides the GEMM); hT rows [h; 1 when reset_after], x kept in xT."""
    from . import _cuda

    T, B, I = x.shape
    H = p.w_hh.shape[1]
    (h0,) = state0
    dev, dt = device_of(x), x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    Hk = H + 1 if reset_after else H  # rows of hT used by the recurrent GEMM

    # input weights with the biases as an extra column; r, z rows scaled by 1/2 (exact: sigmoid via tanh)
    w_in = ws.get(xp, "w_in", (H3, I + 1), dt, dev)  # (3H, I+1)
    o.copy(p.w_ih, w_in[:, :I])
    o.add(p.b_ih, p.b_hh, out=w_in[:, I])  # r, z: b_ih + b_hh; n: b_in + b_hn (reset_before)
    if reset_after:
        o.copy(p.b_ih[H2:], w_in[H2:, I])  # n: b_in only, b_hn is multiplied by r
    o.mul(w_in[:H2, :], 0.5, out=w_in[:H2, :])
    if reset_after:  # (3H, H+1): W_hh with [0, 0, b_hn] as the last column
        w_h = ws.get(xp, "w_h", (H3, H + 1), dt, dev)
        o.copy(p.w_hh, w_h[:, :H])
        o.fill(w_h[:H2, H], 0.0)
        o.copy(p.b_hh[H2:], w_h[H2:, H])
        o.mul(w_h[:H2, :], 0.5, out=w_h[:H2, :])
    else:
        w_h = o.mul(p.w_hh[:H2, :], 0.5, out=ws.get(xp, "w_h", (H2, H), dt, dev))  # (2H, H)
        w_n = p.w_hh[H2:, :]  # (H, H)

    xT = _input_cache(xp, o, ws, reuse, x, dt, dev)  # (T, I+1, B)
    hT = _cache_buf(xp, ws, reuse, "hT", (T + 1, Hk, B), dt, dev)  # (T+1, H(+1), B)
    G = _cache_buf(xp, ws, reuse, "G", (T, H3, B), dt, dev)  # (T, 3H, B)
    nT = _cache_buf(xp, ws, reuse, "nT", (T, H, B), dt, dev)  # (T, H, B)
    if reset_after:
        o.fill(hT[:, H, :], 1.0)
    o.copy(xp.matrix_transpose(h0), hT[0, :H, :])
    flat = ws.get(xp, "gates", (T * 4 * H * B,), dt, dev)  # gi now, the backward's gate grads later
    gi = xp.reshape(flat[: T * H3 * B], (T, H3, B))  # (T, 3H, B)
    o.matmul(w_in, xT, out=gi)
    tmp = None if reset_after else ws.get(xp, "tmp", (H, B), dt, dev)
    for t in range(T):
        hp, hx, g_t, G_t = hT[t], hT[t + 1, :H, :], gi[t], G[t]
        if reset_after:
            o.matmul(w_h, hp, out=G_t)
            _cuda.gru_fwd_after(g_t, G_t, hp[:H], nT[t], hx)
        else:
            o.matmul(w_h, hp, out=G_t[:H2])
            _cuda.gru_fwd_before_rz(g_t, G_t, hp)
            o.matmul(w_n, G_t[H2:], out=tmp)
            _cuda.gru_fwd_before_n(g_t, tmp, G_t, hp, nT[t], hx)
    return _gru_outputs(xp, x, hT, G, nT, xT, reset_after, fold_x=False)


def _gru_factors(xp, o: Ops, c: FastGRUCache, t0: int, t1: int, K, tmp):
    """For steps t0..t1-1, K (m, 3, H, B): [r(1-r)·(hn | h_{t-1}), z(1-z)(h_{t-1} - n), (1-z)(1-n^2)].
    8 calls for the whole chunk."""
    m = t1 - t0
    H = c.nT.shape[1]
    K, tmp = K[:m], tmp[:m]
    G = xp.reshape(c.G[t0:t1], (m, 3, H, -1))  # (m, 3, H, B) [r, z, hn]
    hp, n_ = c.hT[t0:t1, :H, :], c.nT[t0:t1]
    krz, kn = K[:, :2], K[:, 2]
    one = o.const(1.0, G.dtype, device_of(G))
    o.sub(one, G[:, :2], out=krz)  # 1-r, 1-z
    o.mul(n_, n_, out=kn)
    o.sub(one, kn, out=kn)
    o.mul(kn, K[:, 1], out=kn)  # (1-z)(1-n^2)
    o.mul(krz, G[:, :2], out=krz)  # r(1-r), z(1-z)
    o.mul(K[:, 0], G[:, 2] if c.reset_after else hp, out=K[:, 0])
    o.mul(K[:, 1], o.sub(hp, n_, out=tmp), out=K[:, 1])  # z(1-z)(h_{t-1} - n)
    return K


def gru_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                 input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as gru.backward; dy may be None (zeros). A cache from the reference forward goes to it."""
    if not isinstance(c, FastGRUCache):
        from . import gru as ref

        return ref.backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    T, H, B = c.nT.shape
    I = c.xT.shape[1] - 1
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H2, H3 = 2 * H, 3 * H
    ra, fold = c.reset_after, c.fold_x
    Kc = c.hT.shape[1]  # columns of the recurrent weight grads: [h | x | 1] (fold_x), [h | 1] or [h]
    one = H + I if fold else (H if ra else None)  # the ones column (bias grads), if any
    dh = _state_grad(xp, o, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dL/dh_t^T, carried backwards
    dhp = ws.get(xp, "dhp", (H, B), dt, dev)  # (H, B) the recurrent GEMM's output
    cuda = is_cupy(xp)
    # CPU: chunks sized for the cache; CuPy keeps every gate grad anyway, so only the weight-grad bound applies
    # (at B = H = 256 the cache bound would give 1-step chunks: extra kernel launches for nothing)
    cache_bound = T if cuda else CHUNK_ELEMS // max(1, B * H)
    chunk = max(1, min(T, cache_bound, DW_CHUNK_ELEMS // (H3 * Kc)))
    # gate grads of one chunk of steps (all T on CuPy): every use of them (recurrent GEMM, weight grads, input
    # backward) happens within the chunk, while they are in cache; step t lives at row t - off
    Tb = T if cuda else chunk
    # in the forward's full-T input-projection buffer when it used one (CuPy always does), else their own
    flat, flat_id = _dg_buffer(xp, ws, T, Tb, 4 * H, B, dt, dev, shared=cuda or T * H * B <= GI_FULL_MAX_ELEMS)
    if ra:  # per step [n_h | r | z | n_i]: dgh = rows 0:3H (gate order n, r, z), dgi = rows H:4H (torch order)
        Dg = xp.reshape(flat, (Tb, 4 * H, B))
        dgh_all, dgi_all = Dg[:, :H3, :], Dg[:, H:, :]
        w_t = ws.get(xp, "w_perm_t", (H, H3), dt, dev)  # (W_hh rows n, r, z)^T
        o.copy(xp.matrix_transpose(p.w_hh[H2:, :]), w_t[:, :H])
        o.copy(xp.matrix_transpose(p.w_hh[:H2, :]), w_t[:, H:])
        D4 = xp.reshape(flat, (Tb, 4, H, B))
        z_out, ar_out, hn_out, an = D4[:, 2], D4[:, 1], D4[:, 0], D4[:, 3]
        dw = o.fill(ws.get(xp, "dw", (H3, Kc), dt, dev), 0.0)  # rows n, r, z x columns of hT
        dwn = None
    else:  # per step [r | z | n]
        Dg = xp.reshape(flat[: Tb * H3 * B], (Tb, H3, B))
        dgh_all, dgi_all = Dg[:, :H2, :], Dg
        w_rz_t = o.copy(xp.matrix_transpose(p.w_hh[:H2, :]), ws.get(xp, "w_rz_t", (H, H2), dt, dev))
        w_n_t = o.copy(xp.matrix_transpose(p.w_hh[H2:, :]), ws.get(xp, "w_n_t", (H, H), dt, dev))
        D4 = xp.reshape(Dg, (Tb, 3, H, B))
        z_out, ar_out, an = D4[:, 1], D4[:, 0], D4[:, 2]
        drh = ws.get(xp, "drh", (H, B), dt, dev)
        dw = o.fill(ws.get(xp, "dw", (H2, Kc), dt, dev), 0.0)  # rows r, z x columns of hT
        dwn = o.fill(ws.get(xp, "dwn", (H, H), dt, dev), 0.0)  # n rows x (r ⊙ h)
        dwtn = ws.get(xp, "dwtn", (chunk, H, H), dt, dev)
    dwt = ws.get(xp, "dwt", (chunk,) + tuple(dw.shape), dt, dev)  # per-step dW terms of one chunk
    zb = ws.get(xp, "zb", (chunk, B, Kc), dt, dev) if B <= DW_COPY_MAX_B else None
    K = ws.get(xp, "K", (chunk, 3, H, B), dt, dev)
    ktmp = ws.get(xp, "ktmp", (chunk, H, B), dt, dev)
    hT, G = c.hT, c.G
    if cuda:
        from . import _cuda

        dhz = ws.get(xp, "dhz", (H, B), dt, dev)  # dh ⊙ z of the step after; dh = dhz + dhp (+ dy)
        o.copy(dh, dhz)
        o.fill(dhp, 0.0)
    mul, add, matmul = o.mul, o.add, o.matmul
    # input backward: dx from all three gate rows; the weight grads from the n rows only when x sits in hT (the
    # recurrent weight grads above then hold the r, z rows' input weights and biases)
    n_rows = ((slice(0, H), slice(H2, H3)),)
    inb = _InputBackward(xp, o, ws, reuse, p, ((slice(0, H3), slice(0, H3)),), c.xT, H3, chunk,
                         dw_rows=slice(H2, H3) if fold else None, dw_blocks=n_rows if fold else None,
                         dx=input_grad)
    if not cuda:
        def build():  # step t's views: its factors in K (chunks counted from the end), gate grads, gates
            out = []
            for t in range(T):
                j = t - max(0, T - ((T - 1 - t) // chunk + 1) * chunk)  # t - (its chunk's t0)
                k = K[j]
                out.append((k[0], k[1], k[2], z_out[j], an[j], ar_out[j], G[t, :H], G[t, H:H2],
                            hn_out[j] if ra else None, dgh_all[j]))
            return out

        key = (T, chunk, ra, flat_id, id(K), id(G))
        step_views = ws.views("bwd", key, build) if reuse else build()
    t1 = T
    while t1 > 0:
        t0 = max(0, t1 - chunk)
        off = 0 if cuda else t0  # step t's gate grads are Dg[t - off]
        if not cuda:
            _gru_factors(xp, o, c, t0, t1, K, ktmp)
        for t in range(t1 - 1, t0 - 1, -1):
            dy_t = None if dy is None else xp.matrix_transpose(dy[t, ...])  # (H, B) view
            if cuda:
                if ra:
                    _cuda.gru_bwd_after(dhz, dhp, dy_t, G[t], hT[t, :H, :], c.nT[t], Dg[t])
                    matmul(w_t, dgh_all[t], out=dhp)
                else:
                    _cuda.gru_bwd_before_zn(dhz, dhp, dy_t, G[t], hT[t], c.nT[t], Dg[t], dh)
                    matmul(w_n_t, an[t], out=drh)
                    _cuda.gru_bwd_before_r(drh, dh, G[t], hT[t], Dg[t], dhz)
                    matmul(w_rz_t, Dg[t, :H2], out=dhp)
                if cut(tbptt, T, t):
                    o.fill(dhz, 0.0)
                    o.fill(dhp, 0.0)
                continue
            k0, k1, k2, z_o, an_t, ar_o, r_t, z_t, hn_o, dgh_t = step_views[t]
            if dy_t is not None:
                add(dh, dy_t, dh)
            mul(dh, k1, z_o)  # da_z  (two calls: a broadcast one is slower for small H*B); NumPy: out positional
            mul(dh, k2, an_t)  # da_n
            if ra:
                mul(an_t, k0, ar_o)  # da_r = da_n · hn · r(1-r)
                mul(an_t, r_t, hn_o)  # da_n ⊙ r: the n row of dgh
                matmul(w_t, dgh_t, dhp)  # (H, 3H) @ (3H, B)
                mul(dh, z_t, dh)
                add(dh, dhp, dh)
            else:
                matmul(w_n_t, an_t, drh)  # d(r ⊙ h) (H, B)
                mul(drh, k0, ar_o)  # da_r = drh · h · r(1-r)
                matmul(w_rz_t, dgh_t, dhp)  # (H, 2H) @ (2H, B)
                mul(drh, r_t, drh)
                add(dhp, drh, dhp)
                mul(dh, z_t, dh)
                add(dh, dhp, dh)
            if tbptt and cut(tbptt, T, t):
                o.fill(dh, 0.0)
        # this chunk's recurrent weight grads: its steps' GEMMs in one batched call, then one sum
        m = t1 - t0
        u0, u1 = t0 - off, t1 - off
        matmul(dgh_all[u0:u1], _dw_operand(xp, o, hT, t0, t1, zb), out=dwt[:m])  # rows x columns of hT
        for j in range(m):  # no temporary (a new (3H, K) array per chunk costs page faults)
            add(dw, dwt[j], out=dw)
        if not ra:  # n rows x (r ⊙ h), kept in G's hn slot
            matmul(Dg[u0:u1, H2:], xp.permute_dims(G[t0:t1, H2:], (0, 2, 1)), out=dwtn[:m])
            for j in range(m):
                add(dwn, dwtn[j], out=dwn)
        inb.chunk(t0, t1, dgi_all[u0:u1])
        t1 = t0
    if cuda:
        add(dhz, dhp, out=dh)

    # parameter gradients from the accumulated blocks. Recurrent: rows [n | r | z] (reset_after) or [r | z] (+ dwn)
    # x columns [h | x | 1] or [h | 1] or [h]; the ones column is each bias's grad (b_ih = b_hh for r, z)
    dw_rz, dw_n = (dw[H:], dw[:H, :H]) if ra else (dw, dwn)
    if fold:  # r, z rows: [W_hh | W_ih | b] as folded by the forward
        _unfold_grads(o, g, dw_rz, ((slice(0, H2), slice(0, H2)),), H, I)
    else:
        add(g.w_hh[:H2, :], dw_rz[:, :H], out=g.w_hh[:H2, :])
        if ra:
            add(g.b_hh[:H2], dw_rz[:, one], out=g.b_hh[:H2])
    add(g.w_hh[H2:, :], dw_n, out=g.w_hh[H2:, :])
    if ra:
        add(g.b_hh[H2:], dw[:H, one], out=g.b_hh[H2:])  # b_hn: inside r ⊙ (...), its own grad
    # input weights: every row (no fold_x) or the n rows; reset_before: b_hn is additive, same grad as b_in
    dx = inb.finish(g, b_hh=not ra)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True),)


# ---- shared by LSTM and RNN -----------------------------------------------------------------------------------
def _dw_operand(xp, o: Ops, Z, t0: int, t1: int, zb):
    """Z[t0:t1] (m, K, B) as the (m, B, K) right operand of the weight-grad GEMM: a transposed view, or a
    contiguous copy in zb (see DW_COPY_MAX_B)."""
    v = xp.permute_dims(Z[t0:t1], (0, 2, 1))
    return v if zb is None else o.copy(v, zb[: t1 - t0])


def _operand(xp, o: Ops, ws: Workspace, reuse: bool, x, h0, H: int, dt, dev):
    """(T+1, H+I+1, B) storage of the recurrent GEMM's operands: hT[t] = [h; x[t]; 1] is step t's (0-based), h the
    state after t steps (hT[0, :H] = h0^T; the forward writes step t's new state into hT[t+1, :H]); hT[:T, H:] =
    [x[t]; 1] is xT; rows H: of hT[T] are never read."""
    T, B, I = x.shape
    u = _cache_buf(xp, ws, reuse, "hT", (T + 1, H + I + 1, B), dt, dev)
    o.copy(xp.matrix_transpose(h0), u[0, :H, :])
    o.copy(xp.permute_dims(x, (0, 2, 1)), u[:T, H:H + I, :])
    o.fill(u[T, H:H + I, :], 0.0)  # no input after the last step (kept defined)
    o.fill(u[:, H + I, :], 1.0)
    return u


def _fold_weights(o: Ops, w, p: CellParams, blocks, H: int, I: int):
    """Fill rows of w (G, H+I+1) with [W_hh | W_ih | b_ih + b_hh]: `blocks` lists (row slice of w, torch rows)."""
    for dst, src in blocks:
        o.copy(p.w_hh[src, :], w[dst, :H])
        o.copy(p.w_ih[src, :], w[dst, H:H + I])
        o.add(p.b_ih[src], p.b_hh[src], out=w[dst, H + I])
    return w


def _unfold_grads(o: Ops, g: CellParams, dw, blocks, H: int, I: int):
    """The inverse of _fold_weights for gradients: dw (G, H+I+1) rows -> g.w_hh, g.w_ih, g.b_ih, g.b_hh (the two
    biases add to the same pre-activation: the same grad)."""
    for dst, src in blocks:
        o.add(g.w_hh[src, :], dw[dst, :H], out=g.w_hh[src, :])
        o.add(g.w_ih[src, :], dw[dst, H:H + I], out=g.w_ih[src, :])
        o.add(g.b_ih[src], dw[dst, H + I], out=g.b_ih[src])
        o.add(g.b_hh[src], dw[dst, H + I], out=g.b_hh[src])


def _input_cache(xp, o: Ops, ws: Workspace, reuse: bool, x, dt, dev):
    """(T, I+1, B) x_t^T with a ones row (the biases' column of the input weights)."""
    T, B, I = x.shape
    xT = _cache_buf(xp, ws, reuse, "xT", (T, I + 1, B), dt, dev)
    o.copy(xp.permute_dims(x, (0, 2, 1)), xT[:, :I, :])
    o.fill(xT[:, I, :], 1.0)
    return xT


def _chunk_dw(xp, o: Ops, dAc, Z, t0: int, t1: int, dwt, dw, zb=None):
    """dw += sum_{t0 <= t < t1} dA_t Z[t]^T, dAc = (dA_t0 .. dA_t1-1): the chunk's per-step GEMMs in one
    batched call, then m adds into dw (no temporary)."""
    m = t1 - t0
    o.matmul(dAc, _dw_operand(xp, o, Z, t0, t1, zb), out=dwt[:m])
    for j in range(m):
        o.add(dw, dwt[j], out=dw)


def _dw_buffers(xp, ws: Workspace, shape, T: int, B: int, dt, dev):
    """(dwt: per-step dW terms of one chunk, zb: contiguous h^T operand or None, chunk length)."""
    G, K = shape
    chunk = max(1, min(T, DW_CHUNK_ELEMS // (G * K)))
    zb = ws.get(xp, "zb", (chunk, B, K), dt, dev) if B <= DW_COPY_MAX_B else None
    return ws.get(xp, "dwt", (chunk, G, K), dt, dev), zb, chunk


class _InputBackward:
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
            self.dxT = _cache_buf(xp, ws, reuse, "dxT", (T, I, B), dt, dev)
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


def _state_grad(xp, o: Ops, ws: Workspace, name: str, dstate_T, k: int, shape, dt, dev):
    """(H, B) workspace holding dstate_T[k]^T (zeros when absent)."""
    d = ws.get(xp, name, shape, dt, dev)
    if dstate_T is None or dstate_T[k] is None:
        return o.fill(d, 0.0)
    return o.copy(xp.matrix_transpose(dstate_T[k]), d)


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
    w_u = _fold_weights(o, ws.get(xp, "w_u", (H4, H + I + 1), dt, dev), p, _lstm_blocks(H), H, I)
    o.mul(w_u[:H3, :], half, out=w_u[:H3, :])

    hT = _operand(xp, o, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's operand is hT[t]
    cT = _cache_buf(xp, ws, reuse, "cT", (T + 1, H, B), dt, dev)
    G = _cache_buf(xp, ws, reuse, "G", (T, H4, B), dt, dev)
    TC = _cache_buf(xp, ws, reuse, "TC", (T, H, B), dt, dev)
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
    h_v, c_v = _tbh(xp, hT[:, :H, :]), _tbh(xp, cT)
    cache = FastLSTMCache(x=x, h=h_v, c=c_v, i=_tbh(xp, G[:, H:2 * H]), f=_tbh(xp, G[:, 2 * H:H3]),
                          g=_tbh(xp, G[:, H3:]), o=_tbh(xp, G[:, :H]), tc=_tbh(xp, TC), hT=hT, cT=cT, G=G, TC=TC,
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
        from . import lstm as ref

        return ref.backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    T, H, B = c.TC.shape
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    H3, H4 = 3 * H, 4 * H
    blocks = _lstm_blocks(H)
    dh = _state_grad(xp, o, ws, "dh", dstate_T, 0, (H, B), dt, dev)  # (H, B) dL/dh_t^T, carried backwards
    dc = _state_grad(xp, o, ws, "dc", dstate_T, 1, (H, B), dt, dev)  # (H, B) dL/dc_t^T
    tmp = ws.get(xp, "tmp", (H, B), dt, dev)
    w_t = ws.get(xp, "w_hh_t", (H, H4), dt, dev)  # W_hh^T, internal gate order
    for dst, src in blocks:
        o.copy(xp.matrix_transpose(p.w_hh[src, :]), w_t[:, dst])
    Kc = c.hT.shape[1]  # H+I+1: [W_hh | W_ih | b] columns
    dw = o.fill(ws.get(xp, "dw", (H4, Kc), dt, dev), 0.0)
    dwt, zb, dw_chunk = _dw_buffers(xp, ws, (H4, Kc), T, B, dt, dev)
    chunk = max(1, min(dw_chunk, CHUNK_ELEMS // max(1, B * H)))
    K = ws.get(xp, "K", (chunk, 5, H, B), dt, dev)
    # one chunk's gate grads (step t at t - t0)
    flat, flat_id = _dg_buffer(xp, ws, T, chunk, H4, B, dt, dev, shared=False)
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
    inb = _InputBackward(xp, o, ws, reuse, p, blocks, c.xT, H4, chunk, dw_rows=slice(0, 0),  # dx only
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
        _chunk_dw(xp, o, dA[: t1 - t0], c.hT, t0, t1, dwt, dw, zb)
        inb.chunk(t0, t1, dA[: t1 - t0])
        t1 = t0
    _unfold_grads(o, g, dw, blocks, H, c.xT.shape[1] - 1)
    dx = inb.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True), xp.asarray(xp.matrix_transpose(dc), copy=True))


# ---- RNN ----------------------------------------------------------------------------------------------------
# Feature-major h_t^T (H, B), x folded into the recurrent GEMM's operand [h; x[t]; 1] (see _operand):
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
    w_u = _fold_weights(o, ws.get(xp, "w_u", (H, H + I + 1), dt, dev), p, ((slice(0, H), slice(0, H)),), H, I)
    hT = _operand(xp, o, ws, reuse, x, h0, H, dt, dev)  # (T+1, H+I+1, B): step t's operand is hT[t]
    matmul = o.matmul
    act = o.tanh if nonlinearity == "tanh" else None
    zero = o.const(0.0, dt, dev)
    for u, hx in _rows(o, T, hT[:T], hT[1:, :H]):
        matmul(w_u, u, out=hx)  # (H, H+I+1) @ (H+I+1, B): the pre-activation, in the next state's slot
        if act is None:
            o.maximum(hx, zero, out=hx)
        else:
            act(hx, out=hx)
    h_v = _tbh(xp, hT[:, :H, :])
    return h_v[1:], (h_v[T],), FastRNNCache(x=x, h=h_v, nonlinearity=nonlinearity, hT=hT, xT=hT[:T, H:, :])


def rnn_backward(xp, p: CellParams, c, dy, dstate_T, g: CellParams, *, tbptt: int = 0,
                 input_grad: bool = True, ws: Workspace | None = None, reuse: bool = False):
    """Same contract as rnn.backward; dy may be None (zeros). A cache from the reference forward goes to it."""
    if not isinstance(c, FastRNNCache):
        from . import rnn as ref

        return ref.backward(xp, p, c, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad)
    T, Kc, B = c.hT.shape[0] - 1, c.hT.shape[1], c.hT.shape[2]
    H = p.w_hh.shape[1]
    dev, dt = device_of(c.x), c.x.dtype
    ws = Workspace() if ws is None else ws
    o = ops_for(xp)
    everything = ((slice(0, H), slice(0, H)),)
    dh = _state_grad(xp, o, ws, "dh", dstate_T, 0, (H, B), dt, dev)
    w_t = o.copy(xp.matrix_transpose(p.w_hh), ws.get(xp, "w_hh_t", (H, H), dt, dev))
    dw = o.fill(ws.get(xp, "dw", (H, Kc), dt, dev), 0.0)  # [W_hh | W_ih | b] columns
    dwt, zb, dw_chunk = _dw_buffers(xp, ws, (H, Kc), T, B, dt, dev)
    chunk = max(1, min(dw_chunk, CHUNK_ELEMS // max(1, B * H)))
    K = ws.get(xp, "K", (chunk, H, B), dt, dev)
    dA = ws.get(xp, "dg", (chunk, H, B), dt, dev)  # one chunk's pre-activation grads (step t at t - t0)
    relu = c.nonlinearity == "relu"
    mul, add, matmul = o.mul, o.add, o.matmul
    inb = _InputBackward(xp, o, ws, reuse, p, everything, c.xT, H, chunk, dw_rows=slice(0, 0),  # dx only
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
        _chunk_dw(xp, o, dA[:m], c.hT, t0, t1, dwt, dw, zb)
        inb.chunk(t0, t1, dA[:m])
        t1 = t0
    _unfold_grads(o, g, dw, everything, H, Kc - H - 1)
    dx = inb.finish(g)
    return dx, (xp.asarray(xp.matrix_transpose(dh), copy=True),)


# ---- dispatch -----------------------------------------------------------------------------------------------
class FastCell:
    """A cell with the reference module's interface (GATES, STATES, forward, backward) plus a `slot` keyword:
    one Workspace per (layer, direction) slot. `reuse` keeps caches and outputs in the workspaces too."""

    def __init__(self, ref, fwd, bwd, reuse: bool = False):
        self.ref, self._fwd, self._bwd, self.reuse = ref, fwd, bwd, reuse
        self.GATES, self.STATES = ref.GATES, ref.STATES
        self.workspaces: dict = {}

    def _ws(self, slot) -> Workspace:
        ws = self.workspaces.get(slot)
        if ws is None:
            ws = self.workspaces[slot] = Workspace()
        return ws

    def forward(self, xp, p, x, state0, *, slot=0, **opts):
        return self._fwd(xp, p, x, state0, ws=self._ws(slot), reuse=self.reuse, **opts)

    def backward(self, xp, p, cache, dy, dstate_T, g, *, tbptt: int = 0, input_grad: bool = True, slot=0):
        return self._bwd(xp, p, cache, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=self._ws(slot),
                         reuse=self.reuse)

    def nbytes(self) -> int:
        return sum(ws.nbytes() for ws in self.workspaces.values())


def fast_cell_for(cell_module, xp, *, reuse: bool = False):
    """The fast twin of a reference cell module for namespace xp, or None (then the reference runs)."""
    if not supports_out(xp):
        return None
    name = getattr(cell_module, "__name__", "").rsplit(".", 1)[-1]
    impl = _IMPLS.get(name)
    if impl is None:
        return None
    return FastCell(cell_module, *impl, reuse=reuse)


_IMPLS = {"gru": (gru_forward, gru_backward), "lstm": (lstm_forward, lstm_backward),
          "rnn": (rnn_forward, rnn_backward)}
