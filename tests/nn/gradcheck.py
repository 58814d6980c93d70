"""Central finite differences for the gradient tests (float64, tiny shapes)."""
from __future__ import annotations

import numpy as np


def numeric_grad(f, arr: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d arr by central differences, perturbing `arr` in place one entry at a time (restored after)."""
    num = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + eps
        fp = f()
        arr[i] = old - eps
        fm = f()
        arr[i] = old
        num[i] = (fp - fm) / (2 * eps)
    return num
