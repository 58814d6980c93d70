"""NumPy's own BLAS, callable from numba code without the GIL: the GEMM of the GRU's and the LSTM's whole-sequence
backwards (_cpu.py, `gru_bwd_sequence`, `lstm_bwd_sequence`).

The BLAS is the OpenBLAS that NumPy ships and has loaded (the same library object: one thread pool, the thread count
the user set), found next to NumPy's package and called through ctypes (loaded with importlib, as numba is in
_cpu.py). A NumPy without a bundled OpenBLAS (a conda build on MKL, macOS Accelerate) leaves this off (`gemm()` is
None) and the per-step kernels run; GRU_XP_CPU_SEQ=0 turns it off too.
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


# OpenBLAS's thread count, read and set (the batch split of _cpu_split.py holds it to one thread around its calls):
# (get, set) symbol names of scipy-openblas64, scipy-openblas32 and a plain OpenBLAS
_THREAD_SYMBOLS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                   ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                   ("openblas_get_num_threads", "openblas_set_num_threads"))


def thread_control() -> tuple | None:
    """(get, set) of the thread count of the OpenBLAS that gemm() calls (ctypes functions: get() -> int,
    set(n)), or None where gemm() is None or the library has neither."""
    if "threads" not in STATE:
        STATE["threads"] = _find_thread_control() if gemm() is not None else None
    return STATE["threads"]


def _find_thread_control() -> tuple | None:
    ctypes = importlib.import_module("ctypes")
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _THREAD_SYMBOLS:
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and put is not None:
                get.argtypes, get.restype = [], ctypes.c_int
                put.argtypes, put.restype = [ctypes.c_int], None
                return get, put
    return None
