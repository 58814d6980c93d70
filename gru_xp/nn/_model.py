"""What every model built on a recurrent stack shares (forecaster.py, classifier.py): the state dict of its flat
parameter views, zero_grad, train/eval, no_grad, and the features a head reads (the last layer's final states).

A subclass sets `self.backend` and `self.rnn` (recurrent.build_recurrent) and defines the `params` and `grads`
properties (flat name -> array, rebuilt on each call so that load_state_dict, which swaps arrays, is never stale).
"""
from __future__ import annotations

import contextlib

from ..errors import UserError


class RecurrentModel:
    def state_dict(self) -> dict:
        xp = self.backend.xp
        return {k: xp.asarray(v, copy=True) for k, v in self.params.items()}

    def check_state_dict(self, sd, what: str) -> None:
        """A clear error unless `sd` maps exactly this model's parameter names to arrays of their shapes."""
        if not hasattr(sd, "keys") or not hasattr(sd, "__getitem__"):
            raise UserError(f"state dict must be a mapping of parameter names to arrays, got {type(sd).__name__}; "
                            "pass model.state_dict() or the arrays of a model.npz")
        want = {k: tuple(v.shape) for k, v in self.params.items()}
        bad = sorted(set(want) ^ set(sd)) or [k for k in want if tuple(getattr(sd[k], "shape", ())) != want[k]]
        if bad:
            raise UserError(f"checkpoint does not fit this {what} (mismatch in {bad[:4]}); "
                            "train a new one or load it with the settings it was trained with")

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g *= 0.0

    def train(self, mode: bool = True):
        self.rnn.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def no_grad(self):
        """Forwards inside keep no backward cache (inference: predict, forecast, the validation loss)."""
        with self.rnn.no_grad():
            yield self

    def last_hidden(self, state_n):
        """The last layer's final hidden state of each direction, concatenated: state_n -> (B, D*H)."""
        h_n = state_n if self.rnn.cell.STATES == 1 else state_n[0]  # (L*D, B, H)
        D = self.rnn.num_directions
        last = [h_n[h_n.shape[0] - D + d, ...] for d in range(D)]  # D x (B, H)
        return last[0] if D == 1 else self.backend.xp.concat(last, axis=-1)  # (B, D*H)
