"""A sequence classifier: [embedding ->] recurrent layer(s) over variable-length batches -> the last state of each
direction -> Dense(relu) -> Dense -> logits -> loss. The Keras tutorial's IMDB model is
Embedding(mask_zero) -> Bidirectional(LSTM(64)) -> Dense(32, relu) -> Dense(1) -> binary cross-entropy on logits.

Legend: T time steps, B batch, I input channels (series) or E embedding dim (tokens), H hidden, D directions,
S dense units, C classes, K logits (1 for two classes: one logit and binary cross-entropy; C for more: softmax
cross-entropy). Targets y are (B, K) floats: (B, 1) of 0/1 for two classes, one-hot (B, C) for more.
Variable lengths: the recurrent layer's packed-sequence semantics (recurrent.py); the features are each sequence's
state at its own last step (forward direction) and after its first step (reverse direction), like Keras's
Bidirectional(LSTM) with mask_zero and torch's h_n of a packed batch.
"""
from __future__ import annotations

import math

from . import head, losses
from ._model import RecurrentModel
from .embedding import Embedding
from ..errors import UserError
from .recurrent import build_recurrent


class Classifier(RecurrentModel):
    """[Embedding ->] recurrent -> last states -> [Dense(S, relu) ->] Dense(K) -> BCE (C = 2) or softmax CE."""

    def __init__(self, cell: str = "lstm", input_size: int = 1, hidden_size: int = 64, num_classes: int = 2, *,
                 vocab_size: int = 0, embedding_dim: int = 64, dense_size: int = 32, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, reset_after: bool = True,
                 nonlinearity: str = "tanh", device="cpu", dtype="float32", seed: int = 0, fast: bool = True):
        for name, v, low in (("num_classes", num_classes, 2), ("vocab_size", vocab_size, 0),
                             ("dense_size", dense_size, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise UserError(f"{name} must be an integer >= {low}, got {v!r}")
        if vocab_size == 1:
            raise UserError("vocab_size must be at least 2 (0 = padding, 1 = unknown word), or 0 for no embedding")
        self.cell, self.num_classes, self.dense_size = cell, num_classes, dense_size
        self.embedding = None
        if vocab_size:
            self.embedding = Embedding(vocab_size, embedding_dim, padding_idx=0, device=device, dtype=dtype,
                                       seed=None if seed is None else seed + 2, fast=fast)
            input_size = embedding_dim
        self.rnn = build_recurrent(cell, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                                   dropout=dropout, reset_after=reset_after, nonlinearity=nonlinearity, device=device,
                                   dtype=dtype, seed=seed)
        self.backend = self.rnn.backend
        self.rnn.fast, self.rnn.reuse_buffers = bool(fast), True  # its outputs never leave the model
        self.K = 1 if num_classes == 2 else num_classes
        F = self.rnn.num_directions * hidden_size
        rng = self.backend.rng(None if seed is None else seed + 1)
        self.head = {}
        if dense_size:
            self.head["dense.weight"] = self.backend.uniform(rng, (dense_size, F), 1.0 / math.sqrt(F))  # (S, F)
            self.head["dense.bias"] = self.backend.uniform(rng, (dense_size,), 1.0 / math.sqrt(F))  # (S,)
        n_in = dense_size or F
        self.head["out.weight"] = self.backend.uniform(rng, (self.K, n_in), 1.0 / math.sqrt(n_in))  # (K, S)
        self.head["out.bias"] = self.backend.uniform(rng, (self.K,), 1.0 / math.sqrt(n_in))  # (K,)
        self.head_grads = {k: self.backend.zeros(v.shape) for k, v in self.head.items()}
        self._feat = self._hid = self._logits = None

    # flat views, rebuilt on each call so that load_state_dict (which swaps arrays) is never stale
    @property
    def params(self) -> dict:
        emb = {} if self.embedding is None else {"embedding.weight": self.embedding.params["weight"]}
        return {**emb, **{f"rnn.{k}": v for k, v in self.rnn.params.items()}, **self.head}

    @property
    def grads(self) -> dict:
        emb = {} if self.embedding is None else {"embedding.weight": self.embedding.grads["weight"]}
        return {**emb, **{f"rnn.{k}": v for k, v in self.rnn.grads.items()}, **self.head_grads}

    def load_state_dict(self, sd) -> None:
        self.check_state_dict(sd, "classifier")
        self.rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
        if self.embedding is not None:
            self.embedding.params["weight"] = self.backend.asarray(sd["embedding.weight"])
        for k in self.head:
            self.head[k] = self.backend.asarray(sd[k])

    # ---- forward, then backward -------------------------------------------------------------------------------
    def forward(self, x, lengths=None, *, check_lengths: bool = True):
        """x: token ids (T, B) (with an embedding) or series (T, B, I); lengths (B,) or None -> logits (B, K)."""
        xp = self.backend.xp
        inp = x if self.embedding is None else self.embedding.forward(x)  # (T, B, I or E)
        _, state_n = self.rnn.forward(inp, lengths=lengths, check_lengths=check_lengths)
        self._feat = self.last_hidden(state_n)  # (B, D*H)
        h = self._feat
        if self.dense_size:
            h = self._hid = head.dense_relu_forward(xp, self.head["dense.weight"], self.head["dense.bias"], h)
        self._logits = head.linear_forward(xp, self.head["out.weight"], self.head["out.bias"], h)  # (B, K)
        return self._logits

    def backward(self, dlogits, *, input_grad: bool = False):
        """dlogits (B, K) -> accumulates every parameter gradient; returns the input's gradient (T, B, I) when
        input_grad and there is no embedding, else None."""
        xp, rnn, g = self.backend.xp, self.rnn, self.head_grads
        h = self._hid if self.dense_size else self._feat
        dh = head.linear_backward(xp, self.head["out.weight"], h, dlogits, g["out.weight"], g["out.bias"])
        if self.dense_size:  # (B, S) -> (B, D*H)
            dh = head.dense_relu_backward(xp, self.head["dense.weight"], self._feat, self._hid, dh,
                                          g["dense.weight"], g["dense.bias"])
        L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size
        dh_n = self.backend.zeros((L * D, dh.shape[0], H))  # (L*D, B, H): only the last layer's states are read
        for d in range(D):
            dh_n[(L - 1) * D + d, ...] = dh[:, d * H:(d + 1) * H]
        dstate = dh_n if rnn.cell.STATES == 1 else (dh_n, None)
        need_dx = self.embedding is not None or input_grad
        dx, _ = rnn.backward(None, dstate, input_grad=need_dx)
        if self.embedding is not None:
            self.embedding.backward(dx)  # (T, B, E) -> embedding rows
            return None
        return dx

    def _loss(self, logits, y):
        xp = self.backend.xp
        if tuple(y.shape) != tuple(logits.shape):
            two = self.K == 1
            raise UserError(f"targets y have shape {tuple(y.shape)}; the model needs {tuple(logits.shape)} for this "
                            f"input: " + ("0/1 labels as one column (B, 1)" if two else
                                          f"one-hot rows (B, {self.K}), one column per class"))
        if self.K == 1:
            return losses.bce_with_logits(xp, logits, y), losses.bce_with_logits_backward
        return losses.softmax_cross_entropy(xp, logits, y), losses.softmax_cross_entropy_backward

    def loss(self, x, y, lengths=None, *, check_lengths: bool = True):
        """The loss of the current mode's forward (0-d device array), no gradients (and no backward cache)."""
        y = self.backend.asarray(y)
        with self.no_grad():
            return self._loss(self.forward(x, lengths, check_lengths=check_lengths), y)[0]

    def loss_and_grads(self, x, y, *, lengths=None, tbptt: int = 0, check_lengths: bool = True):
        """One full model step without the update: zero grads, forward, loss, backward. Returns the loss (0-d)."""
        if tbptt:
            raise UserError("a classifier reads each sequence's last state: train it with full BPTT (tbptt 0)")
        xp = self.backend.xp
        y = self.backend.asarray(y)  # host targets are moved in, like x
        self.zero_grad()
        logits = self.forward(x, lengths, check_lengths=check_lengths)
        loss, grad = self._loss(logits, y)
        self.backward(grad(xp, logits, y))
        return loss

    def correct(self, y):
        """The number of rows of y (B, K) the last forward classified right (0-d device array, no sync)."""
        xp, z = self.backend.xp, self._logits
        if self.K == 1:
            hit = (z[:, 0] > 0) == (y[:, 0] > 0.5)
        else:
            hit = xp.argmax(z, axis=-1) == xp.argmax(y, axis=-1)
        return xp.sum(xp.astype(hit, z.dtype))

    def probabilities(self, logits):
        """logits (B, K) -> class probabilities (B, C): [1 - σ(z), σ(z)] for two classes, softmax for more."""
        xp = self.backend.xp
        if self.K == 1:
            p1 = 0.5 * xp.tanh(0.5 * logits) + 0.5  # (B, 1)
            return xp.concat([1.0 - p1, p1], axis=-1)
        return xp.exp(losses.log_softmax(xp, logits))
