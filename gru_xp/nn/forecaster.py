"""A forecaster: recurrent layer(s) -> linear head on the last hidden state -> K outputs (or K x Q quantiles).

Legend: T time steps, B batch, I input features, H hidden, D directions, K horizon, Q quantile levels.
The head reads the last layer's final state of each direction (forward: h at T-1, reverse: h at 0), which is
what a sequence-to-one model wants; its gradient enters the recurrent layer as dstate_n.
With `quantiles` (levels in (0, 1), increasing) the linear head has K*Q outputs, read as raw (B, K, Q) and passed
through the non-crossing head (head.noncrossing_forward), and the loss is the pinball loss averaged over the levels.
loss="mae": the absolute error instead of the squared one. Every loss takes an optional weight (B, K) per output
(losses.py; panels mask and weight windows with it).
"""
from __future__ import annotations

import math
import operator

from . import head, losses
from ..errors import UserError
from ._model import RecurrentModel
from .recurrent import build_recurrent


class Forecaster(RecurrentModel):
    """Recurrent layer(s) -> linear head on the last hidden state of each direction -> K outputs, MSE loss; or, with
    quantiles, K x Q non-crossing quantiles and the pinball loss."""

    def __init__(self, cell: str = "gru", input_size: int = 1, hidden_size: int = 32, horizon: int = 1, *,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0, reset_after: bool = True,
                 nonlinearity: str = "tanh", quantiles=None, device="cpu", dtype="float32", seed: int = 0,
                 fast: bool = True, loss: str = "mse"):
        try:
            ok = not isinstance(horizon, bool) and operator.index(horizon) >= 1
        except TypeError:
            ok = False
        if not ok:
            raise UserError(f"horizon must be a positive integer, got {horizon!r}")
        self.cell = cell
        self.rnn = build_recurrent(cell, input_size, hidden_size, num_layers=num_layers,
                                   bidirectional=bidirectional, dropout=dropout, reset_after=reset_after,
                                   nonlinearity=nonlinearity, device=device, dtype=dtype, seed=seed, fast=fast)
        self.backend = self.rnn.backend
        # fast: the fast path (nn/fast) where the backend supports it; its outputs never leave the model, so its
        # caches may live in workspaces reused from step to step. fast=False: the reference cells.
        self.rnn.reuse_buffers = True
        self.horizon = horizon
        if loss not in POINT_LOSSES:
            raise UserError(f"loss must be one of {', '.join(POINT_LOSSES)}, got {loss!r}")
        self.point_loss = loss  # mse | mae (a quantile model's loss is the pinball loss)
        self.quantiles = _check_quantiles(quantiles)  # None: point forecasts (MSE); else Q increasing levels
        Q = 1 if self.quantiles is None else len(self.quantiles)
        self.taus = None if self.quantiles is None else self.backend.asarray(list(self.quantiles))  # (Q,)
        F = self.rnn.num_directions * hidden_size
        rng = self.backend.rng(None if seed is None else seed + 1)
        bound = 1.0 / math.sqrt(F)
        self.head = {"weight": self.backend.uniform(rng, (horizon * Q, F), bound),  # (K*Q, F), k-major
                     "bias": self.backend.uniform(rng, (horizon * Q,), bound)}  # (K*Q,)
        self.head_grads = {k: self.backend.zeros(v.shape) for k, v in self.head.items()}

    # flat views, rebuilt on each call so that load_state_dict (which swaps arrays) is never stale
    @property
    def params(self) -> dict:
        return {**{f"rnn.{k}": v for k, v in self.rnn.params.items()}, **{f"head.{k}": v for k, v in self.head.items()}}

    @property
    def grads(self) -> dict:
        return {**{f"rnn.{k}": v for k, v in self.rnn.grads.items()},
                **{f"head.{k}": v for k, v in self.head_grads.items()}}

    def load_state_dict(self, sd) -> None:
        self.check_state_dict(sd, "model")
        self.rnn.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("rnn.")})
        for k in self.head:
            self.head[k] = self.backend.asarray(sd[f"head.{k}"])

    def forward(self, x):
        """x (T, B, I) -> pred (B, K), or quantiles (B, K, Q) nondecreasing along Q."""
        xp = self.backend.xp
        _, state_n = self.rnn.forward(x)
        self._feat = self.last_hidden(state_n)  # (B, D*H)
        out = head.linear_forward(xp, self.head["weight"], self.head["bias"], self._feat)  # (B, K*Q)
        if self.quantiles is None:
            return out
        self._raw = xp.reshape(out, (out.shape[0], self.horizon, len(self.quantiles)))  # (B, K, Q)
        return head.noncrossing_forward(xp, self._raw)

    def backward(self, dpred, *, tbptt: int = 0, input_grad: bool = True):
        """dpred (B, K) (or (B, K, Q) with quantiles) -> accumulates every parameter gradient; returns dx (T, B, I)
        (None if not input_grad: then it is not computed)."""
        xp, rnn = self.backend.xp, self.rnn
        if self.quantiles is not None:
            draw = head.noncrossing_backward(xp, self._raw, dpred)  # (B, K, Q)
            dpred = xp.reshape(draw, (draw.shape[0], self.horizon * len(self.quantiles)))  # (B, K*Q)
        dfeat = head.linear_backward(xp, self.head["weight"], self._feat, dpred, self.head_grads["weight"],
                                     self.head_grads["bias"])  # (B, D*H)
        L, D, H = rnn.num_layers, rnn.num_directions, rnn.hidden_size
        B = dfeat.shape[0]
        dh_n = self.backend.zeros((L * D, B, H))
        for d in range(D):
            dh_n[(L - 1) * D + d, ...] = dfeat[:, d * H:(d + 1) * H]
        dstate = dh_n if rnn.cell.STATES == 1 else (dh_n, None)
        dx, _ = rnn.backward(None, dstate, tbptt=tbptt, input_grad=input_grad)
        return dx

    def _targets(self, y, weight):
        """y and weight as arrays of the model's namespace and device (host arrays are moved in, like x)."""
        be = self.backend
        return be.asarray(y), None if weight is None else be.asarray(weight)

    def objective(self, pred, y, weight=None):
        """The model's loss of a forward's output against targets y (B, K): MSE (or MAE), or pinball with quantiles;
        weight (B, K) per output or None."""
        xp = self.backend.xp
        _check_targets(pred, y, weight)
        if self.quantiles is not None:
            return losses.pinball(xp, pred, y, self.taus, weight)
        if self.point_loss == "mae":
            return losses.mae(xp, pred, y, weight)
        return losses.mse(xp, pred, y, weight)

    def objective_backward(self, pred, y, weight=None):
        """d objective / d pred, same shape as pred."""
        xp = self.backend.xp
        if self.quantiles is not None:
            return losses.pinball_backward(xp, pred, y, self.taus, weight)
        if self.point_loss == "mae":
            return losses.mae_backward(xp, pred, y, weight)
        return losses.mse_backward(xp, pred, y, weight)

    def loss(self, x, y, weight=None):
        """The loss (MSE, MAE, or pinball) of the current mode's forward (0-d device array), no gradients (and no
        backward cache)."""
        y, weight = self._targets(y, weight)
        with self.no_grad():
            return self.objective(self.forward(x), y, weight)

    def loss_and_grads(self, x, y, *, tbptt: int = 0, weight=None):
        """One full model step without the update: zero grads, forward, loss, backward. Returns the loss (0-d)."""
        y, weight = self._targets(y, weight)
        self.zero_grad()
        pred = self.forward(x)
        loss = self.objective(pred, y, weight)
        self.backward(self.objective_backward(pred, y, weight), tbptt=tbptt, input_grad=False)  # dx: nobody reads it
        return loss


POINT_LOSSES = ("mse", "mae")


def _check_targets(pred, y, weight) -> None:
    """y (and weight) must be (B, K) for predictions (B, K) or quantiles (B, K, Q): a clear error, not a broadcast."""
    want = tuple(pred.shape[:2])
    for name, a in (("targets y", y), ("weight", weight)):
        if a is not None and tuple(a.shape) != want:
            raise UserError(f"{name} has shape {tuple(a.shape)}; the model predicts {want} (batch, horizon) for "
                            f"this input: pass one row per sequence of x and one column per horizon step")


def _check_quantiles(quantiles):
    """None, or a tuple of increasing levels strictly inside (0, 1)."""
    if quantiles is None:
        return None
    try:
        qs = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        qs = ()
    if not qs or not all(0.0 < q < 1.0 for q in qs) or any(b <= a for a, b in zip(qs, qs[1:])):
        raise UserError(f"quantiles must be increasing levels strictly between 0 and 1, got {quantiles!r}")
    return qs
