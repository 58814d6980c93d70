"""Embedding: token ids -> vectors (a gather); its backward accumulates rows (a scatter-add), written once against
an array namespace `xp`.

Legend: V vocabulary rows (num_embeddings), E embedding dim, N tokens (T*B for a time-major batch of ids (T, B)).

    forward:  out[t, b] = W[ids[t, b]]                                    (xp.take on the rows)
    backward: dW[v] += sum over tokens with ids == v of dout[token]       (rows of padding_idx get nothing)

The array API has no scatter-add, so the portable backward is a chunked one-hot GEMM: for a chunk of n tokens,
onehot (n, V) = [ids == v], dW += onehot^T @ dout (V, n) @ (n, E): exact sums of the same terms, bounded memory.
The fast twins (NumPy's add.at, CuPy's cupyx.scatter_add, both in nn/fast/embedding.py) do the same sums without
the V-wide one-hot; they are tested against this path. torch.nn.Embedding semantics for padding_idx: that row starts
at zero and never receives a gradient, so it stays zero (the vector of a padded step).
"""
from __future__ import annotations

from array_api_compat import device as device_of

from ..backend import Backend, resolve
from ..errors import UserError
from .fast.embedding import scatter_add_rows

ONEHOT_CHUNK_ELEMS = 1 << 20  # portable backward: tokens per chunk = this // V (one-hot elements per chunk)


def embedding_forward(xp, weight, ids):
    """ids (...) integers in [0, V), weight (V, E) -> (..., E)."""
    E = weight.shape[1]
    flat = xp.reshape(ids, (-1,))  # (N,)
    return xp.reshape(xp.take(weight, flat, axis=0), tuple(ids.shape) + (E,))


def _masked_rows(xp, ids, dout, padding_idx):
    """(N,) ids and (N, E) upstream rows, the rows of padding tokens zeroed (they never reach their row)."""
    E = dout.shape[-1]
    flat = xp.reshape(ids, (-1,))  # (N,)
    rows = xp.reshape(dout, (-1, E))  # (N, E)
    if padding_idx is not None:
        rows = rows * xp.reshape(xp.astype(flat != padding_idx, rows.dtype), (-1, 1))
    return flat, rows


def embedding_backward_portable(xp, ids, dout, gw, padding_idx=0, chunk_elems: int | None = None):
    """dout (..., E) for ids (...) -> accumulates into gw (V, E): the chunked one-hot GEMM (any namespace)."""
    V = gw.shape[0]
    flat, rows = _masked_rows(xp, ids, dout, padding_idx)
    N = flat.shape[0]
    n = max(1, (ONEHOT_CHUNK_ELEMS if chunk_elems is None else chunk_elems) // max(V, 1))
    vocab = xp.reshape(xp.arange(V, dtype=flat.dtype, device=device_of(gw)), (1, V))  # (1, V)
    for s in range(0, N, n):
        e = min(s + n, N)  # (the array API has no out-of-bounds slice stops)
        onehot = xp.astype(xp.reshape(flat[s:e], (-1, 1)) == vocab, gw.dtype)  # (n, V)
        gw += xp.matrix_transpose(onehot) @ rows[s:e, :]  # (V, n) @ (n, E)


def embedding_backward(xp, ids, dout, gw, padding_idx=0, *, fast: bool = True):
    """dout (..., E) for ids (...) -> accumulates into gw (V, E). fast: the namespace's scatter-add twin where there
    is one (NumPy, CuPy), else the portable one-hot GEMM."""
    if fast:
        flat, rows = _masked_rows(xp, ids, dout, padding_idx)
        if scatter_add_rows(xp, gw, flat, rows):
            return
    embedding_backward_portable(xp, ids, dout, gw, padding_idx)


class Embedding:
    """torch.nn.Embedding(num_embeddings, embedding_dim, padding_idx) on any namespace: params["weight"] (V, E),
    initialised U(-0.05, 0.05) like Keras's Embedding (the tutorial's), the padding row zero."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = 0, *, device="cpu",
                 dtype="float32", seed: int | None = 0, fast: bool = True):
        for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        if padding_idx is not None and not (isinstance(padding_idx, int) and 0 <= padding_idx < num_embeddings):
            raise UserError(f"padding_idx must be None or a row index in [0, {num_embeddings}), got {padding_idx!r}")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.backend: Backend = resolve(device, dtype)
        self.fast = bool(fast)
        rng = self.backend.rng(seed)
        w = self.backend.uniform(rng, (num_embeddings, embedding_dim), 0.05)  # (V, E)
        if padding_idx is not None:
            w[padding_idx, :] = 0.0
        self.params = {"weight": w}
        self.grads = {"weight": self.backend.zeros((num_embeddings, embedding_dim))}
        self._ids = None

    def forward(self, ids):
        """ids (...) integers -> (..., E). Out-of-range ids are the caller's to prevent (the host edge encodes them)."""
        xp = self.backend.xp
        self._ids = ids
        return embedding_forward(xp, self.params["weight"], ids)

    def backward(self, dout) -> None:
        """dout (..., E) of the last forward -> accumulates into grads["weight"]."""
        if self._ids is None:
            raise RuntimeError("backward() called before forward()")
        embedding_backward(self.backend.xp, self._ids, dout, self.grads["weight"], self.padding_idx, fast=self.fast)

    __call__ = forward
