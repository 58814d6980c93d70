"""Fused CPU kernels for the NumPy fast path of the GRU (both conventions), the LSTM and the RNN's backward: optional,
compiled by numba when it is installed (`pip install "gru_xp[cpu-kernels]"`), else the portable ufunc loops run.

Legend: T steps, B batch, I inputs, H hidden, G gate rows (3H GRU, 4H LSTM), n_cols = H+I+1, m steps of a chunk;
arrays feature-major (H, B) per step, as in fast/gru.py.

Each kernel does, element by element, exactly the ufunc calls it replaces, in the same order (+, -, * only; no
fastmath, so no fused multiply-add): results are bit-identical to the portable path (tested in
tests/nn/test_cpu_kernels.py), float32 and float64. What it saves is the ufunc calls (~0.4-0.7 µs each; GRU: 10 a
forward step and 8 a backward step become 4 and 1 besides the GEMM, and the backward's per-chunk factor calls are
computed inside the step kernel; reset_before: 9 and 8 become 5 and 2 besides its two GEMMs; LSTM: 8 and 8 become 4
and 1; the RNN's backward: 2 and the chunk's act' pass become 1) and the passes over memory between them. No kernel
gets an argument that aliases one it writes: numba does not vectorise such a loop (2.7-4x slower). tanh stays a
NumPy call in these kernels: NumPy's is vectorised, numba's calls the C library's per element (10-20x slower;
benchmarks/NOTES.md).

One exception to bit-identity: the GRU's (reset_after) and the LSTM's float32 forward where NumPy's OpenBLAS is
reachable run as one call too (`gru_fwd_seq_float32`, `lstm_fwd_seq_float32`: gru_fwd_sequence, lstm_fwd_sequence
below), their gate math one pass a step (gru_fwd_step32, lstm_fwd_step32) with a tanh of its own, tanh32: a rational
function that compiles to SIMD code (at most ~5 ulp from tanh, NumPy's ~1.4), fused multiply-adds allowed. Tested
against the portable loops and against torch in float64 to float32 rounding, tanh32 against tanh to 8 ulp
(tests/nn/test_cpu_kernels.py, `gru-xp check`). Why: the forward made 5 Python-level calls a step (~0.5 µs each, the
GIL taken and released each time) and 4 passes over the gates; one call a GRU forward is 13-38 % faster (forward alone,
by shape; the LSTM's 12-29 %) and the layer's forward + backward 3-21 % (benchmarks/NOTES.md, "Sixth session").
float64 keeps the per-step kernels and NumPy's tanh (tanh32 is float32-accurate only).

Where NumPy's own OpenBLAS is reachable (_cpu_blas.py), the kernels object also holds the GRU's and the LSTM's
whole-sequence backwards (`gru_bwd_seq_<dtype>`, `lstm_bwd_seq_<dtype>`: gru_bwd_sequence, lstm_bwd_sequence below,
that dtype's gemm bound as the first argument) and the GRU's and the LSTM's float32 forwards (`gru_fwd_seq_float32`,
`lstm_fwd_seq_float32`, with their steps `gru_fwd_step32`, `lstm_fwd_step32`); else those attributes are absent
(read them with getattr(kern, name, None)). Why the backwards: with the per-step kernels the backward still makes ~5
Python-level calls a step and sums the weight grads' per-step terms after a batched GEMM; there the whole time loop
is one GIL-free call, the step kernel called from compiled code (bit-identical gate grads and carried grads) and
each step's weight-grad GEMM accumulating straight into dW (BLAS with beta = 1: dW and dx agree with the per-step
path to rounding, not bit for bit). Measured (benchmarks/NOTES.md, "The GRU backward as one call"): the public
layer's forward + backward 3-23 % faster, at every benchmark shape and both thread counts. They are module-level
functions that reach the step kernels through module globals (GRU_BWD_STEP, LSTM_BWD_STEP), not closures, so that
numba's disk cache finds them again in the next process (a closure over a compiled function got a new cache key
every process: ~1 s of compiling on each process's first backward), and they live in this file, so that editing a
step kernel invalidates their cache too (numba stamps a cache with its function's source file only).

The kernels object also holds _cpu_glue's small kernels (weight folds, operand fill, the one-call backward's prep
and grad unfold, Adam's update), compiled by _build with the rest.

numba is loaded with importlib in `kernels()` (the math floor's import rule admits one accelerator import, cupy in
_cuda.py; this module is the CPU counterpart, see the README's layout notes). GRU_XP_CPU_KERNELS=0 turns it off.
"""
from __future__ import annotations

import functools
import importlib
import os

from . import _cpu_blas, _cpu_glue
from ._cpu_blas import NO_TRANS, ROW_MAJOR, TRANS

STATE: dict = {}
# the compiled step kernels the whole-sequence loops call, numba's float32 type (F32) and the compiled tanh32 (TANH32),
# set by _build before their first compile (numba reads them as globals)
GRU_BWD_STEP = LSTM_BWD_STEP = GRU_FWD_STEP = LSTM_FWD_STEP = F32 = TANH32 = None
# tanh32(x) = x P(x^2) / Q(x^2) on x clamped to +-TANH32_CLAMP (1 - tanh(9) = 3e-8: tanh is 1 to float32 precision
# beyond): coefficients of P (degree 6) and Q (degree 3), lowest first, fitted to tanh(x)/x on (0, 9] for the least
# largest relative error (6.6e-9 in float64; benchmarks/tanh32_fit.py derives them)
TANH32_P = (0.9999999933837618, 0.13084009102332433, 0.003103955121127131, 1.1154297312522617e-05,
            -2.0225183458990292e-08, 5.2779287560839564e-11, -8.488660529729578e-14)
TANH32_Q = (1.0, 0.4641733620284665, 0.02449517398524323, 0.00025461436586752504)
TANH32_CLAMP = 9.0
MIN_STEP_ELEMS = 1024  # B·H of a step from which the kernels run: below, loading numba (~0.4 s a process) buys little


def kernels():
    """The compiled kernels (an object with the functions below as attributes), or None: numba missing, or
    GRU_XP_CPU_KERNELS=0. Compiled on first call (cached on disk by numba)."""
    if "k" not in STATE:
        STATE["k"] = _build() if os.environ.get("GRU_XP_CPU_KERNELS", "1") != "0" else None
    return STATE["k"]


def version() -> str | None:
    """'numba X.Y.Z' when the kernels are on (kernels() is not None), else None."""
    return None if kernels() is None else f"numba {importlib.import_module('numba').__version__}"


def usable(xp, step_elems: int) -> bool:
    """True where the kernels run: a NumPy namespace (numba compiles for NumPy arrays), B·H = step_elems of at
    least MIN_STEP_ELEMS, and numba there."""
    return (step_elems >= MIN_STEP_ELEMS and getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")
            and kernels() is not None)


def _build():
    try:
        numba = importlib.import_module("numba")
    except ImportError:
        return None
    jit = numba.njit(cache=True, nogil=True)
    gru, lstm = _gru_kernels(jit), _lstm_kernels(jit)
    gemm = _cpu_blas.gemm()  # NumPy's OpenBLAS for the whole-sequence loops, or None
    seq = {}  # per dtype, with that dtype's gemm bound as the first argument
    if gemm is not None:
        global GRU_BWD_STEP, LSTM_BWD_STEP, GRU_FWD_STEP, LSTM_FWD_STEP, F32, TANH32
        GRU_BWD_STEP, LSTM_BWD_STEP = gru["gru_bwd_after"], lstm["lstm_bwd"]  # before the compile that reads them
        gru_seq, lstm_seq = jit(gru_bwd_sequence), jit(lstm_bwd_sequence)
        for dt in ("float32", "float64"):
            seq[f"gru_bwd_seq_{dt}"] = functools.partial(gru_seq, gemm[dt])
            seq[f"lstm_bwd_seq_{dt}"] = functools.partial(lstm_seq, gemm[dt])
        # the float32 forward: error_model="numpy" (no zero-division check, which keeps a loop with a division from
        # being vectorised), fused multiply-adds allowed ("contract": 23 against 36 us a seed-shape step)
        jit32 = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
        F32 = numba.float32
        TANH32 = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"},
                            inline="always")(tanh32)
        GRU_FWD_STEP, LSTM_FWD_STEP = jit32(gru_fwd_step32), jit32(lstm_fwd_step32)
        seq["gru_fwd_seq_float32"] = functools.partial(jit32(gru_fwd_sequence), gemm["float32"])
        seq["lstm_fwd_seq_float32"] = functools.partial(jit32(lstm_fwd_sequence), gemm["float32"])
        seq["gru_fwd_step32"], seq["lstm_fwd_step32"] = GRU_FWD_STEP, LSTM_FWD_STEP
    return _Kernels(**gru, **lstm, **seq, **_rnn_kernels(jit), **_copy_kernels(jit),
                    **_cpu_glue.glue_kernels(jit, numba.njit(cache=True, nogil=True, error_model="numpy")))


def _gru_kernels(jit) -> dict:
    """The GRU's kernels (reset_after), compiled by `jit` on first call."""

    @jit
    def gru_fwd_after_gates(gates, proj_n, cand, half):
        """gates (3H, B) [tanh(a_r/2), tanh(a_z/2), hn] -> [r, z, hn] in place; cand (H, B) = r hn + proj_n (its
        tanh follows). Replaces mul(rz, half), add(rz, half), mul(r, hn, n), add(n, proj_n, n)."""
        H, B = cand.shape
        for j in range(H):
            for b in range(B):
                r = gates[j, b] * half + half
                gates[j, b] = r
                gates[H + j, b] = gates[H + j, b] * half + half
                cand[j, b] = r * gates[2 * H + j, b] + proj_n[j, b]

    @jit
    def gru_fwd_state(h_prev, cand, gates, h_next):
        """h_next (H, B) = (h_prev - n) z + n, z = gates[H:2H]. Replaces sub, mul, add."""
        H, B = cand.shape
        for j in range(H):
            for b in range(B):
                n = cand[j, b]
                h_next[j, b] = (h_prev[j, b] - n) * gates[H + j, b] + n

    @jit
    def gru_bwd_after(dhz, dhp, dy, has_dy, gates, h_prev, cand, dgates, tiny, one):
        """One backward step before its recurrent GEMM. dh = dhz + dhp (+ dy), the carried grad as the portable
        loop has it (dh z + dhp of the step after, then + dy). The step's factors are computed here, as
        _gru_factors computes them (same products, same order): fac_r = (1-r) r hn, fac_z = (1-z) z (h_{t-1} - n),
        fac_n = (1 - n^2)(1-z); gates (3H, B) [r | z | hn], h_prev (H, B), cand (H, B) n. Writes dgates (4H, B)
        rows [n_h | r | z | n_i] = [da_n r, da_n fac_r, dh fac_z, dh fac_n] and dhz = dh z. dy (H, B),
        feature-major like the rest (the caller transposes a chunk of steps at a time: reading (B, H) across its
        rows here costs 2x the kernel), is read only when has_dy. |dh| < tiny (_common.flush_threshold) is flushed to
        zero (_common.flush_subnormals: the portable loops do it once a chunk). Computing the factors here rather
        than in a pass of their own over each chunk saves writing and reading them: the step reads as many arrays."""
        H, B = dhz.shape
        for j in range(H):
            for b in range(B):
                r, z, n = gates[j, b], gates[H + j, b], cand[j, b]
                one_z = one - z
                fac_r = ((one - r) * r) * gates[2 * H + j, b]
                fac_z = (one_z * z) * (h_prev[j, b] - n)
                fac_n = (one - n * n) * one_z
                dh = dhz[j, b] + dhp[j, b]
                if has_dy:
                    dh = dh + dy[j, b]
                if -tiny < dh < tiny:
                    dh = dh - dh  # +0 (a literal 0 would make numba compute dh in float64)
                da_n = dh * fac_n
                dgates[2 * H + j, b] = dh * fac_z
                dgates[3 * H + j, b] = da_n
                dgates[H + j, b] = da_n * fac_r
                dgates[j, b] = da_n * r
                dhz[j, b] = dh * z

    @jit
    def gru_fwd_before_rz(gates, h_prev, half):
        """reset_before, before the n rows' GEMM: gates (3H, B) [tanh(a_r/2), tanh(a_z/2), .] -> [r, z, r h] in
        place (r h: the n rows' GEMM operand), h_prev (H, B). Replaces mul(rz, half), add(rz, half), mul(r, h)."""
        H, B = h_prev.shape
        for j in range(H):
            for b in range(B):
                r = gates[j, b] * half + half
                gates[j, b] = r
                gates[H + j, b] = gates[H + j, b] * half + half
                gates[2 * H + j, b] = r * h_prev[j, b]

    @jit
    def gru_bwd_before_zn(dhz, dhp, drr, dy, has_dy, gates, h_prev, cand, dgates, dh, tiny, one):
        """reset_before, a backward step before the n rows' GEMM. dh = dhz + (dhp + drr) (+ dy): the carried grad
        as the portable loop has it (dh z + (W_rz^T [da_r; da_z] + drh r) of the step after, then + dy), flushed
        below tiny like gru_bwd_after; written to dh (H, B) for gru_bwd_before_r. dgates (3H, B) rows [r | z | n]:
        writes z, n = dh fac_z, dh fac_n, the factors as _gru_factors computes them (fac_z = (1-z) z (h_{t-1} - n),
        fac_n = (1 - n^2)(1-z)). dy (H, B) feature-major, read only when has_dy."""
        H, B = dhz.shape
        for j in range(H):
            for b in range(B):
                z, n = gates[H + j, b], cand[j, b]
                one_z = one - z
                fac_z = (one_z * z) * (h_prev[j, b] - n)
                fac_n = (one - n * n) * one_z
                d = dhz[j, b] + (dhp[j, b] + drr[j, b])
                if has_dy:
                    d = d + dy[j, b]
                if -tiny < d < tiny:
                    d = d - d  # +0, as in gru_bwd_after
                dgates[H + j, b] = d * fac_z
                dgates[2 * H + j, b] = d * fac_n
                dh[j, b] = d

    @jit
    def gru_bwd_before_r(drh, gates, h_prev, dh, dgates, dhz, drr, one):
        """reset_before, after the n rows' GEMM (drh (H, B) = W_hn^T da_n = d(r h)): dgates row r = drh fac_r with
        fac_r = (1-r) r h_{t-1} (as _gru_factors), drr = drh r and dhz = dh z: the two terms of the next step's dh
        besides the r, z rows' GEMM. Replaces mul(drh, fac_r), mul(drh, r), mul(dh, z)."""
        H, B = dh.shape
        for j in range(H):
            for b in range(B):
                r = gates[j, b]
                g = drh[j, b]
                dgates[j, b] = g * (((one - r) * r) * h_prev[j, b])
                drr[j, b] = g * r
                dhz[j, b] = dh[j, b] * gates[H + j, b]

    return {"gru_fwd_after_gates": gru_fwd_after_gates, "gru_fwd_state": gru_fwd_state,
            "gru_bwd_after": gru_bwd_after, "gru_fwd_before_rz": gru_fwd_before_rz,
            "gru_bwd_before_zn": gru_bwd_before_zn, "gru_bwd_before_r": gru_bwd_before_r}


def _lstm_kernels(jit) -> dict:
    """The LSTM's kernels, compiled by `jit` on first call."""

    @jit
    def lstm_fwd_gates(gates, c_prev, c_next, half):
        """gates (4H, B) [tanh(a_o/2), tanh(a_i/2), tanh(a_f/2), g] -> [o, i, f, g] in place; c_next (H, B) =
        f c_prev + i g (two arrays: a forward without a cache alternates two buffers, since numba does not vectorise
        a loop that reads and writes one array through two arguments). Replaces mul(sig, half), add(sig, half),
        mul(f, c_prev, c), mul(i, g, ig), add(c, ig, c)."""
        H, B = c_next.shape
        for j in range(H):
            for b in range(B):
                o = gates[j, b] * half + half
                i = gates[H + j, b] * half + half
                f = gates[2 * H + j, b] * half + half
                gates[j, b], gates[H + j, b], gates[2 * H + j, b] = o, i, f
                c_next[j, b] = f * c_prev[j, b] + i * gates[3 * H + j, b]

    @jit
    def lstm_bwd(dh, dy, has_dy, dcs, has_dcs, dc, gates, tanh_c, c_prev, dgates, tiny, one):
        """One backward step before its recurrent GEMM (which then overwrites dh). The step's factors are computed
        here, as _lstm_factors computes them (same products, same order): fac_o = (1-o) o tc, fac_i = (1-i) i g,
        fac_f = (1-f) f c_{t-1}, fac_g = (1 - g^2) i, fac_c = (1 - tc^2) o; gates (4H, B) [o | i | f | g], tanh_c
        and c_prev (H, B). With d = dh (+ dy), dc (+= dcs) and dc += d fac_c, dgates (4H, B) = [d fac_o | dc fac_i |
        dc fac_f | dc fac_g], then dc = dc f (dc_{t-1}). dy (H, B) read only when has_dy; dcs (H, B) the step's
        own upstream dc (variable lengths), read only when has_dcs. d and dc below tiny in magnitude
        (_common.flush_threshold) are flushed to zero (the portable loop does it once a chunk)."""
        H, B = dh.shape
        for j in range(H):
            for b in range(B):
                o, i = gates[j, b], gates[H + j, b]
                f, g = gates[2 * H + j, b], gates[3 * H + j, b]
                tc = tanh_c[j, b]
                fac_o = ((one - o) * o) * tc
                fac_i = ((one - i) * i) * g
                fac_f = ((one - f) * f) * c_prev[j, b]
                fac_g = (one - g * g) * i
                fac_c = (one - tc * tc) * o
                d = dh[j, b]
                if has_dy:
                    d = d + dy[j, b]
                if -tiny < d < tiny:
                    d = d - d
                c = dc[j, b]
                if has_dcs:
                    c = c + dcs[j, b]
                c = c + d * fac_c
                if -tiny < c < tiny:
                    c = c - c
                dgates[j, b] = d * fac_o
                dgates[H + j, b] = c * fac_i
                dgates[2 * H + j, b] = c * fac_f
                dgates[3 * H + j, b] = c * fac_g
                dc[j, b] = c * f

    return {"lstm_fwd_gates": lstm_fwd_gates, "lstm_bwd": lstm_bwd}


def _rnn_kernels(jit) -> dict:
    """The vanilla RNN's backward kernel (its forward step is already the GEMM and one in-place activation)."""

    @jit
    def rnn_bwd(dh, dy, has_dy, h, da, relu, tiny, one, zero):
        """One backward step before its recurrent GEMM (which then overwrites dh): d = dh (+ dy), flushed below tiny
        like gru_bwd_after; da (H, B) = d act'(a), from h = act(a) (H, B) as the portable loop computes it: tanh
        1 - h h, relu sign(h) (h >= 0: exactly [h > 0]). dy (H, B) feature-major, read only when has_dy. Replaces
        add(dh, dy^T) (a strided read), mul(dh, act') and the chunk's act' pass."""
        H, B = dh.shape
        for j in range(H):
            for b in range(B):
                d = dh[j, b]
                if has_dy:
                    d = d + dy[j, b]
                if -tiny < d < tiny:
                    d = d - d
                hv = h[j, b]
                if relu:  # np.sign: +-1, +0 for either zero, NaN kept
                    s = one if hv > zero else (-one if hv < zero else (zero if hv == zero else hv))
                else:
                    s = one - hv * hv
                da[j, b] = d * s

    return {"rnn_bwd": rnn_bwd}


def _copy_kernels(jit) -> dict:
    """A transposing copy (the backward's feature-major dy and dc, _common.feature_major_copy)."""

    @jit
    def transpose_tbh(a, out):
        """out (T, F, B) = a (T, B, F) transposed per step, in 16 x 16 tiles (a tile's 16 rows of each array stay in
        cache while it is copied; NumPy's strided copy walks a whole column of a per row of out: 2.7x slower at
        (100, 128, 256), 1.3x at the seed shape), the edges element by element. a, out C-contiguous."""
        T, B, F = a.shape
        Bt, Ft = B - B % 16, F - F % 16
        for t in range(T):
            at, ot = a[t], out[t]
            for b0 in range(0, Bt, 16):
                for j0 in range(0, Ft, 16):
                    for j in range(16):
                        for b in range(16):
                            ot[j0 + j, b0 + b] = at[b0 + b, j0 + j]
                for j in range(Ft, F):
                    for b in range(b0, b0 + 16):
                        ot[j, b] = at[b, j]
            for j in range(F):
                for b in range(Bt, B):
                    ot[j, b] = at[b, j]

    return {"transpose_tbh": transpose_tbh}


# ---- the whole-sequence backwards (compiled by _build with the per-step kernels' jit: cached on disk) -----------
def gru_bwd_sequence(gemm_fn, dhz, dhp, dy_fm, has_dy, cut, gates, operands, cand, dgates, w_hh_t, w_ih_t, dw,
                     dw_in, dx, has_dx, tiny, one):
    """The GRU backward (reset_after) over all T steps, from step T-1 down to 0; per step:
      gru_bwd_after: dgates (4H, B) rows [n_h | r | z | n_i] and dhz = dh z, from dh = dhz + dhp (+ dy_t);
      dhp (H, B) = w_hh_t (H, 3H) @ dgates[:3H]                      (the carried grad's GEMM: rows n_h, r, z)
      dw (3H, n_cols) += dgates[:3H] (3H, B) @ operands[t]^T (B, n_cols)   (rows n, r, z x [h | x | 1])
      dw_in (H, I+1) += dgates[3H:] (H, B) @ operands[t, H:]^T (B, I+1)    (the n rows' input weights, b_in)
      dx[t] (I, B) = w_ih_t (I, 3H) @ dgates[H:] (3H, B)                     (rows r, z, n_i: torch's order)
      cut[t]: truncated BPTT, the carried dhz, dhp zeroed after the step.
    dy_fm (T, H, B) feature-major dy, read when has_dy; dx (T, I, B) written when has_dx; dw, dw_in accumulate.
    Every array is C-contiguous (the GEMMs get their leading dimensions from the shapes)."""
    T, G, B = gates.shape
    H = G // 3
    n_cols = operands.shape[1]
    I = n_cols - H - 1
    isz = dgates.itemsize
    zero = one - one
    dg = dgates.ctypes.data
    for t in range(T - 1, -1, -1):
        GRU_BWD_STEP(dhz, dhp, dy_fm[t], has_dy, gates[t], operands[t, :H], cand[t], dgates, tiny, one)
        op = operands[t].ctypes.data
        gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, H, B, G, one, w_hh_t.ctypes.data, G, dg, B, zero,
                dhp.ctypes.data, B)
        gemm_fn(ROW_MAJOR, NO_TRANS, TRANS, G, n_cols, B, one, dg, B, op, B, one, dw.ctypes.data, n_cols)
        gemm_fn(ROW_MAJOR, NO_TRANS, TRANS, H, I + 1, B, one, dg + 3 * H * B * isz, B, op + H * B * isz, B, one,
                dw_in.ctypes.data, I + 1)
        if has_dx:
            gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, I, B, G, one, w_ih_t.ctypes.data, G, dg + H * B * isz, B,
                    zero, dx[t].ctypes.data, B)
        if cut[t]:
            dhz[:, :] = zero
            dhp[:, :] = zero


def lstm_bwd_sequence(gemm_fn, dh, dc, dy_fm, has_dy, dcs_fm, has_dcs, cut, gates, tanh_c, cell_states,
                      operands, dgates, w_hh_t, w_ih_t, dw, dx, has_dx, tiny, one):
    """The LSTM backward over all T steps, from step T-1 down to 0; per step:
      lstm_bwd: dgates (4H, B) rows [o | i | f | g] and dc = dc_{t-1}, from dh (+ dy_t) and dc (+ dcs_t);
      dh (H, B) = w_hh_t (H, 4H) @ dgates                            (dh_{t-1})
      dw (4H, n_cols) += dgates (4H, B) @ operands[t]^T (B, n_cols)  (rows [o | i f g] x [h | x | 1])
      dx[t] (I, B) = w_ih_t (I, 4H) @ dgates                         (w_ih_t in the internal row order)
      cut[t]: truncated BPTT, the carried dh, dc zeroed after the step.
    dy_fm, dcs_fm (T, H, B) feature-major dy and per-step dc (variable lengths), read when has_dy / has_dcs
    (else a stand-in that aliases neither dh nor dc: numba does not vectorise a kernel whose arguments alias);
    cell_states (T+1, H, B): c_{t-1} at t; dx (T, I, B) written when has_dx; dw accumulates."""
    T, G, B = gates.shape
    H = G // 4
    n_cols = operands.shape[1]
    I = n_cols - H - 1
    zero = one - one
    dg = dgates.ctypes.data
    for t in range(T - 1, -1, -1):
        LSTM_BWD_STEP(dh, dy_fm[t], has_dy, dcs_fm[t], has_dcs, dc, gates[t], tanh_c[t], cell_states[t], dgates,
                    tiny, one)
        gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, H, B, G, one, w_hh_t.ctypes.data, G, dg, B, zero, dh.ctypes.data,
                B)
        gemm_fn(ROW_MAJOR, NO_TRANS, TRANS, G, n_cols, B, one, dg, B, operands[t].ctypes.data, B, one,
                dw.ctypes.data, n_cols)
        if has_dx:
            gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, I, B, G, one, w_ih_t.ctypes.data, G, dg, B, zero,
                    dx[t].ctypes.data, B)
        if cut[t]:
            dh[:, :] = zero
            dc[:, :] = zero


# ---- the GRU's and the LSTM's float32 forwards as one call (tanh32 inside: compiled by _build, cached on disk) -----
def tanh32(v):
    """tanh of a float32, vectorisable: numba's tanh calls the C library per element (10-20x slower than NumPy's),
    this one compiles to SIMD code at about NumPy's speed. x P(x^2) / Q(x^2) (TANH32_P, TANH32_Q) on x clamped to
    +-TANH32_CLAMP, the result clamped to [-1, 1]: odd, at most ~5 ulp from tanh (NumPy's: ~1.4), NaN stays NaN (both
    clamps compare false), +-inf -> +-(1 - 6e-8). Tested in tests/nn/test_cpu_kernels.py."""
    c, one = F32(TANH32_CLAMP), F32(1.0)
    x = c if v > c else v
    x = -c if x < -c else x
    s = x * x
    p = s * F32(TANH32_P[6]) + F32(TANH32_P[5])
    p = s * p + F32(TANH32_P[4])
    p = s * p + F32(TANH32_P[3])
    p = s * p + F32(TANH32_P[2])
    p = s * p + F32(TANH32_P[1])
    p = s * p + F32(TANH32_P[0])
    q = s * F32(TANH32_Q[3]) + F32(TANH32_Q[2])
    q = s * q + F32(TANH32_Q[1])
    q = s * q + F32(TANH32_Q[0])
    y = (x * p) / q
    y = one if y > one else y
    return -one if y < -one else y


def gru_fwd_step32(gates, cand, h_prev, h_next, half):
    """One GRU (reset_after) forward step after its two GEMMs, float32, every tanh tanh32: gates (3H, B)
    [a_r/2 | a_z/2 | W_hn h + b_hn] -> [r | z | hn] in place; cand (H, B) holds W_in x + b_in and becomes
    n = tanh(r hn + W_in x + b_in); h_next (H, B) = (h_prev - n) z + n. The per-step kernels' work (two NumPy tanh
    calls, gru_fwd_after_gates, gru_fwd_state) in one pass; not bit-identical to them (tanh32, fused multiply-adds)."""
    H, B = cand.shape
    for j in range(H):
        for b in range(B):
            r = TANH32(gates[j, b]) * half + half
            z = TANH32(gates[H + j, b]) * half + half
            n = TANH32(r * gates[2 * H + j, b] + cand[j, b])
            gates[j, b] = r
            gates[H + j, b] = z
            cand[j, b] = n
            h_next[j, b] = (h_prev[j, b] - n) * z + n


def gru_fwd_sequence(gemm_fn, w_rec, w_x, operands, gates, cand, keep, half):
    """The GRU forward (reset_after, float32) over all T steps, the operands' layout of fast/gru.py; per step t:
      gates[s] (3H, B) = w_rec (3H, n_cols) @ operands[t] (n_cols, B)      ([a_r/2, a_z/2, W_hn h + b_hn])
      cand[s] (H, B) = w_x (H, I+1) @ operands[t, H:] (I+1, B)             (W_in x_t + b_in)
      gru_fwd_step32: r, z, n in gates[s], cand[s]; the new state into operands[t+1, :H].
    s = t when keep (gates (T, 3H, B), cand (T, H, B): the backward's cache), else 0 (one step's buffers: a forward
    without gradients). Every array C-contiguous."""
    T = operands.shape[0] - 1
    n_cols, B = operands.shape[1], operands.shape[2]
    G = w_rec.shape[0]
    H = G // 3
    isz = operands.itemsize
    one, zero = half + half, half - half
    for t in range(T):
        s = t if keep else 0
        op = operands[t].ctypes.data
        gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, G, B, n_cols, one, w_rec.ctypes.data, n_cols, op, B, zero,
                gates[s].ctypes.data, B)
        gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, H, B, n_cols - H, one, w_x.ctypes.data, n_cols - H,
                op + H * B * isz, B, zero, cand[s].ctypes.data, B)
        GRU_FWD_STEP(gates[s], cand[s], operands[t, :H], operands[t + 1, :H], half)


def lstm_fwd_step32(gates, c_prev, c_next, tanh_c, h_next, half):
    """One LSTM forward step after its GEMM, float32, every tanh tanh32: gates (4H, B) [a_o/2 | a_i/2 | a_f/2 | a_g]
    -> [o | i | f | g] in place; c_next (H, B) = f c_prev + i g, tanh_c (H, B) = tanh(c_next), h_next (H, B) =
    o tanh_c. The per-step kernels' work (two NumPy tanh calls, lstm_fwd_gates, o tanh(c)) in one pass; not
    bit-identical to them (tanh32, fused multiply-adds)."""
    H, B = c_next.shape
    for j in range(H):
        for b in range(B):
            o = TANH32(gates[j, b]) * half + half
            i = TANH32(gates[H + j, b]) * half + half
            f = TANH32(gates[2 * H + j, b]) * half + half
            g = TANH32(gates[3 * H + j, b])
            c = f * c_prev[j, b] + i * g
            tc = TANH32(c)
            gates[j, b], gates[H + j, b], gates[2 * H + j, b], gates[3 * H + j, b] = o, i, f, g
            c_next[j, b] = c
            tanh_c[j, b] = tc
            h_next[j, b] = o * tc


def lstm_fwd_sequence(gemm_fn, w_rec, operands, cell_states, gates, tanh_c, keep, half):
    """The LSTM forward (float32) over all T steps, the operands' layout of fast/lstm.py; per step t:
      gates[s] (4H, B) = w_rec (4H, n_cols) @ operands[t] (n_cols, B)   ([a_o/2, a_i/2, a_f/2, a_g])
      lstm_fwd_step32: o, i, f, g in gates[s], tanh(c) in tanh_c[s], c into cell_states, h into operands[t+1, :H].
    keep: s = t, cell_states (T+1, H, B) c_t at t (the backward's cache); else s = 0 and cell_states (2, H, B),
    c_t at t % 2 (two buffers, so that no kernel reads and writes one array). Every array C-contiguous."""
    T = operands.shape[0] - 1
    n_cols, B = operands.shape[1], operands.shape[2]
    G = w_rec.shape[0]
    H = G // 4
    one, zero = half + half, half - half
    for t in range(T):
        s = t if keep else 0
        c0, c1 = (t, t + 1) if keep else (t % 2, (t + 1) % 2)
        gemm_fn(ROW_MAJOR, NO_TRANS, NO_TRANS, G, B, n_cols, one, w_rec.ctypes.data, n_cols,
                operands[t].ctypes.data, B, zero, gates[s].ctypes.data, B)
        LSTM_FWD_STEP(gates[s], cell_states[c0], cell_states[c1], tanh_c[s], operands[t + 1, :H], half)


class _Kernels:
    """The compiled kernels as attributes (gru_*, lstm_*, rnn_*, transpose_tbh, _cpu_glue's; the whole-sequence
    ones only with NumPy's BLAS)."""

    def __init__(self, **kernels):
        kernels.pop("by_dtype", None)  # a proxy built from vars() of another (fast/__init__.py) starts a new cache
        self.__dict__.update(kernels)
        self.by_dtype: dict = {}

    def seq(self, name: str, dtype):
        """The whole-sequence kernel `name`_<dtype> (e.g. seq("gru_bwd_seq", x.dtype)), or None. The attribute's name
        is formatted once per (name, dtype) (formatting a dtype's name costs ~6 us a call); the attribute is read
        each time, so a kernel replaced on this object (a test's) is the one returned."""
        key = (name, dtype)
        attr = self.by_dtype.get(key)
        if attr is None:
            attr = self.by_dtype[key] = f"{name}_{dtype}"
        return getattr(self, attr, None)
