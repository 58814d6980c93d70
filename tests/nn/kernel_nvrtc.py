"""The exact CUDA source CuPy generates for a recorded launch of a fused kernel (gru_xp/nn/fast/_cuda.py), compiled
by NVRTC for an explicit GPU architecture, with no GPU and no driver: cupy imports without one, and NVRTC and the
CUDA headers come as pip wheels (nvidia-cuda-nvrtc, nvidia-cuda-runtime; the `test` extra installs them).

What CuPy's ElementwiseKernel.__call__ (cupy/_core/_kernel.pyx) does at a launch, replayed here on a recorded call:
  1. the argument count (inputs, or inputs and outputs) and dtypes against the signature, by CuPy's own
     ElementwiseKernel._decide_params_type (TypeError on a mismatch);
  2. the non-raw arrays broadcast to one shape (the fast path never broadcasts: required here), then reduced
     (_reduce_dims): all of them C-contiguous -> viewed as 1-D, one flat index per element; else (2-D arrays here)
     kept, and the kernel's CIndexer and CArrays divide and take modulos per element;
  3. the argument infos (kind, dtype, ndim, contiguity, 32-bit indexing) and the source from
     _kernel._get_elementwise_kernel_code, behind CuPy's headers (core.compile_with_cache);
  4. the options CuPy assembles (core.assemble_cupy_compiler_options, then -ftz=true, -arch and
     --device-as-default-execution-space as in cupy.cuda.compiler) and compiler._NVRTCProgram -> cubin.
The arrays of steps 1-3 are cupy.ndarray views of memory that is never touched (UnownedMemory: no allocation, no
driver), so CuPy itself computes their contiguity and indexing flags. probe() says in one line what is missing
(cupy, NVRTC, the headers) or that CuPy's internals moved; then the tests skip.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# cupy._core._kernel._ArgKind (a cdef enum; probe() checks these against the code CuPy generates)
ARG_NDARRAY, ARG_INDEXER, ARG_SCALAR = 1, 2, 3
_FAKE_PTR = 1 << 40  # the address of the never-touched memory the views describe


@dataclass(frozen=True)
class ArgMeta:
    """One argument of a recorded launch: an array's layout, or a scalar's value."""

    shape: tuple | None = None
    strides: tuple | None = None
    dtype: str | None = None
    value: object = None

    @staticmethod
    def of(a) -> "ArgMeta":
        if hasattr(a, "shape") and hasattr(a, "strides") and getattr(a, "ndim", 0) > 0:
            return ArgMeta(tuple(a.shape), tuple(a.strides), str(a.dtype))
        return ArgMeta(value=a.item() if hasattr(a, "item") else a)

    @property
    def is_array(self) -> bool:
        return self.shape is not None


@dataclass(frozen=True)
class Call:
    """A recorded launch: the kernel's name and its arguments' layouts, in the kernel's parameter order."""

    kernel: str
    args: tuple

    @staticmethod
    def of(kernel, args) -> "Call":
        return Call(kernel.name, tuple(ArgMeta.of(a) for a in args))

    @property
    def dtype(self) -> str:
        return next(a.dtype for a in self.args if a.is_array)


@dataclass(frozen=True)
class Generated:
    source: str  # the full source NVRTC gets
    indexer_ndim: int
    arrays: tuple  # (parameter name, raw, ndim, c_contiguous) for every array argument after step 2


def _cupy():
    import cupy
    from cupy._core import _carray, _kernel, _scalar, core
    from cupy.cuda import compiler, memory, nvrtc

    return cupy, _carray, _kernel, _scalar, core, compiler, memory, nvrtc


def _view(cupy, memory, meta: ArgMeta):
    """A cupy.ndarray with the recorded layout over untouched memory (no allocation, no driver)."""
    itemsize = np.dtype(meta.dtype).itemsize
    span = itemsize + sum((n - 1) * abs(s) for n, s in zip(meta.shape, meta.strides))
    mem = memory.UnownedMemory(_FAKE_PTR, span, None, device_id=0)
    return cupy.ndarray(meta.shape, np.dtype(meta.dtype), memory.MemoryPointer(mem, 0), strides=meta.strides)


def _flat(cupy, memory, a):
    """The 1-D view CuPy's _reduce_dims makes of a C-contiguous array."""
    mem = memory.UnownedMemory(_FAKE_PTR, a.nbytes, None, device_id=0)
    return cupy.ndarray((a.size,), a.dtype, memory.MemoryPointer(mem, 0), strides=(a.dtype.itemsize,))


def cupy_source(kernel, call: Call) -> Generated:
    """Steps 1-3: the source CuPy compiles for this launch of `kernel` (a _cuda.Kernel)."""
    from gru_xp.nn.fast import _cuda

    cupy, _carray, _kernel, _scalar, core, compiler, memory, nvrtc = _cupy()
    ek = _cuda.elementwise_kernel(kernel)
    if len(call.args) != ek.nargs:  # the fast path passes its preallocated outputs: inputs and outputs
        raise TypeError(f"{kernel.name}: {len(call.args)} arguments, the kernel takes {ek.nin} + {ek.nout}")
    params = ek.params[:ek.nargs]
    args = [_view(cupy, memory, m) if m.is_array else _scalar.CScalar(m.value) for m in call.args]
    is_array = [m.is_array for m in call.args]
    in_types, _, type_map = ek._decide_params_type(  # step 1: CuPy's own check of the dtypes
        tuple(a.dtype if arr else None for a, arr in zip(args[:ek.nin], is_array)),
        tuple(a.dtype if arr else None for a, arr in zip(args[ek.nin:], is_array[ek.nin:])))
    for i, a in enumerate(args[:ek.nin]):
        if not is_array[i]:
            a.apply_dtype(in_types[i])
    nonraw = [i for i, p in enumerate(params) if is_array[i] and not p.raw]
    shapes = {args[i].shape for i in nonraw}
    if len(shapes) != 1:
        raise ValueError(f"{kernel.name}: non-raw arrays of shapes {sorted(shapes)}: the fast path never broadcasts")
    (shape,) = shapes
    if len(args) == 1:  # step 2 (CuPy's single-argument fast path: the array's own reduced view)
        args[0] = args[0].reduced_view()
        shape = args[0].shape
    elif all(args[i]._c_contiguous for i in nonraw):
        for i in nonraw:
            args[i] = _flat(cupy, memory, args[i])
        shape = (int(np.prod(shape)),)
    elif len(shape) > 2:
        raise NotImplementedError(f"{kernel.name}: a non-contiguous argument of {len(shape)} dims (CuPy would merge "
                                  "axes: not replayed here)")
    size = int(np.prod(shape))
    infos = [_kernel._ArgInfo(ARG_NDARRAY, type(a), a.dtype, a.ndim, a._c_contiguous, a._index_32_bits) if arr
             else _kernel._ArgInfo(ARG_SCALAR, _scalar.CScalar, a.descr, 0, True, True)
             for a, arr in zip(args, is_array)]
    infos.append(_kernel._ArgInfo(ARG_INDEXER, _carray.Indexer, None, len(shape), True, size <= (1 << 31)))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, ek.params, ek.operation, ek.name,
                                                ek.preamble, **ek.kwargs)
    header = "\n".join(f"#include <{h}>" for h in core._cupy_header_list)
    arrays = tuple((p.name, p.raw, a.ndim, bool(a._c_contiguous)) for p, a, arr in zip(params, args, is_array) if arr)
    return Generated(header + code, len(shape), arrays)


def compile_options(ek, arch: str) -> tuple[tuple, str]:
    """Step 4's options and NVRTC output kind ('cubin' or 'ptx') for an explicit arch such as '90'."""
    cupy, _carray, _kernel, _scalar, core, compiler, memory, nvrtc = _cupy()
    opts = core.assemble_cupy_compiler_options(tuple(ek.kwargs.get("options", ()))) + ("-ftz=true",)
    if not compiler._use_ptx and int(arch) <= int(compiler._get_max_compute_capability()):
        opts, method = opts + (f"-arch=sm_{arch}",), "cubin"
    else:
        opts, method = opts + (f"-arch=compute_{arch}",), "ptx"
    opts += ("--device-as-default-execution-space",)
    if compiler._use_pch and tuple(nvrtc.getVersion()) >= (12, 8):
        opts += ("--pch",)
    return opts, method


def nvrtc_compile(kernel, source: str, arch: str) -> bytes:
    """Step 4: compile `source` with NVRTC for sm_`arch`; CuPy's CompileException (with NVRTC's log) if it fails."""
    from gru_xp.nn.fast import _cuda

    cupy, _carray, _kernel, _scalar, core, compiler, memory, nvrtc = _cupy()
    opts, method = compile_options(_cuda.elementwise_kernel(kernel), arch)
    binary, _ = compiler._NVRTCProgram(source, f"{kernel.name}.cu", (), (), method=method).compile(opts)
    return binary


@functools.lru_cache(maxsize=1)
def probe() -> str | None:
    """None when everything the NVRTC tests need is here; else one line saying what is missing."""
    try:
        cupy, _carray, _kernel, _scalar, core, compiler, memory, nvrtc = _cupy()
    except ImportError as e:
        return f"cupy is not installed ({e}); on Linux pip install -e '.[test]' brings cupy-cuda13x"
    except Exception as e:  # an install broken at import
        return f"cupy does not import ({type(e).__name__}: {e})"
    try:
        version = tuple(nvrtc.getVersion())
    except Exception as e:
        return f"NVRTC not found ({type(e).__name__}); pip install nvidia-cuda-nvrtc (CUDA 13) or -cu12 (CUDA 12)"
    try:
        core.assemble_cupy_compiler_options(())
    except Exception as e:
        return f"CUDA headers not found ({type(e).__name__}: {e}); pip install nvidia-cuda-runtime"
    from gru_xp.nn.fast._cuda import Kernel

    tiny = Kernel("gru_xp_probe", "raw T a, T b, int64 n", "T c", "c = b + a[k % n];")
    try:
        call = Call("gru_xp_probe", (ArgMeta((2, 3), (24, 8), "float64"), ArgMeta((2, 3), (24, 8), "float64"),
                                     ArgMeta(value=6), ArgMeta((2, 3), (24, 8), "float64")))
        gen = cupy_source(tiny, call)
        for want in ("CIndexer<1, 1> _ind", "const long long n", "CArray<double, 1, 1, 1> _raw_c",
                     "const CArray<double, 2, 1, 1> a", "c = b + a[k % n];"):
            if want not in gen.source:
                raise AssertionError(f"{want!r} not in the generated source")
    except Exception as e:
        return f"CuPy {cupy.__version__}: internals moved ({type(e).__name__}: {e})"
    try:
        nvrtc_compile(tiny, gen.source, "80")
    except Exception as e:
        return (f"NVRTC {version} cannot compile a known-good kernel here (are the CUDA headers, pip install "
                f"nvidia-cuda-runtime, there?): {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    return None
