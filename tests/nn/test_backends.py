"""The same computation under every namespace: NumPy, array_api_strict (default and non-default device),
torch through array-api-compat, CuPy (skipped without CUDA). Equal to NumPy within dtype tolerances."""
from __future__ import annotations

import ast
import pathlib
import sys

import numpy as np
import pytest
from array_api_compat import array_namespace
from array_api_compat import device as device_of

import gru_xp
from gru_xp.backend import resolve, to_host
from gru_xp.check import random_problem, randomize_params, rel_err
from gru_xp.model import Forecaster

TOL = {"float64": 1e-12, "float32": 2e-5}


def _run(layer, x, h0, dy, dhn):
    layer.zero_grad()
    y, hn = layer.forward(x, h0)
    dx, dh0 = layer.backward(dy, dhn)
    return y, hn, dx, dh0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_layer_matches_numpy(device, dtype, reset_after):
    ref = gru_xp.GRU(3, 5, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=dtype, seed=4)
    randomize_params(ref, seed=1, scale=0.4)
    layer = gru_xp.GRU(3, 5, num_layers=2, bidirectional=True, reset_after=reset_after, device=device, dtype=dtype,
                       seed=4)
    layer.load_state_dict(ref.state_dict())
    prob = [a.astype(dtype) for a in random_problem(ref, T=7, B=3, seed=2)]
    want = _run(ref, *prob)
    got = _run(layer, *prob)  # NumPy inputs on any device are moved in
    be = layer.backend
    for a in (*got, *layer.grads.values()):
        assert array_namespace(a) is array_namespace(be.zeros((1,))), "outputs are arrays of the layer's namespace"
        assert device_of(a) == be.device, "outputs stay on the layer's device"
        assert a.dtype == be.dtype
    for name, a, b in zip(("y", "h_n", "dx", "dh0"), got, want):
        assert rel_err(a, b) <= TOL[dtype], name
    for k in ref.grads:
        assert rel_err(layer.grads[k], ref.grads[k]) <= TOL[dtype], k


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_seeded_init_is_bit_identical(device, dtype):
    a = gru_xp.GRU(2, 8, num_layers=2, device="cpu", dtype=dtype, seed=123)
    b = gru_xp.GRU(2, 8, num_layers=2, device=device, dtype=dtype, seed=123)
    for k in a.params:
        assert np.array_equal(to_host(b.params[k]), a.params[k]), k


def test_model_step_matches_numpy(device):
    """GRU -> head -> MSE -> Adam update, float32 on every namespace."""
    from gru_xp.nn.optim import Adam, clip_grad_norm

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 4, 2)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")
    out = []
    for dev in ("cpu", device):
        m = Forecaster("gru", 2, 6, 3, device=dev, dtype="float32", seed=5)
        xp, be = m.backend.xp, m.backend
        opt = Adam(lr=0.01)
        xd, yd = be.asarray(x), be.asarray(y)
        for _ in range(3):
            m.loss_and_grads(xd, yd)
            clip_grad_norm(xp, m.grads, 0.5)
            opt.step(xp, m.params, m.grads)
        out.append({k: to_host(v) for k, v in m.params.items()})
    for k in out[0]:
        assert rel_err(out[1][k], out[0][k]) <= 1e-4, k


def test_strict_device1_rejects_hidden_host_mixing():
    """Why device1 is in the fixture: mixing arrays of two devices fails loudly, so a hidden host array
    created inside the math (a default-device zeros, say) cannot pass unnoticed."""
    import array_api_strict as s

    a = s.ones((2,), device=s.Device("device1"))
    with pytest.raises(ValueError):
        a + s.ones((2,))


def test_auto_without_cuda_picks_numpy(capsys):
    ok, _ = gru_xp.backend.cuda_available()
    if ok:
        pytest.skip("this machine has CUDA")
    be = resolve("auto", "float32", verbose=True)
    assert be.name == "numpy"
    assert "auto -> cpu" in capsys.readouterr().err


def test_cuda_without_gpu_is_a_clear_error():
    ok, _ = gru_xp.backend.cuda_available()
    if ok:
        pytest.skip("this machine has CUDA")
    with pytest.raises(gru_xp.UserError, match=r"pip install -e '\.\[cuda12\]'"):
        gru_xp.GRU(1, 2, device="cuda")


@pytest.mark.parametrize("device,dtype,match", [
    ("tpu", "float32", "unknown device"),
    ("cpu", "float16", "unknown dtype"),
    (3, "float32", "unknown device"),
])
def test_bad_backend_arguments(device, dtype, match):
    with pytest.raises(gru_xp.UserError, match=match):
        resolve(device, dtype)


NN_DIR = pathlib.Path(gru_xp.__file__).parent / "nn"
MATH_MODULES = sorted(str(p.relative_to(NN_DIR)) for p in NN_DIR.rglob("*.py"))
CUDA_MODULE = "fast/_cuda.py"  # the one math module that may import cupy
CPU_MODULE = "fast/_cpu.py"  # the optional CPU kernels: numba, loaded with importlib.import_module


def _imports(path: pathlib.Path) -> list[str]:
    """Absolute names of every module `path` imports (function-level imports too; relative ones resolved)."""
    package = ["gru_xp", "nn", *path.relative_to(NN_DIR).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            out.append(".".join(base + ([node.module] if node.module else [])))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)):  # importlib.import_module("name") counts as an import
            out.append(node.args[0].value)
    return out


@pytest.mark.parametrize("name", MATH_MODULES)
def test_math_floor_imports_only_the_floor_backend_errors_and_stdlib(name):
    """The folder rule: a module in gru_xp/nn/ imports gru_xp.nn.*, gru_xp.backend, gru_xp.errors, the standard
    library and array_api_compat; cupy only in fast/_cuda.py, numba only in fast/_cpu.py; never numpy, pandas,
    matplotlib, tqdm or torch."""
    assert len(MATH_MODULES) >= 10
    allowed_ext = set(sys.stdlib_module_names) | {"array_api_compat"} | ({"cupy", "cupyx"} if name == CUDA_MODULE else set())
    allowed_ext |= {"numba"} if name == CPU_MODULE else set()
    if name == CPU_MODULE:
        assert "numba" in _imports(NN_DIR / name)  # the rule sees importlib's import too
    for mod in _imports(NN_DIR / name):
        top = mod.split(".")[0]
        if top == "gru_xp":
            assert mod.startswith("gru_xp.nn") or mod in ("gru_xp.backend", "gru_xp.errors"), f"{name} imports {mod}"
        else:
            assert top in allowed_ext, f"{name} (math floor) imports {mod}"
