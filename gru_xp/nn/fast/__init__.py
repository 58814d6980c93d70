"""The fast path: twins of the reference cells (nn/gru.py, nn/lstm.py, nn/rnn.py), name for name, same contract,
built for speed and tested against them. `fast_cell_for` picks the twin of a reference cell module.

Legend: T steps, B batch, I inputs, H hidden; a slot is one (layer, direction) of a stacked layer.
"""
from __future__ import annotations

from . import gru, lstm, rnn
from ._common import Workspace, supports_out


class FastCell:
    """A cell with the reference module's interface (GATES, STATES, forward, backward) plus a `slot` keyword:
    one Workspace per (layer, direction) slot. `reuse` keeps caches and outputs in the workspaces too."""

    def __init__(self, ref, fwd, bwd, reuse: bool = False, fwd_opts=None):
        self.ref, self._fwd, self._bwd, self.reuse = ref, fwd, bwd, reuse
        self._fwd_opts = dict(fwd_opts or {})
        self.GATES, self.STATES = ref.GATES, ref.STATES
        self.workspaces: dict = {}

    def _ws(self, slot) -> Workspace:
        ws = self.workspaces.get(slot)
        if ws is None:
            ws = self.workspaces[slot] = Workspace()
        return ws

    def forward(self, xp, p, x, state0, *, slot=0, keep_cache: bool = True, **opts):
        """keep_cache=False: a forward without gradients (only the states are stored; the cache is None)."""
        return self._fwd(xp, p, x, state0, ws=self._ws(slot), reuse=self.reuse, keep_cache=keep_cache,
                         **self._fwd_opts, **opts)

    def backward(self, xp, p, cache, dy, dstate_T, g, *, tbptt: int = 0, input_grad: bool = True, slot=0, **kw):
        """kw: the cell's own extra keywords (the LSTM's dc_steps)."""
        return self._bwd(xp, p, cache, dy, dstate_T, g, tbptt=tbptt, input_grad=input_grad, ws=self._ws(slot),
                         reuse=self.reuse, **kw)

    def nbytes(self) -> int:
        return sum(ws.nbytes() for ws in self.workspaces.values())


def fast_cell_for(cell_module, xp, *, reuse: bool = False):
    """The fast twin of a reference cell module for namespace xp, or None (then the reference runs)."""
    if not supports_out(xp):
        return None
    name = getattr(cell_module, "__name__", "").rsplit(".", 1)[-1]
    impl = _IMPLS.get(name)
    if impl is None:
        return None
    fwd, bwd, fwd_opts = impl
    return FastCell(cell_module, fwd, bwd, reuse=reuse, fwd_opts=fwd_opts)


# (forward, backward, forward options): the GRU keeps its internal cache arrays in the slot's workspace (a layer
# holds a cache only until its next forward; see gru_forward's private_cache)
_IMPLS = {"gru": (gru.gru_forward, gru.gru_backward, {"private_cache": True}),
          "lstm": (lstm.lstm_forward, lstm.lstm_backward, {}), "rnn": (rnn.rnn_forward, rnn.rnn_backward, {})}
