"""Backend selection: which array namespace (`xp`), on which device, in which dtype.

Resolved once at the public entry point and passed down; the math modules never import numpy or cupy.
Optional namespaces (cupy, torch, array_api_strict) are imported lazily, only when asked for.

Device strings:
    "cpu"                     NumPy
    "cuda" / "cuda:N"         CuPy on GPU N (error with the fix when CuPy or a GPU is missing)
    "auto"                    CuPy when it imports and sees a GPU, else NumPy (says which it chose)
    "strict" / "strict:NAME"  array_api_strict (NAME e.g. "device1": a non-default device that exposes host transfers)
    "torch" / "torch:DEV"     PyTorch through array-api-compat (tests and interop)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .errors import UserError

DTYPES = ("float32", "float64")
CUDA_FIX = "pip install -e '.[cuda12]' (or '.[cuda13]' for CUDA 13) on a machine with an NVIDIA GPU, or use --device cpu"


@dataclass(frozen=True)
class Backend:
    xp: Any  # array-API namespace (array_api_compat-wrapped where needed)
    device: Any  # that namespace's device object
    dtype: Any  # xp.float32 or xp.float64
    name: str  # "numpy" | "cupy" | "array_api_strict" | "torch"
    dtype_name: str  # "float32" | "float64"

    # ---- host <-> device: the only two crossings -------------------------------------------------
    def asarray(self, a, dtype=None) -> Any:
        """Host (NumPy, lists, torch tensors) or device array -> array of this backend, on its device."""
        dtype = self.dtype if dtype is None else dtype
        if self.name == "numpy" and type(a) is np.ndarray and a.dtype == dtype:
            return a  # what xp.asarray returns for it (no copy), without its ~5 us of checks (twice a layer call)
        if _is_torch_tensor(a) and self.name != "torch":
            a = a.detach().cpu().numpy()
        if self.name == "cupy" or self.name == "array_api_strict":
            try:  # an array of another namespace (e.g. strict on another device) goes through the host
                if array_namespace(a) is not self.xp:
                    a = to_host(a)
            except TypeError:
                pass
        elif self.name == "numpy" and not isinstance(a, np.ndarray):
            a = to_host(a)
        return self.xp.asarray(a, dtype=dtype, device=self.device)

    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def empty(self, shape, dtype=None):
        return self.xp.empty(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    # ---- host randomness, moved once: the same seed gives bit-identical arrays on every backend ----------
    @staticmethod
    def rng(seed) -> np.random.Generator:
        return np.random.default_rng(seed)

    def uniform(self, rng: np.random.Generator, shape, bound: float):
        """U(-bound, bound) drawn on the host in float64, cast, then moved (torch's RNN/Linear init rule)."""
        return self.asarray(rng.uniform(-bound, bound, size=shape).astype(self.np_dtype))

    def dropout_mask(self, rng: np.random.Generator, shape, p: float):
        """Inverted-dropout mask (0 or 1/(1-p)) drawn on the host with the run's generator, then moved."""
        keep = rng.random(shape) >= p
        return self.asarray((keep / (1.0 - p)).astype(self.np_dtype))

    @property
    def np_dtype(self):
        return np.dtype(self.dtype_name)

    @property
    def spec(self) -> str:
        """The device string that resolves to the same namespace and device (e.g. to change the dtype)."""
        if self.name == "numpy":
            return "cpu"
        if self.name == "cupy":
            return f"cuda:{self.device.id}"
        if self.name == "array_api_strict":
            return "strict:" + str(self.device).split("'")[1]
        return f"torch:{self.device}"

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (benchmarks and timing only: the training
        loop syncs by reading its epoch loss, never by calling this)."""
        if self.name == "cupy":
            import cupy

            cupy.cuda.get_current_stream().synchronize()
        elif self.name == "torch" and getattr(self.device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        if self.name == "cupy":
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
            gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            return f"cupy {cupy.__version__} on {gpu} (cuda:{self.device.id}), {self.dtype_name}"
        return f"{self.name} on {self.device}, {self.dtype_name}"


def _is_torch_tensor(a) -> bool:
    mod = type(a).__module__
    return mod.startswith("torch") and hasattr(a, "detach")


def to_host(a) -> np.ndarray:
    """Any supported array -> NumPy. The one explicit device->host sync."""
    if isinstance(a, np.ndarray):
        return a
    if _is_torch_tensor(a):
        return a.detach().cpu().numpy()
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return a.get()
    if mod.startswith("array_api_strict"):
        import array_api_strict as s

        return np.asarray(a.to_device(s.Device("CPU_DEVICE")))
    return np.asarray(a)


def installed(name: str) -> bool:
    """Whether the optional package `name` (torch, distributed, threadpoolctl, ...) can be imported, found without
    importing it (gru-xp bench's parent must not load torch before its children fix their thread counts)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: imports of it are blocked
        return False


def cuda_available() -> tuple[bool, str]:
    """(True, "") when CuPy imports and sees a CUDA device, else (False, reason)."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return False, f"CuPy is not installed ({type(e).__name__})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"CuPy sees no CUDA driver ({e.__class__.__name__})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    return True, ""


def _check_dtype(dtype) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    name = str(name).replace("torch.", "").replace("array_api_strict.", "")
    if name not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use 'float32' (training) or 'float64' (checks)")
    return name


def resolve(device="cpu", dtype="float32", verbose: bool = False) -> Backend:
    """Turn a device string (or an existing Backend) into a Backend. Called once per public entry point."""
    dtype_name = _check_dtype(dtype)
    if isinstance(device, Backend):
        if device.dtype_name == dtype_name:
            return device
        device = device.spec
    if not isinstance(device, str):
        raise UserError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'auto'")
    spec = device.strip().lower()
    kind, _, arg = spec.partition(":")

    if kind == "auto":
        ok, why = cuda_available()
        chosen = "cuda" if ok else "cpu"
        if verbose:
            print(f"gru-xp: device auto -> {chosen}" + ("" if ok else f" ({why})"), file=sys.stderr)
        return resolve(chosen, dtype_name)
    if kind == "cpu" and not arg:
        xp = array_namespace(np.empty(0))
        return Backend(xp, "cpu", getattr(xp, dtype_name), "numpy", dtype_name)
    if kind == "cuda":
        ok, why = cuda_available()
        if not ok:
            raise UserError(f"--device cuda is unavailable: {why}; fix: {CUDA_FIX}")
        import cupy

        if arg and not arg.isdigit():
            raise UserError(f"unknown device {device!r}: use 'cuda' or 'cuda:N' with N a GPU index")
        idx = int(arg) if arg else 0
        if idx >= cupy.cuda.runtime.getDeviceCount():
            raise UserError(f"cuda:{idx} does not exist: this machine has {cupy.cuda.runtime.getDeviceCount()} GPU(s)")
        xp = array_namespace(cupy.empty(0))
        return Backend(xp, cupy.cuda.Device(idx), getattr(xp, dtype_name), "cupy", dtype_name)
    if kind in ("strict", "array_api_strict"):
        import array_api_strict as xp

        dev = xp.Device(arg) if arg else xp.Device("CPU_DEVICE")
        return Backend(xp, dev, getattr(xp, dtype_name), "array_api_strict", dtype_name)
    if kind == "torch":
        import torch

        xp = array_namespace(torch.empty(0))
        return Backend(xp, torch.device(arg or "cpu"), getattr(torch, dtype_name), "torch", dtype_name)
    raise UserError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'auto'")
