"""How far rounding alone moves the electric job's metrics on one CPU: the same run (configs/electric.toml, seed 0,
an ensemble of 5) on the fast path in float32, on the reference path in float32 (other operation order, other
rounding) and on the fast path in float64; every metric of every split against the first, and each member's best
epoch. benchmarks/gpu_check.sh holds the GPU run to the CPU run within 1e-5 relative: this is the scale it is set
against.

    python benchmarks/electric_paths.py [--json benchmarks/results/electric-paths-cpu.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gru_xp import runs  # noqa: E402
from gru_xp.checkpoint import write_json  # noqa: E402
from gru_xp.config import make_config  # noqa: E402
from gru_xp.nn.forecaster import Forecaster  # noqa: E402


class _Reference(Forecaster):
    """The Forecaster on the reference cells (fast=False), for runs.run."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **{**kw, "fast": False})


def _one(dtype: str, fast: bool, out: Path) -> dict:
    runs.Forecaster = Forecaster if fast else _Reference
    try:
        t0 = time.perf_counter()
        runs.run(make_config("electric", {"dtype": dtype, "out": str(out), "quiet": True, "plots": False}))
        seconds = time.perf_counter() - t0
    finally:
        runs.Forecaster = Forecaster
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    return {"dtype": dtype, "path": "fast" if fast else "reference", "seconds": round(seconds, 1),
            "model": {split: m["model"] for split, m in metrics.items()},
            "best_epochs": [m["best_epoch"] for m in history.get("members") or [history]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="benchmarks/results/electric-paths-cpu.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = [_one(dt, fast, Path(tmp) / f"{dt}-{fast}") for dt, fast in
               (("float32", True), ("float32", False), ("float64", True))]
    base = res[0]
    for r in res[1:]:
        rel = {f"{split}.{k}": abs(v - base["model"][split][k]) / abs(base["model"][split][k])
               for split, m in r["model"].items() for k, v in m.items()}
        r["vs_float32_fast"] = {"max_rel_diff": max(rel.values()), "rel_diff": rel,
                                "same_best_epochs": r["best_epochs"] == base["best_epochs"]}
        print(f"{r['path']} {r['dtype']} vs fast float32: max relative difference {max(rel.values()):.1e} over "
              f"{len(rel)} metrics; best epochs {'equal' if r['best_epochs'] == base['best_epochs'] else 'differ'}")
    write_json(args.json, {"config": "electric", "runs": res})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
