"""Shared fixtures: the namespaces every layer must run under, skipping cleanly when one is missing."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from gru_xp.backend import cuda_available

# (device string for gru_xp.resolve, dtype, tolerance against NumPy float64/float32)
BACKENDS = [
    pytest.param("cpu", id="numpy"),
    pytest.param("strict", id="array_api_strict"),
    pytest.param("strict:device1", id="array_api_strict-device1"),
    pytest.param("torch", id="torch-namespace"),
    pytest.param("cuda", id="cupy", marks=pytest.mark.cuda),
]


def _skip_if_missing(device: str) -> None:
    kind = device.split(":")[0]
    if kind == "strict" and importlib.util.find_spec("array_api_strict") is None:
        pytest.skip("array_api_strict not installed")
    if kind == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed")
    if kind == "cuda":
        ok, why = cuda_available()
        if not ok:
            pytest.skip(f"no CUDA: {why}")


@pytest.fixture(params=BACKENDS)
def device(request) -> str:
    """A device string for every namespace the math must run under (NumPy, array_api_strict on its default and
    on a non-default device, torch through array-api-compat, CuPy when a GPU is present)."""
    _skip_if_missing(request.param)
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
