"""How far is gru_xp from its BLAS floor? (issue 6 at 1 thread; issue 16 at the default thread count)

For each CPU row of `gru-xp bench` and each kind, timed in one process, interleaved (block after block, so that the
machine's drifts hit every side alike; with more than one thread each block after `bench_worker.SETTLE_S` of rest):
  gru_xp  what `gru-xp bench` times: the training step (step), the public layer's forward + backward (layer), or
          its forward under no_grad (infer), fast path, float32;
  gemms   only the recurrent GEMMs of that work, with the fast path's shapes and layouts (K = H+I+1: u_t =
          [h_{t-1}; x_t; 1]): forward W (3H, K) @ u_t (K, B) per step; for step and layer also the backward's
          W_hh^T (H, 3H) @ dg (3H, B) per step and the weight-grad GEMMs dg (3H, B) @ u_t^T (B, K), 16 steps a
          batched call; nothing else;
  torch   PyTorch's same work (as in `gru-xp bench`);
and at more than one thread, where gru_xp splits the batch (gru_xp/nn/fast/blocks.py):
  gemms_blocks  the same GEMMs on each block's columns, every block on a thread of its own through the split's own
          runner (OpenBLAS at one thread, the threads held to their CPUs as there): what the split's GEMMs alone
          take, the floor of gru_xp's own way of using the cores.
torch does the same GEMMs (its recurrent GEMM per step, its weight grads), and at the shapes here neither BLAS is
ahead by much (benchmarks/NOTES.md), so `gemms / torch` is a lower bound for any NumPy implementation of this
algorithm: a target below it cannot be met on that machine by work outside the GEMMs. `gru_xp - gemms` is what the
elementwise work, the input projection, the head and Adam cost. The verdict says "below the floor" when the target
is under the smaller of `gemms / torch` and `gemms_blocks / torch`.

    python benchmarks/gemm_floor.py                                  # all GRU rows, training step, 1 thread
    python benchmarks/gemm_floor.py H64 H128                         # some rows
    python benchmarks/gemm_floor.py --threads all --kinds step,layer,infer --json FILE   # issue 16's setting
"""
import argparse
import os
import sys


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="*", help="row names (default: all CPU rows of gru-xp bench)")
    ap.add_argument("--threads", default="1", help="threads for NumPy's BLAS and torch: a number or 'all' (default 1)")
    ap.add_argument("--kinds", default="step", help="comma list of step, layer, infer (default step)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved blocks per side (default 7)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    a.threads = _cores() if a.threads == "all" else int(a.threads)
    a.kinds = [k for k in a.kinds.split(",") if k]
    bad = [k for k in a.kinds if k not in ("step", "layer", "infer")]
    if bad or a.threads < 1:
        ap.error(f"--kinds takes step, layer, infer (got {bad}); --threads a number >= 1 or 'all'")
    return a


# the BLAS pools read their thread counts when they load: set them before NumPy and torch are imported
ARGS = _parse(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.update({k: str(ARGS.threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})

import json  # noqa: E402

import numpy as np  # noqa: E402

from gru_xp.backend import installed  # noqa: E402
from gru_xp.bench_worker import (ALL_CORES_TARGETS, CPU_ROWS, SETTLE_S, gx_layer, gx_step, interleaved,  # noqa: E402
                                 torch_layer, torch_step)
from gru_xp.nn import fast  # noqa: E402


def gemms(T, B, I, H, chunk=16, backward=True):
    """A callable running only the recurrent GEMMs (forward; with backward=True also dh and weight grads)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    K = H + I + 1
    w = rng.standard_normal((3 * H, K)).astype(f32)  # (3H, K)
    wt = rng.standard_normal((H, 3 * H)).astype(f32)  # (H, 3H)
    h = rng.standard_normal((T + 1, K, B)).astype(f32)  # (T+1, K, B)
    g = np.empty((T, 3 * H, B), f32)  # (T, 3H, B)
    dh = np.empty((H, B), f32)  # (H, B)
    dwt = np.empty((chunk, 3 * H, K), f32)  # (chunk, 3H, K)

    def run():
        for t in range(T):
            np.matmul(w, h[t], out=g[t])
        if not backward:
            return
        for t in range(T - 1, -1, -1):
            np.matmul(wt, g[t], out=dh)
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            np.matmul(g[t0:t1], h[t0:t1].transpose(0, 2, 1), out=dwt[: t1 - t0])

    return run


def gemms_blocks(T, B, I, H, backward=True):
    """A callable running gemms() on each of the split's column blocks of B at once, one thread a block (the split's
    runner), or None where the batch is not split at this thread count."""
    parts = fast.batch_blocks(B)
    if parts is None:
        return None
    runs = [gemms(T, hi - lo, I, H, backward=backward) for lo, hi in parts]
    return lambda: fast.run_in_blocks(lambda k, launch: launch(runs[k]), len(runs))


def _sides(kind, T, B, I, H):
    if kind == "step":
        gx = gx_step("gru", T, B, I, H, "cpu")[0]
        tt = torch_step("gru", T, B, I, H, "cpu")[0]
    else:
        gx = gx_layer("gru", T, B, I, H, "cpu", infer=kind == "infer")[0]
        tt = torch_layer("gru", T, B, I, H, "cpu", infer=kind == "infer")[0]
    none = lambda: None  # noqa: E731 (CPU: nothing to synchronise)
    sides = {"gru_xp": (gx, none), "gemms": (gemms(T, B, I, H, backward=kind != "infer"), none), "torch": (tt, none)}
    split = gemms_blocks(T, B, I, H, backward=kind != "infer")
    if split is not None:
        sides["gemms_blocks"] = (split, none)
    return sides


def main(argv=None):
    a = ARGS if argv is None and ARGS is not None else _parse(sys.argv[1:] if argv is None else argv)
    if not installed("torch"):
        print("gemm_floor.py: it times gru_xp and torch in one process, and torch is not installed: "
              "pip install -e '.[test]'", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(a.threads)
    rows = [r for r in CPU_ROWS if not a.rows or r[0] in a.rows]
    settle = SETTLE_S if a.threads > 1 else 0.0
    print(f"numpy {np.__version__}, torch {torch.__version__}, {a.threads} thread(s) of {_cores()} core(s); "
          f"medians of {a.repeats} interleaved blocks\n")
    print("| row | kind | T, B, I, H | gru_xp ms | GEMMs ms | GEMM GFLOP/s | GEMMs in blocks ms | torch ms "
          "| gru_xp / torch | GEMMs / torch | GEMMs in blocks / torch | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    out = []
    for name, T, B, I, H, _target in rows:
        for kind in a.kinds:
            res = interleaved(_sides(kind, T, B, I, H), a.repeats, 0.3, settle=settle)
            s, g, tt = (res[k]["median_ms"] for k in ("gru_xp", "gemms", "torch"))
            gb = res["gemms_blocks"]["median_ms"] if "gemms_blocks" in res else None  # None: no split here
            per_step = 2 * 3 * H * B * (H + I + 1) if kind == "infer" else 2 * 3 * H * B * (2 * (H + I + 1) + H)
            target = ALL_CORES_TARGETS.get((kind, name)) if a.threads > 1 else None
            floor = g if gb is None else min(g, gb)
            verdict = "" if target is None else f"≤ {target}" + (" (below the floor)" if floor / tt > target else "")
            gb_ms, gb_ratio = ("-", "-") if gb is None else (f"{gb:.2f}", f"{gb / tt:.3f}")
            print(f"| {name} | {kind} | {T}, {B}, {I}, {H} | {s:.2f} | {g:.2f} | {T * per_step / g / 1e6:.0f} "
                  f"| {gb_ms} | {tt:.2f} | {s / tt:.3f} | {g / tt:.3f} | {gb_ratio} | {verdict} |", flush=True)
            out.append({"row": name, "kind": kind, "T": T, "B": B, "I": I, "H": H, "threads": a.threads,
                        "gru_xp_ms": round(s, 4), "gemms_ms": round(g, 4), "torch_ms": round(tt, 4),
                        "ratio": round(s / tt, 4), "gemms_ratio": round(g / tt, 4),
                        "gemms_blocks_ms": None if gb is None else round(gb, 4),
                        "gemms_blocks_ratio": None if gb is None else round(gb / tt, 4), "target": target,
                        "blocks_ms": {k: v["blocks_ms"] for k, v in res.items()}})
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"numpy": np.__version__, "torch": torch.__version__, "threads": a.threads,
                       "cores": _cores(), "repeats": a.repeats, "rows": out}, f, indent=1)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
