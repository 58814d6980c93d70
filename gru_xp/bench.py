"""Benchmark: gru_xp against PyTorch, in the same run (issues 6 and 16). Host-side logic only.

Three kinds of row, float32, each gru_xp side against its PyTorch counterpart:
    step:  one training step = forward + MSE on a linear head over the last hidden state + backward + Adam update
           gru_xp: Forecaster(cell, I, H, horizon=1).loss_and_grads(x, y) + optim.Adam.step
           PyTorch: nn.GRU/LSTM/RNN + nn.Linear on h_n[-1] + mse_loss + backward + torch.optim.Adam.step
    layer: the public layer as a user builds it (gru_xp.GRU(I, H): its defaults), forward + backward of a given
           dy (T, B, H), dx included; PyTorch: nn.GRU(I, H) forward + autograd backward (x.requires_grad)
    infer: the public layer's forward in eval mode under layer.no_grad(); PyTorch's under torch.no_grad()
Both are warmed up, then timed in interleaved blocks (gru_xp, torch, gru_xp, torch, ...) so that background load
hits both alike; each row reports the medians of the blocks and their ratio. With more than one thread each block
comes after a 0.3 s pause and one untimed step, so that the other library's spinning worker threads are idle, as
they are when a user runs one library (bench_worker.interleaved). The measurement runs in a child
process whose BLAS / OpenMP thread counts are fixed by environment variables before NumPy is imported, and
torch.set_num_threads gets the same count: by default every core this process may run on; `--threads 1,all`
measures both counts (one child per count and process, interleaved).

Wire-up: `gru-xp bench` calls add_arguments(parser) and run(args); `python -m gru_xp.bench` and
`python benchmarks/bench.py` do the same.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .bench_worker import CPU_ROWS, GPU_ROWS, KINDS, THREAD_VARS, available_cores, median


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the results as JSON (e.g. benchmarks/results/cpu-DATE.json)")
    p.add_argument("--cells", default="gru", help="comma list of gru, lstm, rnn, or 'all' (default gru)")
    p.add_argument("--rows", default="", help="comma list of row names to run (default: all of the device's)")
    p.add_argument("--threads", default="all",
                   help="threads for both NumPy's BLAS and torch: a number, 'all' (every core this process may run "
                        "on: the default, as users run), or a comma list such as 1,all (both, one table)")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma list of step (training step), layer (public layer forward + backward), infer "
                        "(forward under no_grad) (default: all three)")
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


def parse_threads(spec) -> list[int]:
    """'all' | 'N' | '1,all' -> thread counts (distinct, in the order given)."""
    from .errors import UserError

    out = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            n = available_cores() if part == "all" else int(part)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"--threads {spec!r}: use a positive number, 'all', or a comma list such as 1,all")
        if n not in out:
            out.append(n)
    return out


def run(args) -> int:
    """Run the measurement in child processes with fixed thread counts; print the tables; write JSON."""
    from .errors import UserError

    from .backend import installed, resolve

    threads = parse_threads(args.threads)
    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.processes < 1:
        raise UserError(f"--processes must be >= 1, got {args.processes}")
    cells = ["gru", "lstm", "rnn"] if args.cells == "all" else [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in ("gru", "lstm", "rnn")]
    if bad or not cells:
        raise UserError(f"--cells {args.cells!r}: use a comma list of gru, lstm, rnn, or 'all'")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"--kinds {args.kinds!r}: use a comma list of {', '.join(KINDS)}")
    if not installed("torch"):  # the children would fail at `import torch` with a traceback each
        raise UserError("gru-xp bench times gru_xp against PyTorch in the same run, and torch is not installed: "
                        "pip install -e '.[test]' (torch 2.13.0 with the test extra)")
    resolve(args.device, "float32")  # a missing GPU or CuPy is a one-line error here, before the child starts
    names = [r[0] for r in (GPU_ROWS if args.device.startswith("cuda") else CPU_ROWS)]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if any(r not in names for r in rows):
        raise UserError(f"--rows {args.rows!r}: use a comma list of {', '.join(names)} (the rows of --device "
                        f"{args.device})")
    cfg = {k: getattr(args, k) for k in ("device", "cells", "rows", "repeats", "min_block", "reference",
                                         "no_extras", "quick")}
    cfg["kinds"] = ",".join(kinds)
    runs = {n: [] for n in threads}
    for i in range(args.processes):
        for n in threads:  # the thread counts interleaved, so that slow drifts of the machine hit them alike
            print(f"process {i + 1} of {args.processes}, {n} thread(s)", file=sys.stderr, flush=True)
            env = dict(os.environ)
            for v in THREAD_VARS:
                env[v] = str(n)
            payload = json.dumps({**cfg, "threads": n, "no_extras": cfg["no_extras"] or i > 0})  # extras: once
            proc = subprocess.run([sys.executable, "-m", "gru_xp.bench_worker", payload], env=env,
                                  stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise UserError(f"benchmark worker failed (exit {proc.returncode}); see the messages above")
            runs[n].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = merge_threads([combine(runs[n]) for n in threads])
    print(format_table(result))
    if len(threads) > 1 or any(r.get("kind", "step") != "step" for r in result["rows"]):
        print("\n" + format_readme_table(result))
    if args.json:
        from .checkpoint import write_json

        write_json(args.json, result)  # atomic: a killed run never leaves half a results file
        print(f"\nwrote {args.json}")
    return 0


def merge_threads(results: list) -> dict:
    """One result from the combined results of each thread count: their rows one after the other (each row says
    its threads), machine['threads'] the list of counts, machine['cores'] the cores available."""
    res = dict(results[0])
    res["rows"] = [row for r in results for row in r["rows"]]
    counts = [r["machine"]["threads"] for r in results]
    res["machine"] = {**results[0]["machine"], "threads": counts if len(counts) > 1 else counts[0],
                      "loadavg_end": results[-1]["machine"]["loadavg_end"]}
    for r in results[1:]:  # the extras (T scaling, peak memory) of every count, by count
        for key in ("t_scaling", "peak_memory", "infer_memory"):
            if key in r:
                res.setdefault(f"{key}_by_threads", {})[str(r["machine"]["threads"])] = r[key]
    return res


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
                row[key] = round(median(vals), 4)
                row[f"{key}_per_process"] = vals
        row["timings"] = [r["timings"] for r in per]
        row["loadavg"] = [r["loadavg"] for r in per]
        rows.append(row)
    res["rows"] = rows
    return res


def format_table(res: dict) -> str:
    m = res["machine"]
    refs = any("reference_ms" in r for r in res["rows"])
    gpus = any("gru_xp_cpu_ms" in r for r in res["rows"])
    lines = [f"gru_xp {m['gru_xp']} vs torch {m['torch']} | numpy {m['numpy']} ({m['numpy_blas']}) | "
             f"{res['device']} {m.get('gpu', m['cpu'])} | threads {m['threads']} of {m.get('cores', '?')} cores "
             f"(os.cpu_count {m['os_cpu_count']}) | CPU kernels: {m.get('cpu_kernels') or 'off'}"
             f"{', GRU backward in one call' if m.get('gru_backward_one_call') else ''}"
             f"{', GRU float32 forward in one call' if m.get('gru_forward_one_call') else ''} | "
             f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f} | "
             f"medians of {res['repeats']} interleaved blocks" + (f", then over {res['processes']} processes (ratio: "
                                                                 f"median, min-max)" if res.get("processes", 1) > 1
                                                                 else ""), "",
             "| cell | kind | threads | row | T | B | I | H | gru_xp ms | torch ms | ratio | target |" +
             (" ref ms |" if refs else "") + (" CPU ms | GPU speedup |" if gpus else ""),
             "|---" * 12 + "|" + ("---|" if refs else "") + ("---|---|" if gpus else "")]
    for r in res["rows"]:
        tgt = "" if r["target"] is None else f"<= {r['target']}"
        ok = "" if r["target"] is None else (" ✓" if r["ratio"] <= r["target"] else " ✗")
        line = (f"| {r['cell']}{'' if r['fast_path'] else ' (reference)'} | {r.get('kind', 'step')} | "
                f"{r.get('threads', m['threads'])} | {r['row']} | {r['T']} | {r['B']} | {r['I']} | {r['H']} | "
                f"{r['gru_xp_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.3f}{ok}" + _range(r) + f" | {tgt} |")
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
    for im in res.get("infer_memory", []):
        ng, wc = im["no_grad"], im["with_cache"]
        lines.append(f"peak memory, {im['cell']} forward, a new layer's first call (T {im['T']}, B {im['B']}, I "
                     f"{im['I']}, H {im['H']}; output y {im['output_bytes'] / 2**20:.1f} MiB): no_grad "
                     f"{ng['peak_bytes'] / 2**20:.1f} MiB ({ng['peak_over_output']}x the output), with the backward "
                     f"cache {wc['peak_bytes'] / 2**20:.1f} MiB ({wc['peak_over_output']}x)")
    return "\n".join(lines)


def _range(r) -> str:
    p = r.get("ratio_per_process")
    return f" ({min(p):.3f}-{max(p):.3f})" if p else ""


def format_readme_table(res: dict) -> str:
    """The README's table: one line per (cell, kind, shape), the ratio at each thread count side by side."""
    m = res["machine"]
    counts = m["threads"] if isinstance(m["threads"], list) else [m["threads"]]
    cores = m.get("cores", m["os_cpu_count"])
    what = {"step": "training step", "layer": "layer fwd + bwd", "infer": "forward, no_grad"}
    head = "| cell | measured | shape (T, B, I, H) |" + "".join(
        f" {n} thread{'s' if n > 1 else ''}: gru_xp / torch ms | ratio (range) |" for n in counts) + " target |"
    lines = [f"{cores} cores; ratio = gru_xp time / torch time, same run, medians over {res.get('processes', 1)} "
             f"process(es)", "", head, "|---|---|---|" + "---|---|" * len(counts) + "---|"]
    by = {(r["cell"], r.get("kind", "step"), r["row"], r.get("threads", counts[0])): r for r in res["rows"]}
    seen = []
    for r in res["rows"]:
        key = (r["cell"], r.get("kind", "step"), r["row"])
        if key in seen:
            continue
        seen.append(key)
        shape = ("seed: " if r["row"] == "seed" else "") + f"{r['T']}, {r['B']}, {r['I']}, {r['H']}"
        line = f"| {r['cell'].upper()} | {what[key[1]]} | {shape} |"
        tgts = []
        for n in counts:
            x = by.get(key + (n,))
            if x is None:
                line += " | |"
                continue
            line += f" {x['gru_xp_ms']:.2f} / {x['torch_ms']:.2f} | **{x['ratio']:.2f}**{_range(x)} |"
            if x["target"] is not None:
                tgts.append(f"≤ {x['target']} at {n}: {'met' if x['ratio'] <= x['target'] else '**missed**'}")
        lines.append(line + f" {'; '.join(tgts) or '—'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = add_arguments(argparse.ArgumentParser(prog="gru-xp bench", description=__doc__.splitlines()[0]))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
