"""The Embedding backward's fast twins: a scatter-add of rows with the namespace's own primitive.

Legend: V vocabulary rows, E embedding dim, N tokens.

    NumPy: numpy.add.at (unbuffered: repeated ids accumulate), reached through sys.modules behind an array-api-compat
           namespace (this module never imports numpy);
    CuPy:  cupyx.scatter_add (atomic adds), in _cuda.py, the one module that imports cupy.
Every other namespace has none: the caller runs the portable one-hot GEMM (nn/embedding.py), which these are tested
against (tests/nn/test_embedding.py).
"""
from __future__ import annotations

from ._common import _wrapped_module, is_cupy


def scatter_add_rows(xp, gw, ids, rows) -> bool:
    """gw (V, E) += rows (N, E) at row ids (N,) with repeats accumulating. False when the namespace has no twin
    (nothing was added)."""
    if is_cupy(xp):
        from . import _cuda

        _cuda.embedding_scatter_add(gw, ids, rows)
        return True
    name = getattr(xp, "__name__", "")
    lib = xp if name == "numpy" else (_wrapped_module(xp) if name == "array_api_compat.numpy" else None)
    if lib is None:
        return False
    lib.add.at(gw, ids, rows)
    return True
