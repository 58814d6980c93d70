"""Fused CPU kernels for the NumPy fast path of the GRU (both conventions), the LSTM and the RNN's backward: optional,
compiled by numba when it is installed (`pip install "gru_xp[cpu-kernels]"`), else the portable ufunc loops run.

Legend: H hidden, B batch, m steps of a chunk; arrays feature-major (H, B) per step, as in fast/gru.py.

Each kernel does, element by element, exactly the ufunc calls it replaces, in the same order (+, -, * only; no
fastmath, so no fused multiply-add): results are bit-identical to the portable path (tested in
tests/nn/test_cpu_kernels.py), float32 and float64. What it saves is the ufunc calls (~0.4-0.7 µs each; GRU: 10 a
forward step and 8 a backward step become 4 and 1 besides the GEMM, and the backward's per-chunk factor calls are
computed inside the step kernel; reset_before: 9 and 8 become 5 and 2 besides its two GEMMs; LSTM: 8 and 8 become 4
and 1; the RNN's backward: 2 and the chunk's act' pass become 1) and the passes over memory between them. No kernel
gets an argument that aliases one it writes: numba does not vectorise such a loop (2.7-4x slower). tanh stays a
NumPy call: NumPy's is vectorised, numba's calls the C library's per element (10-20x slower; benchmarks/NOTES.md).

Where NumPy's own OpenBLAS is reachable, the kernels object also holds the GRU's and the LSTM's whole-sequence
backwards (`gru_bwd_seq_<dtype>`, `lstm_bwd_seq_<dtype>`; _cpu_blas.py), which call the step kernels here from
compiled code; else those attributes are absent (read them with getattr(kern, name, None)).

numba is loaded with importlib in `kernels()` (the math floor's import rule admits one accelerator import, cupy in
_cuda.py; this module is the CPU counterpart, see the README's layout notes). GRU_XP_CPU_KERNELS=0 turns it off.
"""
from __future__ import annotations

import functools
import importlib
import os

from . import _cpu_blas

STATE: dict = {}
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
    gemm = _cpu_blas.gemm()  # NumPy's OpenBLAS for the whole-sequence backwards, or None
    seq = {}  # per dtype, with that dtype's gemm bound as the first argument
    if gemm is not None:
        # not cached on disk: numba's cache misses on a function that closes over another compiled one, and would
        # write a new entry every process
        seq_jit = numba.njit(nogil=True)
        gru_seq = _cpu_blas.build_gru_backward(seq_jit, gru["gru_bwd_after"])
        lstm_seq = _cpu_blas.build_lstm_backward(seq_jit, lstm["lstm_bwd"])
        for dt in ("float32", "float64"):
            seq[f"gru_bwd_seq_{dt}"] = functools.partial(gru_seq, gemm[dt])
            seq[f"lstm_bwd_seq_{dt}"] = functools.partial(lstm_seq, gemm[dt])
    return _Kernels(**gru, **lstm, **seq, **_rnn_kernels(jit))


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


class _Kernels:
    """The compiled kernels as attributes (gru_*, lstm_*, rnn_*; the whole-sequence ones only with NumPy's BLAS)."""

    def __init__(self, **kernels):
        self.__dict__.update(kernels)
