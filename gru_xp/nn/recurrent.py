"""The one wrapper around the cells: stacks layers, runs the reverse direction, applies dropout between layers,
masks variable-length batches, names parameters like torch. Written once, shared by GRU, LSTM and RNN.

Legend: T time steps, B batch, I input features, H hidden units, L layers, D directions (1 or 2).
    forward:  x (T, B, I), state0, lengths=None -> y (T, B, D*H), state_n; each state array is (L*D, B, H),
              index k*D + d
    backward: dy (T, B, D*H), dstate_n -> dx (T, B, I), dstate0; parameter grads accumulate into `self.grads`
Parameter names are torch's: weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, suffix _reverse for d=1.

Variable lengths (lengths (B,) integers, 1 <= L_b <= T, right padding): torch's packed sequences
(pack_padded_sequence(..., enforce_sorted=False)), done here once for every cell and both paths, with no new cell
math. Right padding puts the padded steps after the real ones, so a cell run over all T steps computes every real
step exactly; only what is read out changes:
  * outputs are masked: y_t = 0 at padded steps (t >= L_b), so the next layer and the loss see zeros there;
  * the final state is each sequence's state at its own last step: gathered from y at t = L_b - 1 (y_t is h_t;
    the LSTM's c from its cache's c);
  * the reverse direction runs on each sequence reversed within its own length, x'[t, b] = x[L_b - 1 - t, b] for
    t < L_b (padded steps stay in place): again right-padded, and the same gather undoes it (its own inverse);
  * backward: dy is masked the same way and the final-state gradient dh_n is folded into dy at t = L_b - 1 (y_t is
    h_t, so this is the same gradient); the LSTM's dc_n has no output to fold into and enters its cell backward as
    a per-step term (dc_steps, nonzero only at t = L_b - 1). The cells then start from a zero state gradient at T, so
    every padded step carries exactly zero gradient: dx is zero there and adds nothing to the parameter grads.
  * dropout between layers draws one host generator per layer from the layer's generator and fills its (T, B, D*H)
    mask in time-major order, so a real step's mask does not depend on how much padding follows it.
With lengths=None none of this runs (the code path is the plain one). Truncated BPTT counts steps from T and is not
combined with lengths.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from . import gru as gru_cell
from . import lstm as lstm_cell
from . import rnn as rnn_cell
from ._cell import CellParams
from .fast import fast_cell_for
from ..backend import Backend, resolve
from ..errors import UserError


@dataclass
class Packing:
    """Index arrays of one right-padded variable-length batch (built once per forward with lengths)."""

    lengths: Any  # (B,) int64 on the layer's device
    valid: Any  # (T, B, 1) 1 at real steps (t < L_b), 0 at padded ones, the layer's dtype
    last: Any  # (T, B, 1) 1 at each sequence's last real step (t = L_b - 1)
    rev: Any  # (T*B,) flat index of step t of sequence b reversed within its own length (padded steps stay)
    final: Any  # (B,) flat index (L_b - 1) * B + b of each sequence's last real step

    def reverse(self, xp, a):
        """a (T, B, F) -> each sequence reversed within its own length (its own inverse)."""
        T, B, F = a.shape
        return xp.reshape(xp.take(xp.reshape(a, (T * B, F)), self.rev, axis=0), (T, B, F))

    def at_last(self, xp, a):
        """a (T, B, F) -> (B, F): each sequence's value at its own last real step."""
        T, B, F = a.shape
        return xp.take(xp.reshape(a, (T * B, F)), self.final, axis=0)


def integer_lengths(be: Backend, lengths, B: int):
    """lengths (B,) of integers (host or device, any namespace) -> int64 array on the backend's device (no sync)."""
    dt = getattr(lengths, "dtype", None)
    if dt is None:
        ok = isinstance(lengths, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in lengths)
    else:
        ok = "int" in str(dt)
    if not ok:
        raise UserError(f"lengths must be integers (one per sequence), got {str(dt) if dt is not None else lengths!r}")
    L = be.asarray(lengths, dtype=be.xp.int64)
    if tuple(L.shape) != (B,):
        raise UserError(f"lengths must have shape ({B},) (one per sequence of the batch), got {tuple(L.shape)}")
    return L


def make_packing(be: Backend, lengths, T: int, B: int, check: bool = True) -> Packing:
    """The Packing of a batch; check=True also checks 1 <= L_b <= T (one device->host read; callers that checked
    the lengths on the host already, like train.fit, pass check=False and the batch loop never syncs)."""
    xp, dev = be.xp, be.device
    L = integer_lengths(be, lengths, B)
    if check and B and bool(xp.any((L < 1) | (L > T))):
        raise UserError(f"lengths must be between 1 and T={T} (right padding: each sequence's real steps first), got "
                        f"values from {int(xp.min(L))} to {int(xp.max(L))}")
    t = xp.reshape(xp.arange(T, dtype=xp.int64, device=dev), (T, 1))  # (T, 1)
    Lr = xp.reshape(L, (1, B))  # (1, B)
    b_flat = xp.arange(B, dtype=xp.int64, device=dev)  # (B,)
    b = xp.reshape(b_flat, (1, B))  # (1, B)
    real = t < Lr  # (T, B)
    rev_t = xp.where(real, Lr - 1 - t, t)  # (T, B)
    return Packing(lengths=L, valid=xp.reshape(xp.astype(real, be.dtype), (T, B, 1)),
                   last=xp.reshape(xp.astype(t == Lr - 1, be.dtype), (T, B, 1)),
                   rev=xp.reshape(rev_t * B + b, (T * B,)), final=(L - 1) * B + b_flat)


class Recurrent:
    cell: Any = None  # the cell module: GATES, STATES, forward, backward
    mode: str = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, *, device="cpu", dtype="float32", seed: int | None = 0, fast: bool = True,
                 **cell_opts):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        try:
            ok = not isinstance(dropout, bool) and 0.0 <= float(dropout) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional, self.dropout = bool(bidirectional), float(dropout)
        self.num_directions = 2 if bidirectional else 1
        self.cell_opts = cell_opts
        self.backend: Backend = resolve(device, dtype)
        self.training = True
        self.rng = self.backend.rng(seed)  # host generator: init, then dropout masks (saved by resume state)
        bound = 1.0 / math.sqrt(hidden_size)
        self.params = {name: self.backend.uniform(self.rng, shape, bound) for name, shape in self.param_shapes()}
        self.grads = {name: self.backend.zeros(shape) for name, shape in self.param_shapes()}
        self.caches: list = []  # the last forward's cell caches, index k*D + d (read by backward, diagnostics)
        self._masks: list = []
        self._packing: Packing | None = None  # the last forward's variable-length index arrays (None: all T steps)
        self.record_dh = False  # backward(record=None) follows this flag (diagnostics through a Forecaster)
        # fast (the default): nn/fast's twin of the cell where the namespace supports it (NumPy, CuPy); False: the
        # reference cells. Either way every output a caller receives is its own array: only reuse_buffers=True
        # (set by the Forecaster, whose layer outputs never leave it) keeps caches/outputs in reused workspaces.
        self.fast = bool(fast)
        self.reuse_buffers = False
        self.grad_enabled = True  # False inside no_grad(): forwards keep no backward cache
        self._cacheless = False  # the last forward ran without gradients (backward is an error)
        self._fast_impl = None
        self.last_dh: list | None = None

    # ---- parameters: torch's names, shapes and order -------------------------------------------------------
    def param_shapes(self):
        G, H = self.cell.GATES * self.hidden_size, self.hidden_size
        for k in range(self.num_layers):
            in_k = self.input_size if k == 0 else H * self.num_directions
            for sfx in ("", "_reverse")[: self.num_directions]:
                yield f"weight_ih_l{k}{sfx}", (G, in_k)
                yield f"weight_hh_l{k}{sfx}", (G, H)
                yield f"bias_ih_l{k}{sfx}", (G,)
                yield f"bias_hh_l{k}{sfx}", (G,)

    def _cell_params(self, store: dict, k: int, d: int) -> CellParams:
        sfx = "_reverse" if d else ""
        return CellParams(store[f"weight_ih_l{k}{sfx}"], store[f"weight_hh_l{k}{sfx}"],
                          store[f"bias_ih_l{k}{sfx}"], store[f"bias_hh_l{k}{sfx}"])

    def state_dict(self) -> dict:
        """{torch name: array} — copies, so later training does not change an exported state."""
        xp = self.backend.xp
        return {k: xp.asarray(v, copy=True) for k, v in self.params.items()}

    def load_state_dict(self, sd) -> None:
        """Accepts NumPy arrays, arrays of any namespace, or torch tensors, keyed like torch.nn.{GRU,LSTM,RNN}."""
        if not hasattr(sd, "keys"):
            raise UserError(f"state dict must be a mapping of parameter names to arrays, got {type(sd).__name__}")
        expected = dict(self.param_shapes())
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        if missing or unexpected:
            raise UserError(f"state dict does not match {self!r}: missing {missing or 'none'}, unexpected "
                            f"{unexpected or 'none'}; export it from a layer built with the same sizes")
        new = {}
        for k, shape in expected.items():
            a = sd[k]
            got = tuple(getattr(a, "shape", ()))
            if got != tuple(shape):
                raise UserError(f"state dict entry {k!r} has shape {got}, this layer needs {tuple(shape)}; "
                                f"check input_size/hidden_size/num_layers/bidirectional")
            new[k] = self.backend.asarray(a)
        self.params.update(new)  # all or nothing: nothing changes when one entry is wrong

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g *= 0.0

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def no_grad(self):
        """`with layer.no_grad(): y, s = layer(x)`: forwards inside keep no backward cache (the fast path stores
        only the states; the reference path drops its cache), for inference; backward() after one is an error."""
        before = self.grad_enabled
        self.grad_enabled = False
        try:
            yield self
        finally:
            self.grad_enabled = before

    # ---- forward, then backward ---------------------------------------------------------------------------
    def _state0(self, state0, B, *, keep_none: bool = False):
        """None -> zeros (keep_none: None, which every cell's backward reads as zeros); else each array
        (L*D, B, H) moved to this backend."""
        n = self.cell.STATES
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if state0 is None:
            return tuple(None if keep_none else self.backend.zeros(shape) for _ in range(n))
        parts = tuple(state0) if isinstance(state0, (tuple, list)) else (state0,)
        if len(parts) != n:
            raise UserError(f"{type(self).__name__} state must be {n} array(s) of shape {shape}, got {len(parts)}")
        out = []
        for a in parts:
            if a is None:
                out.append(None if keep_none else self.backend.zeros(shape))
                continue
            if tuple(a.shape) != shape:
                raise UserError(f"initial state has shape {tuple(a.shape)}, expected {shape} (layers*directions, B, H)")
            out.append(self.backend.asarray(a))
        return tuple(out)

    def fast_cell(self):
        """nn/fast's twin of self.cell (same math, workspaces, out=) when self.fast and the namespace supports it,
        else None (the reference cell runs)."""
        if not self.fast:
            return None
        fc = self._fast_impl
        if fc is None or fc[0] != (self.cell, self.backend.xp, self.reuse_buffers):
            fc = self._fast_impl = ((self.cell, self.backend.xp, self.reuse_buffers),
                                    fast_cell_for(self.cell, self.backend.xp, reuse=self.reuse_buffers))
        return fc[1]

    def forward(self, x, state0=None, lengths=None, *, check_lengths: bool = True, **kw):
        """x (T, B, I) -> y (T, B, D*H), state_n (GRU/RNN: array (L*D, B, H); LSTM: (h_n, c_n)).
        lengths: None (every sequence has T steps) or (B,) integers, 1 <= L_b <= T, right padding: torch's packed
        sequences (outputs zero past each length, state_n at each sequence's own last step; see the module doc).
        check_lengths=False skips the range check (one device->host read) for lengths checked on the host."""
        state0 = kw.pop("h0", state0)
        if kw:
            raise TypeError(f"unexpected arguments {sorted(kw)}")
        xp, be = self.backend.xp, self.backend
        x = be.asarray(x)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise UserError(f"input must be (T, B, {self.input_size}) time-major, got shape {tuple(x.shape)}")
        T, B, _ = x.shape
        if T == 0:
            raise UserError("input has no time steps (shape (0, B, I)): a recurrent layer needs T >= 1")
        s0 = self._state0(state0, B)
        pk = self._packing = None if lengths is None else make_packing(be, lengths, T, B, check_lengths)
        D = self.num_directions
        self.caches, self._masks = [], []
        finals = [[None] * (self.num_layers * D) for _ in range(self.cell.STATES)]
        drop = self.training and self.dropout > 0.0
        mask_rngs = None
        if pk is not None and drop and self.num_layers > 1:  # one generator per layer: masks independent of T
            mask_rngs = [be.rng(int(v)) for v in self.rng.integers(0, 2 ** 62, size=self.num_layers - 1)]
        inp = x  # (T, B, I) then (T, B, D*H)
        fc = self.fast_cell()
        keep = self.grad_enabled  # no_grad(): no backward cache (the fast cells store only the states)
        # with lengths the LSTM's c at each sequence's last step is read from the cache: its cells keep it then, and
        # the wrapper drops it after the forward
        lstm_packed = pk is not None and self.cell.STATES == 2
        fast_opts = {} if fc is None or keep or lstm_packed else {"keep_cache": False}
        for k in range(self.num_layers):
            outs = []
            for d in range(D):
                p = self._cell_params(self.params, k, d)
                if pk is None:
                    xin = inp if d == 0 else xp.flip(inp, axis=0)
                else:
                    xin = inp if d == 0 else pk.reverse(xp, inp)
                opts = self.cell_opts if fc is None else {**self.cell_opts, **fast_opts, "slot": k * D + d}
                y_d, sT, cache = (fc or self.cell).forward(xp, p, xin, tuple(s[k * D + d, ...] for s in s0),
                                                           **opts)
                if pk is None:
                    outs.append(y_d if d == 0 else xp.flip(y_d, axis=0))  # (T, B, H)
                else:
                    sT = (pk.at_last(xp, y_d),) + ((pk.at_last(xp, cache.c[1:, ...]),) if self.cell.STATES == 2
                                                   else ())  # each (B, H)
                    y_d = y_d * pk.valid  # (T, B, H) zeros at padded steps
                    outs.append(y_d if d == 0 else pk.reverse(xp, y_d))
                if keep:
                    self.caches.append(cache)
                for i, s in enumerate(sT):
                    finals[i][k * D + d] = s
            y = outs[0] if D == 1 else xp.concat(outs, axis=-1)  # (T, B, D*H)
            if drop and k < self.num_layers - 1:
                rng = self.rng if mask_rngs is None else mask_rngs[k]
                mask = be.dropout_mask(rng, (T, B, D * self.hidden_size), self.dropout)  # (T, B, D*H)
                self._masks.append(mask)
                y = y * mask
            else:
                self._masks.append(None)
            inp = y
        states = tuple(xp.stack(f, axis=0) for f in finals)  # each (L*D, B, H)
        self._T, self._B = T, B
        self._cacheless = not keep
        return inp, (states[0] if self.cell.STATES == 1 else states)

    def _packed_upstream(self, dy_d, ds_slot, d: int):
        """Variable lengths: the cell's upstream gradients for one (layer, direction), in the cell's own time order.
        dy_d (T, B, H) or None; ds_slot: this slot's (dh_n, [dc_n]) each (B, H) or None -> (dy for the cell,
        a zero dstate_T, extra cell keywords). dh_n enters dy at each last step; the LSTM's dc_n enters as dc_steps."""
        xp, pk = self.backend.xp, self._packing
        if dy_d is not None:
            dy_d = (dy_d if d == 0 else pk.reverse(xp, dy_d)) * pk.valid  # (T, B, H) zeros at padded steps
        dh = ds_slot[0]
        if dh is not None:
            fold = pk.last * xp.reshape(dh, (1,) + tuple(dh.shape))  # (T, B, H)
            dy_d = fold if dy_d is None else dy_d + fold
        extra = {}
        if self.cell.STATES == 2 and ds_slot[1] is not None:
            dc = ds_slot[1]
            extra["dc_steps"] = pk.last * xp.reshape(dc, (1,) + tuple(dc.shape))  # (T, B, H)
        return dy_d, tuple(None for _ in ds_slot), extra

    def backward(self, dy, dstate_n=None, *, tbptt: int = 0, record: bool | None = None, input_grad: bool = True,
                 **kw):
        """Gradients of the last forward. dy (T, B, D*H) (None = zeros), dstate_n like state_n (None = zeros).
        Accumulates parameter grads into self.grads; returns dx (T, B, I), dstate0 (like state0).
        input_grad=False: dx (the grad of the input x) is not computed and None is returned in its place; the
        parameter grads are the same (training needs only them: the first layer skips its dx GEMM).
        record (default: self.record_dh): also store dL/dh_t of every layer in self.last_dh, a list over layers
        of (T, B, D*H) arrays in time order (diagnostics)."""
        dstate_n = kw.pop("dh_n", dstate_n)
        if kw:
            raise TypeError(f"unexpected arguments {sorted(kw)}")
        if self._cacheless:
            raise RuntimeError("backward() after a forward under no_grad(): that forward kept no backward cache; "
                               "run the forward outside no_grad() to compute gradients")
        if not self.caches:
            raise RuntimeError("backward() called before forward()")
        xp, be = self.backend.xp, self.backend
        D, H, T, B = self.num_directions, self.hidden_size, self._T, self._B
        record = self.record_dh if record is None else bool(record)
        fc = None if record else self.fast_cell()  # diagnostics (dh_record) run the reference backward
        dy = None if dy is None else be.asarray(dy)  # (T, B, D*H); None = zeros, which every cell accepts
        if dy is not None and tuple(dy.shape) != (T, B, D * H):
            raise UserError(f"dy has shape {tuple(dy.shape)}, the last forward produced {(T, B, D * H)}")
        dsT = self._state0(dstate_n, B, keep_none=True)  # None entries stay None: the cells read them as zeros
        pk = self._packing
        if pk is not None and tbptt:
            raise UserError("truncated BPTT (tbptt) counts steps from T and cannot be combined with lengths; "
                            "use tbptt=0 with variable-length batches")
        dstate0 = [[None] * (self.num_layers * D) for _ in range(self.cell.STATES)]
        last_dh = [None] * self.num_layers
        for k in range(self.num_layers - 1, -1, -1):
            if self._masks[k] is not None and dy is not None:
                dy = dy * self._masks[k]
            dx = None
            rec = [be.empty((T, B, H)) for _ in range(D)] if record else [None] * D
            for d in range(D):
                dy_d = None if dy is None else dy[:, :, d * H:(d + 1) * H]  # (T, B, H)
                ds_slot = tuple(None if s is None else s[k * D + d, ...] for s in dsT)
                g = self._cell_params(self.grads, k, d)
                p = self._cell_params(self.params, k, d)
                extra = {"dh_record": rec[d]} if record else ({} if fc is None else {"slot": k * D + d})
                if pk is None:
                    if d and dy_d is not None:
                        dy_d = xp.flip(dy_d, axis=0)
                else:
                    dy_d, ds_slot, more = self._packed_upstream(dy_d, ds_slot, d)
                    extra.update(more)
                need_dx = input_grad or k > 0  # the layers above the first need it: it is the next dy
                dx_d, ds0 = (fc or self.cell).backward(xp, p, self.caches[k * D + d], dy_d, ds_slot,
                                                       g, tbptt=tbptt, input_grad=need_dx, **extra)
                if need_dx:
                    if d:
                        dx_d = xp.flip(dx_d, axis=0) if pk is None else pk.reverse(xp, dx_d)
                    dx = dx_d if dx is None else dx + dx_d  # (T, B, in_k)
                for i, s in enumerate(ds0):
                    dstate0[i][k * D + d] = s
            if record:
                r = [rec[0]] if D == 1 else [rec[0], xp.flip(rec[1], axis=0) if pk is None
                                             else pk.reverse(xp, rec[1])]
                last_dh[k] = r[0] if D == 1 else xp.concat(r, axis=-1)  # (T, B, D*H)
            dy = dx
        if record:
            self.last_dh = last_dh
        # one slot: each cell returns new arrays (dstate0 of this call alone), so a view with the slot axis added
        # serves instead of stack's copy
        states = tuple(xp.expand_dims(f[0], axis=0) if len(f) == 1 else xp.stack(f, axis=0) for f in dstate0)
        return dy, (states[0] if self.cell.STATES == 1 else states)

    __call__ = forward

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.cell_opts.items())
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}{extra}, device={self.backend.name!r}, "
                f"dtype={self.backend.dtype_name!r})")


class GRU(Recurrent):
    """Gated recurrent unit, torch.nn.GRU's parameters and semantics (time-major). See gru.py for the math."""

    cell = gru_cell
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, reset_after: bool = True, *, device="cpu", dtype="float32",
                 seed: int | None = 0, fast: bool = True):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout, device=device, dtype=dtype,
                         seed=seed, fast=fast, reset_after=bool(reset_after))

    @property
    def reset_after(self) -> bool:
        return self.cell_opts["reset_after"]


class LSTM(Recurrent):
    """Long short-term memory, torch.nn.LSTM's parameters (gate rows i, f, g, o) and semantics (time-major).
    State is a pair (h, c), each (L*D, B, H). See lstm.py for the math."""

    cell = lstm_cell
    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, *, device="cpu", dtype="float32", seed: int | None = 0,
                 fast: bool = True):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout, device=device, dtype=dtype,
                         seed=seed, fast=fast)


class RNN(Recurrent):
    """Elman RNN, torch.nn.RNN's parameters and semantics (time-major), nonlinearity "tanh" or "relu".
    See rnn.py for the math."""

    cell = rnn_cell
    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, nonlinearity: str = "tanh", *, device="cpu", dtype="float32",
                 seed: int | None = 0, fast: bool = True):
        if nonlinearity not in rnn_cell.NONLINEARITIES:
            raise UserError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout, device=device, dtype=dtype,
                         seed=seed, fast=fast, nonlinearity=nonlinearity)

    @property
    def nonlinearity(self) -> str:
        return self.cell_opts["nonlinearity"]


CELLS = {"gru": GRU, "lstm": LSTM, "rnn": RNN}  # the one registry of cells: config validation and models derive from it


def build_recurrent(cell: str, input_size, hidden_size, **kw) -> Recurrent:
    """The registry's layer for `cell`; options another cell does not have (reset_after, nonlinearity) are dropped."""
    if cell not in CELLS:
        raise UserError(f"unknown cell {cell!r}: use one of {', '.join(CELLS)}")
    if cell != "gru":
        kw.pop("reset_after", None)
    if cell != "rnn":
        kw.pop("nonlinearity", None)
    return CELLS[cell](input_size, hidden_size, **kw)
