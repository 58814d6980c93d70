"""The fused CUDA kernels' bodies (gru_xp/nn/fast/_cuda.py) compiled for the CPU with g++ and run on NumPy arrays,
in place of CuPy's launch: the CuPy branches of the fast path then run on the CPU with the real kernel bodies.

Each kernel becomes one C function, as CuPy's ElementwiseKernel would shape it: `typedef <float|double> T;`, a loop
over the elements i of the non-raw arrays, each non-raw parameter bound to element i by reference (`T &n =
_raw_n[i]`, const for inputs), raw parameters indexed by the body (here through a bounds-checked view: an index out
of range is counted and reported), scalars passed by value. Element order can be reversed: a body whose result
depends on the order (one element reading what another writes: a race on the GPU) then gives another answer.
The harness checks each call against the kernel's signature: the argument count, every array of the element type
and C-contiguous (the fast path's promise, which gives CuPy's 1-D indexer), the non-raw arrays of one shape.
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

C_TYPES = {"float32": "float", "float64": "double"}
SCALARS = {"int64": ("long long", ctypes.c_longlong), "int32": ("int", ctypes.c_int)}
# (old, new): the first of these found in a body is flipped, once (a "wrong body" for the tests)
MUTATIONS = ((" + ", " - "), (" - ", " + "), (" < ", " > "), (" > ", " < "), ("tanh(", "-tanh("))

_PRELUDE = """
#include <cmath>
#include <cstddef>
using std::tanh; using std::exp; using std::log; using std::sqrt; using std::fabs;
typedef %(T)s T;
template <typename E> struct Raw {  // a raw parameter: p[j] with a bounds check (a miss is counted, not done)
  E* p; ptrdiff_t n; long long* bad; E* junk;
  E& operator[](ptrdiff_t j) const { if (j < 0 || j >= n) { ++*bad; return *junk; } return p[j]; }
};
"""


def gxx() -> str | None:
    return shutil.which("g++")


def mutate(body: str) -> str:
    """The body with one operator flipped: the first of MUTATIONS found outside [] (an index stays in bounds)."""
    for old, new in MUTATIONS:
        at = body.find(old)
        while at >= 0:
            if body[:at].count("[") == body[:at].count("]"):
                return body[:at] + new + body[at + len(old):]
            at = body.find(old, at + 1)
    raise ValueError("no operator to flip in this body")


def c_function(kernel, symbol: str, body: str | None = None) -> str:
    """One kernel as a C function `symbol` (see the module docstring)."""
    sig, binds = [], []
    for p in kernel.params:
        if p.dtype == "T":
            const = "" if p.output else "const "
            if p.raw:
                sig.append(f"{const}T* {p.name}__p, ptrdiff_t {p.name}__n")
                binds.append(f"  Raw<{const}T> {p.name}{{{p.name}__p, {p.name}__n, &_bad, &_junk}};")
            else:
                sig.append(f"{const}T* _raw_{p.name}")
                binds.append(f"    {const}T &{p.name} = _raw_{p.name}[i];")
        elif p.dtype in SCALARS and not p.raw and not p.output:
            sig.append(f"const {SCALARS[p.dtype][0]} {p.name}")
        else:
            raise ValueError(f"{kernel.name}: the harness has no binding for parameter {p}")
    raw_binds = [b for b in binds if b.startswith("  Raw")]
    elem_binds = [b for b in binds if not b.startswith("  Raw")]
    return "\n".join([f'extern "C" long long {symbol}({", ".join(sig + ["ptrdiff_t _n", "int _reverse"])}) {{',
                      "  long long _bad = 0; T _junk = 0;", *raw_binds,
                      "  for (ptrdiff_t _j = 0; _j < _n; ++_j) {",
                      "    const ptrdiff_t i = _reverse ? _n - 1 - _j : _j;", *elem_binds,
                      kernel.operation if body is None else "const ptrdiff_t k = i;\n" + body,
                      "  }", "  return _bad;", "}", ""])


class CpuKernels:
    """Every kernel of `kernels` compiled with g++ for one dtype (and, with mutants=True, each one's mutated body
    as `<name>__mutant`), loaded with ctypes. launch(kernel, *args) replaces _cuda.launch."""

    def __init__(self, kernels, dtype: str, workdir: Path, *, mutants: bool = False):
        self.dtype = np.dtype(dtype)
        self.kernels = {k.name: k for k in kernels}
        parts = [_PRELUDE % {"T": C_TYPES[dtype]}]
        for k in self.kernels.values():
            parts.append(c_function(k, k.name))
            if mutants:
                parts.append(c_function(k, f"{k.name}__mutant", mutate(k.body)))
        src = "\n".join(parts)
        tag = hashlib.sha256(src.encode()).hexdigest()[:16]
        c_path, so_path = workdir / f"kernels_{tag}.cpp", workdir / f"kernels_{tag}.so"
        if not so_path.exists():
            c_path.write_text(src)
            cmd = [gxx() or "g++", "-O2", "-std=c++17", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off",
                   "-o", str(so_path), str(c_path)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"g++ could not compile the kernel bodies:\n{res.stderr}")
        self.lib = ctypes.CDLL(str(so_path))
        self.reverse = False  # run the elements last to first
        self.mutant: str | None = None  # the name of the kernel whose mutated body runs instead
        self.calls: list[str] = []

    def launch(self, kernel, *args) -> None:
        params = kernel.params
        if len(args) != len(params):
            raise TypeError(f"{kernel.name}: {len(args)} arguments for {len(params)} parameters")
        shape, cargs = None, []
        for p, a in zip(params, args):
            if p.dtype == "T":
                if not isinstance(a, np.ndarray) or a.dtype != self.dtype:
                    raise TypeError(f"{kernel.name}: {p.name} must be a {self.dtype} array, got {type(a).__name__} "
                                    f"{getattr(a, 'dtype', '')}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{kernel.name}: {p.name} is not C-contiguous (strides {a.strides}): CuPy "
                                     f"would index it with a {a.ndim}-D indexer")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
                if p.raw:
                    cargs.append(ctypes.c_ssize_t(a.size))
                elif shape is None:
                    shape = a.shape
                elif a.shape != shape:
                    raise ValueError(f"{kernel.name}: {p.name} has shape {a.shape}, the others {shape}")
            else:
                if not isinstance(a, (int, np.integer)):
                    raise TypeError(f"{kernel.name}: {p.name} must be an integer, got {a!r}")
                cargs.append(SCALARS[p.dtype][1](int(a)))
        size = int(np.prod(shape)) if shape is not None else 0
        symbol = f"{kernel.name}__mutant" if kernel.name == self.mutant else kernel.name
        fn = getattr(self.lib, symbol)
        fn.restype = ctypes.c_longlong
        bad = fn(*cargs, ctypes.c_ssize_t(size), ctypes.c_int(int(self.reverse)))
        if bad:
            raise IndexError(f"{kernel.name}: {bad} raw-array accesses out of range")
        self.calls.append(kernel.name)
