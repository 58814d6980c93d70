"""Gradient checks a user can run on their own machine (`gru-xp check`) and the tests reuse.

Host-side code: it builds inputs with NumPy, runs the layer on any backend and compares on the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backend import resolve, to_host
from .nn.recurrent import Recurrent


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (with a floor so an all-zero reference does not divide by zero)."""
    a, b = np.asarray(to_host(a), dtype=np.float64), np.asarray(to_host(b), dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b), initial=0.0) / max(float(np.max(np.abs(b), initial=0.0)), 1e-300))


def _states(s):
    return s if isinstance(s, tuple) else (s,)


def random_problem(layer: Recurrent, T: int, B: int, seed: int = 0, scale: float = 1.0):
    """Random x, state0, dy and dstate_n (every output gets a random upstream gradient)."""
    rng = np.random.default_rng(seed)
    D, L, H = layer.num_directions, layer.num_layers, layer.hidden_size
    n = layer.cell.STATES
    x = rng.normal(size=(T, B, layer.input_size)) * scale
    s0 = tuple(rng.normal(size=(L * D, B, H)) * 0.5 for _ in range(n))
    dy = rng.normal(size=(T, B, D * H))
    ds = tuple(rng.normal(size=(L * D, B, H)) for _ in range(n))
    unpack = (lambda t: t[0]) if n == 1 else (lambda t: t)
    return x, unpack(s0), dy, unpack(ds)


def randomize_params(layer: Recurrent, seed: int = 0, scale: float = 0.6) -> None:
    """Non-trivial weights and random (non-zero) biases, so no bias path can hide."""
    rng = np.random.default_rng(seed + 1000)
    layer.load_state_dict({k: rng.normal(size=tuple(v.shape)) * scale for k, v in layer.params.items()})


def random_lengths(T: int, B: int, seed: int = 0) -> np.ndarray:
    """(B,) lengths in 1..T for a right-padded batch, with T itself and 1 among them when B allows (both edges)."""
    rng = np.random.default_rng(seed + 7)
    L = rng.integers(1, T + 1, size=B)
    L[0] = T
    if B > 1:
        L[1] = 1
    return L


def objective(layer: Recurrent, x, s0, dy, ds, lengths=None) -> float:
    """L = sum(y * dy) + sum over final states of sum(s_n * ds): its gradient is what backward computes."""
    y, sn = layer.forward(x, s0, lengths=lengths)
    total = float(np.sum(to_host(y) * dy))
    for s, d in zip(_states(sn), _states(ds)):
        total += float(np.sum(to_host(s) * d))
    return total


def finite_difference(layer: Recurrent, x, s0, dy, ds, eps: float = 1e-6, tbptt: int = 0, lengths=None) -> dict:
    """Central differences of `objective` for every parameter, x and state0, beside the analytic backward.
    Returns {name: (analytic, numeric)} as host float64 arrays. Use float64 and tiny shapes. lengths: variable
    lengths (B,) for every forward."""
    layer.zero_grad()
    layer.forward(x, s0, lengths=lengths)
    dx, ds0 = layer.backward(dy, ds, tbptt=tbptt)
    out = {k: (to_host(g).copy(), None) for k, g in layer.grads.items()}
    out["x"], out["state0"] = (to_host(dx), None), (np.stack([to_host(a) for a in _states(ds0)]), None)

    def numeric(get, put):
        base = get().copy()
        num = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            v = base.copy()
            v[i] = base[i] + eps
            put(v)
            fp = objective(layer, *current(), lengths=lengths)
            v[i] = base[i] - eps
            put(v)
            fm = objective(layer, *current(), lengths=lengths)
            num[i] = (fp - fm) / (2 * eps)
        put(base)
        return num

    xs = {"x": np.array(x, dtype=np.float64), "s0": np.stack([np.asarray(a, np.float64) for a in _states(s0)])}
    n = layer.cell.STATES

    def current():
        s = xs["s0"]
        return xs["x"], (s[0] if n == 1 else tuple(s)), dy, ds

    for k in list(layer.params):
        def put(v, k=k):
            layer.params[k] = layer.backend.asarray(v)
        out[k] = (out[k][0], numeric(lambda k=k: to_host(layer.params[k]).astype(np.float64), put))
    out["x"] = (out["x"][0], numeric(lambda: xs["x"], lambda v: xs.__setitem__("x", v)))
    out["state0"] = (out["state0"][0], numeric(lambda: xs["s0"], lambda v: xs.__setitem__("s0", v)))
    return out


@dataclass
class Row:
    check: str
    error: float
    limit: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.limit


def _layers(device: str):
    """(label, factory) for every cell and option `gru-xp check` proves."""
    from .nn.recurrent import GRU, LSTM, RNN

    yield "GRU reset_after=True", lambda: GRU(3, 4, reset_after=True, device=device, dtype="float64", seed=0)
    yield "GRU reset_after=False", lambda: GRU(3, 4, reset_after=False, device=device, dtype="float64", seed=0)
    yield "LSTM", lambda: LSTM(3, 4, device=device, dtype="float64", seed=0)
    yield "RNN tanh", lambda: RNN(3, 4, nonlinearity="tanh", device=device, dtype="float64", seed=0)


def _paths(make):
    """Yield (path name, layer) for the plain reference path and, where the namespace has one, the fast path
    (every layer's default, and what training uses): each set explicitly, both proven."""
    for fast in (False, True):
        layer = make()
        layer.fast = fast
        if fast and layer.fast_cell() is None:
            continue  # no fast path on this namespace: the reference row covers it
        yield ("fast" if fast else "reference"), layer


def _fd_rows(device: str) -> list[Row]:
    rows = []
    for label, make in _layers(device):
        for path, layer in _paths(make):
            randomize_params(layer, seed=1)
            res = finite_difference(layer, *random_problem(layer, T=4, B=2, seed=2))
            err = max(rel_err(a, n) for a, n in res.values())
            rows.append(Row(f"finite differences, {label}, {path} ({device}, float64)", err, 1e-7))
    return rows


def torch_parity(layer: Recurrent, x, s0, dy, ds, lengths=None) -> dict:
    """Run the same computation in torch (float64, autograd); return {name: rel error} for outputs and grads.
    lengths: torch's packed sequences (pack_padded_sequence(..., enforce_sorted=False), outputs padded back to T)."""
    import torch

    from .interop import to_torch_module

    tm = to_torch_module(layer)
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    st = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in _states(s0)]
    s0t = st[0] if len(st) == 1 else tuple(st)
    if lengths is None:
        yt, snt = tm(xt, s0t)
    else:
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(xt, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
                                      enforce_sorted=False)
        yp, snt = tm(packed, s0t)
        yt, _ = pad_packed_sequence(yp, total_length=xt.shape[0])
    obj = (yt * torch.tensor(dy)).sum()
    for s, d in zip(_states(snt), _states(ds)):
        obj = obj + (s * torch.tensor(np.asarray(d))).sum()
    obj.backward()
    layer.zero_grad()
    y, sn = layer.forward(x, s0, lengths=lengths)
    dx, ds0 = layer.backward(dy, ds)
    errs = {"y": rel_err(y, yt.detach().numpy()), "x": rel_err(dx, xt.grad.numpy())}
    for i, (a, b) in enumerate(zip(_states(sn), _states(snt))):
        errs[f"state_n[{i}]"] = rel_err(a, b.detach().numpy())
    for i, (a, b) in enumerate(zip(_states(ds0), st)):
        errs[f"state0[{i}]"] = rel_err(a, b.grad.numpy())
    for k, p in tm.named_parameters():
        errs[k] = rel_err(layer.grads[k], p.grad.numpy())
    return errs


def _torch_rows(device: str) -> list[Row]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    rows = []
    for label, make in _layers(device):
        if label == "GRU reset_after=False":
            continue  # torch.nn.GRU has only the reset_after=True convention
        for path, layer in _paths(make):
            randomize_params(layer, seed=3)
            errs = torch_parity(layer, *random_problem(layer, T=6, B=3, seed=4))
            mod = label.split()[0]
            rows.append(Row(f"PyTorch torch.nn.{mod} parity, {path} ({device}, float64)", max(errs.values()), 1e-10))
    for label, make in _layers(device):  # variable lengths: torch's packed sequences, stacked and bidirectional
        if label == "GRU reset_after=False":
            continue
        one = make()  # the same cell and options, stacked and bidirectional

        def stacked(cls=type(one), opts=one.cell_opts):
            return cls(3, 4, num_layers=2, bidirectional=True, device=device, dtype="float64", seed=0, **opts)

        for path, layer in _paths(stacked):
            randomize_params(layer, seed=5)
            errs = torch_parity(layer, *random_problem(layer, T=6, B=4, seed=6), lengths=random_lengths(6, 4, seed=7))
            rows.append(Row(f"PyTorch packed sequences, {label.split()[0]} 2-layer bidirectional, {path} "
                            f"({device}, float64)", max(errs.values()), 1e-10))
    return rows


def _device_rows(device: str) -> list[Row]:
    """The same seeded layer and data on NumPy and on `device`: outputs and gradients agree."""
    from .nn.recurrent import GRU

    rows = []
    for dtype, limit in (("float64", 1e-10), ("float32", 1e-4)):
        ref = GRU(4, 16, device="cpu", dtype=dtype, seed=7)
        dev = GRU(4, 16, device=device, dtype=dtype, seed=7)
        same = max(rel_err(dev.params[k], ref.params[k]) for k in ref.params)
        rows.append(Row(f"seeded init identical, cpu vs {device} ({dtype})", same, 0.0))
        x, s0, dy, ds = random_problem(ref, T=12, B=8, seed=5)
        errs = []
        for layer in (ref, dev):
            layer.zero_grad()
            y, sn = layer.forward(x.astype(dtype), s0.astype(dtype))
            dx, dh0 = layer.backward(dy.astype(dtype), ds.astype(dtype))
            errs.append([to_host(a) for a in (y, sn, dx, dh0, *layer.grads.values())])
        err = max(rel_err(a, b) for a, b in zip(errs[1], errs[0]))
        rows.append(Row(f"cpu vs {device} forward+backward ({dtype})", err, limit))
        rows += _device_fast_rows(device, dtype, limit)
    return rows


def _device_fast_rows(device: str, dtype: str, limit: float) -> list[Row]:
    """Where `device` has a fast path (CuPy: the fused kernels), each cell's fast path there against the
    reference on NumPy: outputs, states and every gradient, upstream gradients on all, truncated BPTT."""
    from .nn.recurrent import GRU, LSTM, RNN

    def cast(v):
        return tuple(a.astype(dtype) for a in v) if isinstance(v, tuple) else v.astype(dtype)

    rows = []
    for label, cls, kw in (("GRU reset_after=True", GRU, {"reset_after": True}),
                           ("GRU reset_after=False", GRU, {"reset_after": False}), ("LSTM", LSTM, {}),
                           ("RNN tanh", RNN, {"nonlinearity": "tanh"}), ("RNN relu", RNN, {"nonlinearity": "relu"})):
        ref = cls(4, 16, device="cpu", dtype=dtype, seed=7, **kw)
        dev = cls(4, 16, device=device, dtype=dtype, seed=7, **kw)
        dev.fast = True
        if dev.fast_cell() is None:
            return rows
        problem = [cast(v) for v in random_problem(ref, T=12, B=8, seed=5)]
        outs = []
        for layer in (ref, dev):
            layer.zero_grad()
            y, sn = layer.forward(problem[0], problem[1])
            dx, ds0 = layer.backward(problem[2], problem[3], tbptt=5)
            outs.append([to_host(a) for a in (y, *_states(sn), dx, *_states(ds0), *layer.grads.values())])
        err = max(rel_err(a, b) for a, b in zip(outs[1], outs[0]))
        rows.append(Row(f"cpu vs {device} forward+backward, {label}, fast ({dtype})", err, limit))
    return rows


def _cpu_kernel_rows() -> list[Row]:
    """With numba installed: the GRU (both conventions), the LSTM and the RNN on the fused CPU kernels (at a B·H
    where they run; stacked, bidirectional, variable lengths, upstream gradients on every output) against the
    reference cells, and bit for bit against the portable loops they replace; where NumPy's BLAS is reachable, the
    GRU's whole-sequence backward (_cpu.py, on _cpu_blas's GEMM) too, against the reference and against the portable
    loops (to rounding: it sums dW in another order). A row fails when its cell's backward kernel never ran."""
    from contextlib import contextmanager, nullcontext
    from functools import partial

    from .nn.fast import (counted_cpu_kernels, cpu_kernels, per_step_kernels, portable_loops,
                          whole_sequence_backward, whole_sequence_forward)
    from .nn.recurrent import GRU, LSTM, RNN

    T, B, H = 6, 32, 32
    who = cpu_kernels(B * H)
    if who is None:
        return []

    @contextmanager
    def counted_per_step():
        with counted_cpu_kernels() as calls, per_step_kernels():
            yield calls

    rows = []
    # (label, layer, backward kernel that must run, how the kernels run, bit for bit with the portable loops)
    cells = [("GRU", partial(GRU, reset_after=True), "gru_bwd_after", counted_per_step, True),
             ("GRU reset_after=False", partial(GRU, reset_after=False), "gru_bwd_before_zn", counted_cpu_kernels,
              True),
             ("LSTM", LSTM, "lstm_bwd", counted_per_step, True), ("RNN tanh", RNN, "rnn_bwd", counted_cpu_kernels,
                                                                  True),
             ("RNN relu", partial(RNN, nonlinearity="relu"), "rnn_bwd", counted_cpu_kernels, True)]
    if whole_sequence_backward("float64", "lstm"):
        cells.insert(3, ("LSTM, backward as one call on NumPy's BLAS", LSTM, "lstm_bwd_seq_float64",
                         counted_cpu_kernels, False))
    if whole_sequence_backward("float64", "gru"):
        cells.insert(1, ("GRU, backward as one call on NumPy's BLAS", partial(GRU, reset_after=True),
                         "gru_bwd_seq_float64", counted_cpu_kernels, False))
    for label, cls, backward_kernel, counting, exact in cells:
        out, calls = {}, {}
        for name, fast, ctx in (("reference", False, nullcontext), ("kernels", True, counting),
                                ("portable", True, portable_loops)):
            layer = cls(3, H, num_layers=2, bidirectional=True, device="cpu", dtype="float64", seed=0)
            layer.fast = fast
            randomize_params(layer, seed=8)
            x, s0, dy, ds = random_problem(layer, T=T, B=B, seed=9)
            with ctx() as counts:  # counts: the kernels' calls (counted_cpu_kernels), else None
                if counts is not None:
                    calls = counts
                layer.zero_grad()
                y, sn = layer.forward(x, s0, lengths=random_lengths(T, B, seed=10))
                dx, ds0 = layer.backward(dy, ds)
            out[name] = [to_host(a) for a in (y, *_states(sn), dx, *_states(ds0), *layer.grads.values())]
        ran = calls.get(backward_kernel, 0) > 0  # else the rows below would compare the portable loops to themselves
        err = max(rel_err(a, b) for a, b in zip(out["kernels"], out["reference"])) if ran else math.inf
        rows.append(Row(f"fused CPU kernels ({who}), {label} against the reference (cpu, float64)", err, 1e-10))
        if exact:
            diff = max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(out["kernels"], out["portable"])) \
                if ran else math.inf
            rows.append(Row(f"fused CPU kernels ({who}), {label} against the portable loops, bit for bit", diff, 0.0))
        else:
            err = max(rel_err(a, b) for a, b in zip(out["kernels"], out["portable"])) if ran else math.inf
            rows.append(Row(f"fused CPU kernels ({who}), {label} against the portable loops", err, 1e-12))
    for cell, cls in (("gru", GRU), ("lstm", LSTM)):
        if whole_sequence_forward("float32", cell):
            rows.append(_float32_forward_row(who, cell, cls, T, B, H))
    rows.append(_adam_row(who))
    rows += _batch_block_rows(who)
    return rows


def _batch_block_rows(who: str) -> list[Row]:
    """The GRU and the LSTM with their batch in column blocks (fast/blocks.py, 3 blocks forced whatever the thread
    count): in float64 against the reference cells (the composition: column slices, per-block grads summed, dx and
    the state grads joined), in float32 against the one call they split (float32 rounding). Stacked, bidirectional,
    upstream gradients on every output. A row fails when no block ran, or ran without the kernels."""
    from contextlib import nullcontext

    from .nn.fast import counted_cpu_kernels, forced_batch_blocks
    from .nn.recurrent import GRU, LSTM

    rows = []
    for label, cls in (("GRU", GRU), ("LSTM", LSTM)):
        for dt, against, limit in (("float64", "the reference", 1e-10), ("float32", "the one call", 2e-6)):
            out, blocked = {}, False
            for name in ("blocks", "other"):
                layer = cls(3, 32, num_layers=2, bidirectional=True, device="cpu", dtype=dt, seed=0)
                layer.fast = name == "blocks" or dt == "float32"
                randomize_params(layer, seed=8)
                x, s0, dy, ds = random_problem(layer, T=6, B=96, seed=9)  # blocks of 32: B·H for the kernels
                with forced_batch_blocks(3) if name == "blocks" else nullcontext(), counted_cpu_kernels() as calls:
                    layer.zero_grad()
                    y, sn = layer.forward(x, s0)
                    dx, ds0 = layer.backward(dy, ds)
                if name == "blocks":  # the blocks ran, on the kernels
                    blocked = type(layer.caches[0]).__name__ == "BlockedCache" and any(
                        k.startswith(label.lower() + "_") for k in calls)  # the cell's own kernels
                out[name] = [to_host(a) for a in (y, *_states(sn), dx, *_states(ds0), *layer.grads.values())]
            err = max(rel_err(a, b) for a, b in zip(out["blocks"], out["other"])) if blocked else math.inf
            rows.append(Row(f"fused CPU kernels ({who}), {label} with its batch in 3 blocks against {against} (cpu, "
                            f"{dt})", err, limit))
    return rows


def _adam_row(who: str) -> Row:
    """Adam's fused update (_cpu_glue.adam_update) against Adam.step's NumPy operations, bit for bit: a float32
    model's parameters, four steps of random grads of very different scales, weight decay on. Fails when the fused
    update never ran."""
    from .nn.fast import counted_cpu_kernels, portable_loops
    from .nn.optim import Adam

    xp, rng = resolve("cpu", "float32").xp, np.random.default_rng(11)
    shapes = {"w": (96, 32), "b": (96,), "head": (4, 32)}
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    params = {side: {k: v.copy() for k, v in start.items()} for side in "ab"}  # a: fused, b: NumPy's operations
    opts, ran = {"a": Adam(0.01, weight_decay=1e-3), "b": Adam(0.01, weight_decay=1e-3)}, True
    for _ in range(4):
        grads = {k: (rng.standard_normal(s) * rng.choice([1e-6, 1.0, 30.0])).astype(np.float32)
                 for k, s in shapes.items()}
        with counted_cpu_kernels() as calls:
            opts["a"].step(xp, params["a"], grads)
        ran = ran and calls.get("adam_update", 0) == len(shapes)
        with portable_loops():
            opts["b"].step(xp, params["b"], grads)
    diff = max(float(np.max(np.abs(params["a"][k] - params["b"][k]))) for k in shapes) if ran else math.inf
    return Row(f"fused CPU kernels ({who}), Adam's update against its NumPy operations (float32), bit for bit", diff,
               0.0)


def _float32_forward_row(who: str, cell: str, cls, T: int, B: int, H: int) -> Row:
    """The float32 forward as one call of `cell` (its own tanh, tanh32), outputs and grads through the backward on its
    cache, against the float64 reference cells on the same weights and data (the float32 ones, exactly): float32's
    rounding, not the reference's bits."""
    from .nn.fast import counted_cpu_kernels

    layers = {dt: cls(3, H, num_layers=2, bidirectional=True, device="cpu", dtype=dt, seed=0)
              for dt in ("float32", "float64")}
    randomize_params(layers["float32"], seed=8)
    layers["float64"].load_state_dict({k: np.asarray(to_host(v), np.float64)
                                       for k, v in layers["float32"].params.items()})
    layers["float64"].fast = False
    problem = [tuple(np.asarray(v, np.float32) for v in a) if isinstance(a, tuple) else np.asarray(a, np.float32)
               for a in random_problem(layers["float32"], T=T, B=B, seed=9)]  # float32 values, held as given
    out, ran = {}, False
    for dt, layer in layers.items():
        x, s0, dy, ds = (tuple(v.astype(dt) for v in a) if isinstance(a, tuple) else a.astype(dt) for a in problem)
        with counted_cpu_kernels() as calls:
            layer.zero_grad()
            y, sn = layer.forward(x, s0)
            dx, ds0 = layer.backward(dy, ds)
        ran = ran or calls.get(f"{cell}_fwd_seq_float32", 0) > 0
        out[dt] = [to_host(a) for a in (y, *_states(sn), dx, *_states(ds0), *layer.grads.values())]
    err = max(rel_err(a, b) for a, b in zip(out["float32"], out["float64"])) if ran else math.inf
    return Row(f"fused CPU kernels ({who}), {cell.upper()} float32 forward as one call (tanh32) against the reference "
               "(cpu, float64)", err, 1e-5)


def run_checks(device: str = "cpu") -> list[Row]:
    be = resolve(device, "float64", verbose=True)
    spec = be.spec  # keeps cuda:N and strict:NAME
    rows = _fd_rows(spec) + _torch_rows("cpu") + _cpu_kernel_rows()
    if spec != "cpu":
        rows += _device_rows(spec)
    return rows


def format_rows(rows: list[Row]) -> str:
    w = max(len(r.check) for r in rows)
    lines = [f"{'check':<{w}}  {'max error':>10}  {'limit':>8}  ok", "-" * (w + 28)]
    for r in rows:
        lines.append(f"{r.check:<{w}}  {r.error:>10.2e}  {r.limit:>8.0e}  {'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
