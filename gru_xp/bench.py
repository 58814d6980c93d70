"""Benchmark: a gru_xp training step against PyTorch's, in the same run (issue 6). Host-side logic only.

One training step = forward + MSE on a linear head over the last hidden state + backward + Adam update, float32:
    gru_xp:  Forecaster(cell, I, H, horizon=1).loss_and_grads(x, y) + optim.Adam.step
    PyTorch: nn.GRU/LSTM/RNN + nn.Linear on h_n[-1] + mse_loss + backward + torch.optim.Adam.step
Both are warmed up, then timed in interleaved blocks (gru_xp, torch, gru_xp, torch, ...) so that background load
hits both alike; each row reports the medians of the blocks and their ratio. The measurement runs in a child
process whose BLAS / OpenMP thread counts are fixed by environment variables before NumPy is imported, and
torch.set_num_threads gets the same count.

Wire-up: `gru-xp bench` calls add_arguments(parser) and run(args); `python -m gru_xp.bench` and
`python benchmarks/bench.py` do the same.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time

# (name, T, B, I, H, target ratio on CPU) — the table
CPU_ROWS = [
    ("H32", 50, 64, 1, 32, 0.35),
    ("H64", 50, 64, 1, 64, 0.35),
    ("seed", 10, 256, 1, 70, 0.6),
    ("H128", 100, 128, 8, 128, 0.6),
    ("H256", 100, 128, 8, 256, 0.8),
]
GPU_ROWS = [("gpu-H256", 100, 256, 8, 256, 1.0)]
SCALING = (100, 400, 128, 8, 128)  # T0, T1, B, I, H: time(T1) / time(T0) should be <= 4.2 (= 4x + 5 %)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the results as JSON (e.g. benchmarks/results/cpu-DATE.json)")
    p.add_argument("--cells", default="gru", help="comma list of gru, lstm, rnn, or 'all' (default gru)")
    p.add_argument("--rows", default="", help="comma list of row names to run (default: all of the device's)")
    p.add_argument("--threads", type=int, default=1, help="threads for both NumPy's BLAS and torch (default 1)")
    p.add_argument("--repeats", type=int, default=9, help="interleaved timing blocks per side (default 9)")
    p.add_argument("--min-block", type=float, default=0.05,
                   help="seconds a timing block should last at least: steps per block are chosen from it")
    p.add_argument("--reference", action="store_true", help="also time gru_xp's reference path (fast=False)")
    p.add_argument("--no-extras", action="store_true", help="skip peak memory and T-scaling")
    p.add_argument("--quick", action="store_true", help="3 repeats, short blocks (a smoke run)")
    p.add_argument("--processes", type=int, default=1,
                   help="run the whole measurement in N fresh processes, one after the other, and report the "
                        "medians over them (torch's step time moves ~10%% from process to process; default 1)")
    return p


def run(args) -> int:
    """Run the measurement in a child process with fixed thread counts; print the table; write JSON."""
    from .errors import UserError

    from .backend import resolve

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.processes < 1:
        raise UserError(f"--processes must be >= 1, got {args.processes}")
    cells = ["gru", "lstm", "rnn"] if args.cells == "all" else [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in ("gru", "lstm", "rnn")]
    if bad or not cells:
        raise UserError(f"--cells {args.cells!r}: use a comma list of gru, lstm, rnn, or 'all'")
    resolve(args.device, "float32")  # a missing GPU or CuPy is a one-line error here, before the child starts
    env = dict(os.environ)
    for v in THREAD_VARS:
        env[v] = str(args.threads)
    cfg = {k: getattr(args, k) for k in ("device", "cells", "rows", "threads", "repeats", "min_block", "reference",
                                         "no_extras", "quick")}
    runs = []
    for i in range(args.processes):
        if args.processes > 1:
            print(f"process {i + 1} of {args.processes}", file=sys.stderr, flush=True)
        payload = json.dumps({**cfg, "no_extras": cfg["no_extras"] or i > 0})  # memory and T scaling: once
        proc = subprocess.run([sys.executable, "-m", "gru_xp.bench", "--worker", payload], env=env,
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise UserError(f"benchmark worker failed (exit {proc.returncode}); see the messages above")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = combine(runs)
    print(format_table(result))
    if args.json:
        from .checkpoint import write_json

        write_json(args.json, result)  # atomic: a killed run never leaves half a results file
        print(f"\nwrote {args.json}")
    return 0


def combine(runs: list) -> dict:
    """One result from the results of several worker processes (same rows, same order): every time and ratio is
    the median over the processes (ratio: of the per-process ratios), the per-process values are kept beside."""
    res = dict(runs[0])
    res["processes"] = len(runs)
    if len(runs) == 1:
        return res
    res["machine"] = {**runs[0]["machine"], "loadavg_end": runs[-1]["machine"]["loadavg_end"]}
    rows = []
    for per in zip(*(r["rows"] for r in runs)):
        row = dict(per[0])
        for key in ("gru_xp_ms", "torch_ms", "ratio", "ratio_median_of_pairs", "reference_ms", "gru_xp_cpu_ms",
                    "speedup_vs_cpu"):
            if key in row:
                vals = [r[key] for r in per]
                row[key] = round(_median(vals), 4)
                row[f"{key}_per_process"] = vals
        row["timings"] = [r["timings"] for r in per]
        row["loadavg"] = [r["loadavg"] for r in per]
        rows.append(row)
    res["rows"] = rows
    return res


# ---- the worker (child process) -----------------------------------------------------------------------------
def _machine(threads: int) -> dict:
    import numpy as np
    import torch

    import gru_xp

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
        "threads": threads,
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": blas,
        "torch": torch.__version__,
        "gru_xp": gru_xp.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def _problem(T, B, I, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((B, 1)).astype(np.float32)


def _gx_step(cell, T, B, I, H, device, fast=True):
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


def _torch_step(cell, T, B, I, H, device):
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


def _median(v):
    s = sorted(v)
    k = len(s)
    return s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])


def _interleaved(sides: dict, repeats: int, min_block: float, warmup: int = 3) -> dict:
    """sides: name -> (step, sync). Warm up each, size its block, then time blocks round-robin."""
    ns = {}
    for name, (step, sync) in sides.items():
        for _ in range(warmup):
            step()
        t = _block(step, sync, 1)
        ns[name] = max(1, min(200, int(min_block / max(t, 1e-6))))
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, (step, sync) in sides.items():
            times[name].append(_block(step, sync, ns[name]))
    return {name: {"median_ms": 1e3 * _median(v), "min_ms": 1e3 * min(v), "steps_per_block": ns[name],
                   "blocks_ms": [round(1e3 * x, 4) for x in v]} for name, v in times.items()}


def _peak_memory(cell, T, B, I, H) -> dict:
    """tracemalloc (NumPy reports its allocations to it) over one training step: the first step of a fresh
    model (workspaces allocated) and a later one (workspaces reused), against the cache size T·B·4H floats."""
    import tracemalloc

    out = {"T": T, "B": B, "I": I, "H": H, "cache_bytes_TB4H": T * B * 4 * H * 4}
    for fast in (True, False):
        step, _, m = _gx_step(cell, T, B, I, H, "cpu", fast=fast)
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


def _worker(cfg: dict) -> dict:
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
    for cell in cells:
        for name, T, B, I, H, target in (GPU_ROWS if gpu else CPU_ROWS):
            if want and name not in want:
                continue
            gx, gsync, m = _gx_step(cell, T, B, I, H, device)
            sides = {"gru_xp": (gx, gsync), "torch": _torch_step(cell, T, B, I, H, tdev)}
            if cfg["reference"]:
                ref, rsync, _ = _gx_step(cell, T, B, I, H, device, fast=False)
                sides["gru_xp_reference"] = (ref, rsync)
            t = _interleaved(sides, repeats, min_block)
            pairs = [a / b for a, b in zip(t["gru_xp"]["blocks_ms"], t["torch"]["blocks_ms"])]
            row = {"cell": cell, "row": name, "T": T, "B": B, "I": I, "H": H,
                   "fast_path": m.rnn.fast_cell() is not None,
                   "gru_xp_ms": round(t["gru_xp"]["median_ms"], 4), "torch_ms": round(t["torch"]["median_ms"], 4),
                   "ratio": round(t["gru_xp"]["median_ms"] / t["torch"]["median_ms"], 4),
                   "ratio_median_of_pairs": round(_median(pairs), 4),
                   "target": target if cell == "gru" else None, "timings": t}
            if gpu:
                cpu_step, _, _ = _gx_step(cell, T, B, I, H, "cpu")
                tc = _interleaved({"gru_xp_cpu": (cpu_step, lambda: None)}, max(3, repeats // 3), min_block, 1)
                row["gru_xp_cpu_ms"] = round(tc["gru_xp_cpu"]["median_ms"], 4)
                row["speedup_vs_cpu"] = round(row["gru_xp_cpu_ms"] / row["gru_xp_ms"], 2)
            if cfg["reference"]:
                row["reference_ms"] = round(t["gru_xp_reference"]["median_ms"], 4)
            row["loadavg"] = list(os.getloadavg())
            res["rows"].append(row)
            print(f"  {cell} {name}: gru_xp {row['gru_xp_ms']:.2f} ms, torch {row['torch_ms']:.2f} ms, "
                  f"ratio {row['ratio']:.3f}", file=sys.stderr, flush=True)
    if not cfg["no_extras"] and not gpu and "gru" in cells:
        T0, T1, B, I, H = SCALING
        s0, _, _ = _gx_step("gru", T0, B, I, H, "cpu")
        s1, _, _ = _gx_step("gru", T1, B, I, H, "cpu")
        t = _interleaved({"T0": (s0, lambda: None), "T1": (s1, lambda: None)}, max(3, repeats // 2), min_block)
        res["t_scaling"] = {"B": B, "I": I, "H": H, "T0": T0, "T1": T1, "T0_ms": round(t["T0"]["median_ms"], 3),
                            "T1_ms": round(t["T1"]["median_ms"], 3),
                            "ratio": round(t["T1"]["median_ms"] / t["T0"]["median_ms"], 3), "target": 4.2}
        print(f"  T {T0} -> {T1}: x{res['t_scaling']['ratio']:.2f}", file=sys.stderr, flush=True)
        res["peak_memory"] = [_peak_memory("gru", *shape) for shape in ((100, 128, 8, 128), (100, 128, 8, 256))]
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    return res


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"gru_xp {m['gru_xp']} vs torch {m['torch']} | numpy {m['numpy']} ({m['numpy_blas']}) | "
             f"{res['device']} {m.get('gpu', m['cpu'])} | threads {m['threads']} (os.cpu_count {m['os_cpu_count']}) | "
             f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f} | medians of {res['repeats']} "
             f"interleaved blocks" + (f", then over {res['processes']} processes (ratio: median, min-max)"
                                      if res.get("processes", 1) > 1 else ""), "",
             "| cell | row | T | B | I | H | gru_xp ms | torch ms | ratio | target |" +
             (" ref ms |" if any("reference_ms" in r for r in res["rows"]) else "") +
             (" CPU ms | GPU speedup |" if any("gru_xp_cpu_ms" in r for r in res["rows"]) else ""),
             "|---|---|---|---|---|---|---|---|---|---|" +
             ("---|" if any("reference_ms" in r for r in res["rows"]) else "") +
             ("---|---|" if any("gru_xp_cpu_ms" in r for r in res["rows"]) else "")]
    for r in res["rows"]:
        tgt = "" if r["target"] is None else f"<= {r['target']}"
        ok = "" if r["target"] is None else (" ✓" if r["ratio"] <= r["target"] else " ✗")
        line = (f"| {r['cell']}{'' if r['fast_path'] else ' (reference)'} | {r['row']} | {r['T']} | {r['B']} | "
                f"{r['I']} | {r['H']} | {r['gru_xp_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.3f}{ok}"
                + (f" ({min(r['ratio_per_process']):.3f}-{max(r['ratio_per_process']):.3f})"
                   if "ratio_per_process" in r else "") + f" | {tgt} |")
        if "reference_ms" in r:
            line += f" {r['reference_ms']:.2f} |"
        if "gru_xp_cpu_ms" in r:
            line += f" {r['gru_xp_cpu_ms']:.2f} | {r['speedup_vs_cpu']:.1f}x |"
        lines.append(line)
    if "t_scaling" in res:
        s = res["t_scaling"]
        lines += ["", f"T scaling (B {s['B']}, I {s['I']}, H {s['H']}): T {s['T0']} {s['T0_ms']:.1f} ms -> "
                      f"T {s['T1']} {s['T1_ms']:.1f} ms = x{s['ratio']:.2f} (target <= {s['target']})"]
    for pm in res.get("peak_memory", []):
        f, r = pm["fast"], pm["reference"]
        lines.append(f"peak memory, one step (T {pm['T']}, B {pm['B']}, H {pm['H']}; cache T·B·4H = "
                     f"{pm['cache_bytes_TB4H'] / 2**20:.1f} MiB): fast first step {f['first_step_peak_bytes'] / 2**20:.1f}"
                     f" MiB ({f['first_step_peak_over_cache']}x), later steps +{f['later_step_peak_bytes_above_live'] / 2**20:.1f}"
                     f" MiB over {f['workspace_bytes'] / 2**20:.1f} MiB of workspaces; reference "
                     f"{r['first_step_peak_bytes'] / 2**20:.1f} MiB ({r['first_step_peak_over_cache']}x)")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        from .errors import UserError

        try:
            print(json.dumps(_worker(json.loads(argv[1]))))
        except UserError as e:
            print(f"gru-xp: error: {e}", file=sys.stderr)
            return 2
        return 0
    p = add_arguments(argparse.ArgumentParser(prog="gru-xp bench", description=__doc__.splitlines()[0]))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
