"""The child process of `gru-xp bench` (gru_xp/bench.py): its thread counts are fixed by environment variables
before NumPy is imported; it times gru_xp against torch in interleaved blocks and prints one JSON line.
Host-side logic only. Run as `python -m gru_xp.bench_worker '<json config>'` by bench.run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time

# (name, T, B, I, H, target ratio of the 1-thread training step on CPU: issue 6's table)
CPU_ROWS = [
    ("H32", 50, 64, 1, 32, 0.35),
    ("H64", 50, 64, 1, 64, 0.35),
    ("seed", 10, 256, 1, 70, 0.6),
    ("H128", 100, 128, 8, 128, 0.6),
    ("H256", 100, 128, 8, 256, 0.8),
]
GPU_ROWS = [("gpu-H256", 100, 256, 8, 256, 1.0)]
KINDS = ("step", "layer", "infer")
# issue 16: GRU targets at the default thread count (all cores), by (kind, row)
ALL_CORES_TARGETS = {**{(k, r): t for k in ("step", "layer") for r, t in (("H32", 0.30), ("seed", 0.45),
                                                                          ("H256", 0.55))},
                     ("infer", "H256"): 0.5}
SETTLE_S = 0.3  # with more than one thread, the pause before each timed block (see interleaved)
SCALING = (100, 400, 128, 8, 128)  # T0, T1, B, I, H: time(T1) / time(T0) should be <= 4.2 (= 4x + 5 %)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _machine(threads: int) -> dict:
    import numpy as np
    import torch

    import gru_xp
    from gru_xp.nn.fast import cpu_kernels, whole_sequence_backward, whole_sequence_forward

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = ""
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        blas = f"{b.get('name')} {b.get('version')}"
    except Exception:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "os_cpu_count": os.cpu_count(),
        "cores": available_cores(),
        "threads": threads,
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas,
        "torch": torch.__version__,
        "gru_xp": gru_xp.__version__,
        "cpu_kernels": cpu_kernels(),  # 'numba X.Y.Z' when the fused CPU kernels ran, else None
        "gru_backward_one_call": whole_sequence_backward("float32"),  # the GRU's backward on NumPy's BLAS in one call
        "gru_forward_one_call": whole_sequence_forward("float32"),  # its float32 forward too (tanh32)
        "loadavg_start": list(os.getloadavg()),
    }


def _problem(T, B, I, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((B, 1)).astype(np.float32)


def gx_step(cell, T, B, I, H, device, fast=True):
    from .nn.forecaster import Forecaster
    from .nn.optim import Adam

    m = Forecaster(cell, I, H, 1, device=device, dtype="float32", seed=0)
    m.rnn.fast = fast
    opt = Adam(1e-3)
    xh, yh = _problem(T, B, I)
    x, y = m.backend.asarray(xh), m.backend.asarray(yh)
    xp = m.backend.xp
    sync = _sync_for(m.backend)

    def step():
        m.loss_and_grads(x, y)
        opt.step(xp, m.params, m.grads)

    return step, sync, m


def _sync_for(backend):
    return backend.synchronize


def gx_layer(cell, T, B, I, H, device, fast=True, infer=False):
    """The public layer with its defaults: forward + backward of a fixed dy (dx too), or (infer) the forward in
    eval mode under no_grad()."""
    import numpy as np

    from .nn.recurrent import CELLS

    layer = CELLS[cell](I, H, device=device, dtype="float32", seed=0, fast=fast)
    xh, _ = _problem(T, B, I)
    dyh = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    x, dy = layer.backend.asarray(xh), layer.backend.asarray(dyh)
    if infer:
        layer.eval()

        def step():
            with layer.no_grad():
                layer.forward(x)
    else:
        def step():
            layer.zero_grad()
            layer.forward(x)
            layer.backward(dy)

    return step, _sync_for(layer.backend), layer


def torch_layer(cell, T, B, I, H, device, infer=False):
    import numpy as np
    import torch

    dev = torch.device(device)
    rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[cell](I, H).to(dev)
    xh, _ = _problem(T, B, I)
    dyh = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    x, dy = torch.from_numpy(xh).to(dev), torch.from_numpy(dyh).to(dev)
    if infer:
        rnn.eval()

        def step():
            with torch.no_grad():
                rnn(x)
    else:
        x.requires_grad_(True)

        def step():
            rnn.zero_grad(set_to_none=True)
            x.grad = None
            y, _ = rnn(x)
            y.backward(dy)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return step, sync


def _sides(kind, cell, T, B, I, H, device, tdev, reference: bool):
    """{side name: (step, sync)} for one row, and the gru_xp layer or model (its fast_cell says which path ran)."""
    if kind == "step":
        gx, gsync, m = gx_step(cell, T, B, I, H, device)
        sides = {"gru_xp": (gx, gsync), "torch": torch_step(cell, T, B, I, H, tdev)}
        layer = m.rnn
        if reference:
            ref, rsync, _ = gx_step(cell, T, B, I, H, device, fast=False)
            sides["gru_xp_reference"] = (ref, rsync)
        return sides, layer
    infer = kind == "infer"
    gx, gsync, layer = gx_layer(cell, T, B, I, H, device, infer=infer)
    sides = {"gru_xp": (gx, gsync), "torch": torch_layer(cell, T, B, I, H, tdev, infer=infer)}
    if reference:
        ref, rsync, _ = gx_layer(cell, T, B, I, H, device, fast=False, infer=infer)
        sides["gru_xp_reference"] = (ref, rsync)
    return sides, layer


def torch_step(cell, T, B, I, H, device):
    import torch

    dev = torch.device(device)
    rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[cell](I, H).to(dev)
    head = torch.nn.Linear(H, 1).to(dev)
    opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
    xh, yh = _problem(T, B, I)
    x, y = torch.from_numpy(xh).to(dev), torch.from_numpy(yh).to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        _, hn = rnn(x)
        h_n = hn[0] if cell == "lstm" else hn
        loss = torch.nn.functional.mse_loss(head(h_n[-1]), y)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return step, sync


def _block(step, sync, n):
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n


def median(v):
    s = sorted(v)
    k = len(s)
    return s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])


def interleaved(sides: dict, repeats: int, min_block: float, warmup: int = 3, settle: float = 0.0) -> dict:
    """sides: name -> (step, sync). Warm up each, size its block, then time blocks round-robin. settle > 0: before
    each block, sleep `settle` seconds and run one untimed step. With more than one thread both libraries keep
    worker pools in this process, and a pool's threads spin for a while after its last call (OpenBLAS ~0.1 s):
    timed right after gru_xp's block, torch's 2-thread GRU step ran 1.5-2.5x slower than alone on a 2-core
    machine (benchmarks/NOTES.md), so the pause lets the other pool go idle, as it is when a user runs one library."""
    ns = {}
    for name, (step, sync) in sides.items():
        for _ in range(warmup):
            step()
        t = _block(step, sync, 1)
        ns[name] = max(1, min(200, int(min_block / max(t, 1e-6))))
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, (step, sync) in sides.items():
            if settle > 0:
                time.sleep(settle)
                step()
            times[name].append(_block(step, sync, ns[name]))
    return {name: {"median_ms": 1e3 * median(v), "min_ms": 1e3 * min(v), "steps_per_block": ns[name],
                   "blocks_ms": [round(1e3 * x, 4) for x in v]} for name, v in times.items()}


def _peak_memory(cell, T, B, I, H) -> dict:
    """tracemalloc (NumPy reports its allocations to it) over one training step: the first step of a fresh
    model (workspaces allocated) and a later one (workspaces reused), against the cache size T·B·4H floats."""
    import tracemalloc

    out = {"T": T, "B": B, "I": I, "H": H, "cache_bytes_TB4H": T * B * 4 * H * 4}
    for fast in (True, False):
        step, _, m = gx_step(cell, T, B, I, H, "cpu", fast=fast)
        tracemalloc.start()
        step()
        first = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        step()
        later = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        key = "fast" if fast else "reference"
        fc = m.rnn.fast_cell()
        out[key] = {"first_step_peak_bytes": first, "later_step_peak_bytes_above_live": later,
                    "workspace_bytes": fc.nbytes() if (fast and fc is not None) else 0}
        out[key]["first_step_peak_over_cache"] = round(first / out["cache_bytes_TB4H"], 3)
    return out


def worker(cfg: dict) -> dict:
    import torch

    threads = int(cfg["threads"])
    torch.set_num_threads(threads)
    device = cfg["device"]
    quick = cfg["quick"]
    repeats = 3 if quick else int(cfg["repeats"])
    min_block = 0.01 if quick else float(cfg["min_block"])
    cells = ["gru", "lstm", "rnn"] if cfg["cells"] == "all" else [c.strip() for c in cfg["cells"].split(",")]
    want = {r.strip() for r in cfg["rows"].split(",") if r.strip()}
    gpu = device.startswith("cuda")
    res = {"machine": _machine(threads), "device": device, "dtype": "float32", "repeats": repeats,
           "step": "forward + MSE on Linear(h_n[-1]) + backward + Adam", "rows": []}
    if gpu:
        from .backend import resolve

        res["machine"]["gpu"] = resolve(device, "float32").describe()
        res["machine"]["torch_cuda"] = torch.version.cuda
        res["machine"]["cudnn"] = torch.backends.cudnn.version()
    tdev = "cuda" if gpu else "cpu"
    kinds = [k for k in cfg.get("kinds", "step").split(",") if k]
    for cell in cells:
        for name, T, B, I, H, target in (GPU_ROWS if gpu else CPU_ROWS):
            if want and name not in want:
                continue
            for kind in kinds:
                res["rows"].append(_row(cfg, kind, cell, name, (T, B, I, H), target, device, tdev, repeats,
                                        min_block))
    if not cfg["no_extras"] and not gpu and "gru" in cells:
        _extras(res, repeats, min_block, kinds)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    return res


def _row(cfg, kind, cell, name, shape, target, device, tdev, repeats, min_block) -> dict:
    """One timed row: gru_xp against torch (and the reference path with --reference), interleaved."""
    T, B, I, H = shape
    threads = int(cfg["threads"])
    gpu = device.startswith("cuda")
    sides, layer = _sides(kind, cell, T, B, I, H, device, tdev, cfg["reference"])
    settle = SETTLE_S if threads > 1 and not gpu else 0.0  # one thread: no pools; a GPU: its own sync
    from .nn.fast import batch_split_runs

    runs0 = batch_split_runs()[0]
    t = interleaved(sides, repeats, min_block, settle=settle)
    runs1, last_blocks = batch_split_runs()
    pairs = [a / b for a, b in zip(t["gru_xp"]["blocks_ms"], t["torch"]["blocks_ms"])]
    if cell != "gru" or gpu:
        target = None
    elif threads == 1:  # issue 6's targets are for the training step at 1 thread
        target = target if kind == "step" else None
    else:
        target = ALL_CORES_TARGETS.get((kind, name))
    row = {"cell": cell, "kind": kind, "row": name, "threads": threads, "T": T, "B": B, "I": I, "H": H,
           "fast_path": layer.fast_cell() is not None,
           "batch_blocks": last_blocks if runs1 > runs0 else 1,  # the batch over the cores (1: one call)
           "gru_xp_ms": round(t["gru_xp"]["median_ms"], 4), "torch_ms": round(t["torch"]["median_ms"], 4),
           "ratio": round(t["gru_xp"]["median_ms"] / t["torch"]["median_ms"], 4),
           "ratio_median_of_pairs": round(median(pairs), 4), "target": target, "settle_s": settle, "timings": t}
    if gpu:
        cpu_side = _sides(kind, cell, T, B, I, H, "cpu", "cpu", False)[0]["gru_xp"][0]
        tc = interleaved({"gru_xp_cpu": (cpu_side, lambda: None)}, max(3, repeats // 3), min_block, 1)
        row["gru_xp_cpu_ms"] = round(tc["gru_xp_cpu"]["median_ms"], 4)
        row["speedup_vs_cpu"] = round(row["gru_xp_cpu_ms"] / row["gru_xp_ms"], 2)
    if cfg["reference"]:
        row["reference_ms"] = round(t["gru_xp_reference"]["median_ms"], 4)
    row["loadavg"] = list(os.getloadavg())
    print(f"  {threads} thread(s) {cell} {kind} {name}: gru_xp {row['gru_xp_ms']:.2f} ms, torch "
          f"{row['torch_ms']:.2f} ms, ratio {row['ratio']:.3f}", file=sys.stderr, flush=True)
    return row


def _extras(res: dict, repeats: int, min_block: float, kinds) -> None:
    """T scaling and peak memory of the GRU training step; peak memory of the inference forward."""
    if "step" in kinds:
        T0, T1, B, I, H = SCALING
        s0, _, _ = gx_step("gru", T0, B, I, H, "cpu")
        s1, _, _ = gx_step("gru", T1, B, I, H, "cpu")
        t = interleaved({"T0": (s0, lambda: None), "T1": (s1, lambda: None)}, max(3, repeats // 2), min_block)
        res["t_scaling"] = {"B": B, "I": I, "H": H, "T0": T0, "T1": T1, "T0_ms": round(t["T0"]["median_ms"], 3),
                            "T1_ms": round(t["T1"]["median_ms"], 3),
                            "ratio": round(t["T1"]["median_ms"] / t["T0"]["median_ms"], 3), "target": 4.2}
        print(f"  T {T0} -> {T1}: x{res['t_scaling']['ratio']:.2f}", file=sys.stderr, flush=True)
        res["peak_memory"] = [_peak_memory("gru", *shape) for shape in ((100, 128, 8, 128), (100, 128, 8, 256))]
    if "infer" in kinds:
        res["infer_memory"] = [_infer_memory(cell, 100, 128, 8, 256) for cell in ("gru", "lstm", "rnn")]


def _infer_memory(cell, T, B, I, H) -> dict:
    """tracemalloc peak of the first forward of a new public layer (everything it allocates, its workspaces
    included) under no_grad(), and of the forward that keeps the backward cache, against the output y (T, B, H);
    and what a later no_grad() forward adds above what the layer then holds."""
    import tracemalloc

    out = {"cell": cell, "T": T, "B": B, "I": I, "H": H, "output_bytes": T * B * H * 4}
    for grad in (False, True):
        gx_layer(cell, 2, 32, I, 32, "cpu", infer=not grad)[0]()  # a small layer first: numba's kernels loaded
        step, _, layer = gx_layer(cell, T, B, I, H, "cpu", infer=not grad)
        x = layer.backend.asarray(_problem(T, B, I)[0])  # (T, B, I)
        fwd = step if not grad else (lambda: layer.forward(x))
        tracemalloc.start()
        fwd()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        live = tracemalloc.get_traced_memory()[0]
        fwd()
        later = tracemalloc.get_traced_memory()[1] - live
        tracemalloc.stop()
        key = "no_grad" if not grad else "with_cache"
        out[key] = {"peak_bytes": peak, "peak_over_output": round(peak / out["output_bytes"], 3),
                    "later_call_peak_above_live_bytes": later}
    return out


def main(argv=None) -> int:
    from .errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    try:
        print(json.dumps(worker(json.loads(argv[0]))))
    except UserError as e:
        print(f"gru-xp: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
