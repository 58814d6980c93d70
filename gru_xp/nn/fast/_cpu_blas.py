"""NumPy's own BLAS, callable from numba code without the GIL, and the GRU's and LSTM's backward time loops as one
call on it.

Legend: T steps, B batch, I inputs, H hidden, n_cols = H+I+1; arrays feature-major as in fast/gru.py.

Why: with the per-step kernels of _cpu.py the backward still makes ~5 Python-level calls a step, and it gathers the
weight grads as batched per-step terms added up afterwards (a (3H, n_cols) add per step). Here the whole time loop is
one compiled call, and each step's weight-grad GEMM accumulates straight into dW (BLAS with beta = 1). Measured
(benchmarks/NOTES.md, "The GRU backward as one call"): the public layer's forward + backward 3-23 % faster, at every
benchmark shape and both thread counts.

The BLAS is the OpenBLAS that NumPy ships and has loaded (the same library object: one thread pool, the thread count
the user set), found next to NumPy's package and called through ctypes (loaded with importlib, as numba is in
_cpu.py). A NumPy without a bundled OpenBLAS (a conda build on MKL, macOS Accelerate) leaves this off (`gemm()` is
None) and the per-step kernels run; GRU_XP_CPU_SEQ=0 turns it off too.

The elementwise step is _cpu's gru_bwd_after itself (bit-identical gate grads and carried grad). The GEMMs are the
per-step path's products, but dW sums its per-step terms inside BLAS (C += A B) where the per-step path adds them
after a batched GEMM: dW agrees with it to rounding, not bit for bit (tests/nn/test_cpu_kernels.py).
"""
from __future__ import annotations

import importlib
import os
import sys

STATE: dict = {}
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # cblas enums
# (gemm symbol, 64-bit integers): NumPy 2's wheels ship scipy-openblas64 (ILP64, symbols scipy_*64_), its 32-bit
# wheels scipy-openblas32 (scipy_*); a plain OpenBLAS has the bare cblas names
_SYMBOLS = (("scipy_cblas_{}gemm64_", True), ("cblas_{}gemm64_", True), ("scipy_cblas_{}gemm", False),
            ("cblas_{}gemm", False))


def gemm() -> dict | None:
    """{'float32': cblas_sgemm, 'float64': cblas_dgemm} of NumPy's OpenBLAS (ctypes functions), or None: no OpenBLAS
    next to NumPy, or GRU_XP_CPU_SEQ=0."""
    if "gemm" not in STATE:
        STATE["gemm"] = _find_gemm() if os.environ.get("GRU_XP_CPU_SEQ", "1") != "0" else None
    return STATE["gemm"]


def _library_paths() -> list:
    np_mod = sys.modules.get("numpy")  # loaded: the caller's arrays are NumPy's
    if np_mod is None or not getattr(np_mod, "__file__", None):
        return []
    pkg = os.path.dirname(np_mod.__file__)
    out = []
    for d in (os.path.join(os.path.dirname(pkg), "numpy.libs"), os.path.join(pkg, ".dylibs")):
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if "openblas" in f.lower()]
    return out


def _find_gemm() -> dict | None:
    ctypes = importlib.import_module("ctypes")
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle, the same thread pool
        except OSError:
            continue
        for name, ilp64 in _SYMBOLS:
            n, ptr = (ctypes.c_int64 if ilp64 else ctypes.c_int), ctypes.c_void_p
            fns = {}
            for dtype, letter, real in (("float32", "s", ctypes.c_float), ("float64", "d", ctypes.c_double)):
                fn = getattr(lib, name.format(letter), None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, n, n, n, real, ptr, n, ptr, n, real,
                                   ptr, n]
                    fn.restype = None
                    fns[dtype] = fn
            if len(fns) == 2:
                return fns
    return None


def build_gru_backward(jit, step_kernel):
    """The whole-sequence GRU backward (reset_after, x in the operands), compiled by `jit` on first call (~1 s a
    process and dtype). Its first argument is the BLAS gemm (gemm()[dtype]: float32 and float64 share the code)."""

    @jit
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
            step_kernel(dhz, dhp, dy_fm[t], has_dy, gates[t], operands[t, :H], cand[t], dgates, tiny, one)
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

    return gru_bwd_sequence


def build_lstm_backward(jit, step_kernel):
    """The whole-sequence LSTM backward, compiled by `jit` on first call; the BLAS gemm its first argument, as in
    build_gru_backward."""

    @jit
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
            step_kernel(dh, dy_fm[t], has_dy, dcs_fm[t], has_dcs, dc, gates[t], tanh_c[t], cell_states[t], dgates,
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

    return lstm_bwd_sequence
