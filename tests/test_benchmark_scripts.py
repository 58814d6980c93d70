"""The scripts in benchmarks/ that the README and benchmarks/NOTES.md tell users to run: each one loads (its
imports from gru_xp still exist) and has a main. Loaded in one child process, so that what a script sets at import
(gemm_floor.py pins the BLAS threads in os.environ) stays out of the test session."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

_LOAD = """
import importlib.util, sys
bad = []
for path in sys.argv[1:]:
    try:
        spec = importlib.util.spec_from_file_location("bench_script", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert callable(getattr(mod, "main", None)), "no main()"
    except Exception as e:
        bad.append(f"{path}: {type(e).__name__}: {e}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_benchmark_script_loads():
    scripts = sorted(str(p) for p in (ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 9
    r = subprocess.run([sys.executable, "-c", _LOAD, *scripts], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gemm_floor_runs_and_writes_its_rows(tmp_path):
    """The floor script as the README runs it, at its smallest: one row, one kind, one block per side; the JSON
    has a row per (row, kind) with positive times and its ratio (no claim on which time is smaller: speed is for
    benchmarks, and one block on a busy machine can put the GEMMs-only loop above the forward)."""
    import json

    out = tmp_path / "floor.json"
    r = subprocess.run([sys.executable, "benchmarks/gemm_floor.py", "H32", "--kinds", "infer", "--repeats", "1",
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["row"], x["kind"], x["threads"]) for x in rows] == [("H32", "infer", 1)]
    x = rows[0]
    assert x["gemms_ms"] > 0 and x["gru_xp_ms"] > 0 and x["torch_ms"] > 0
    # the ratio of the unrounded times, the ms fields rounded to 4 places: equal to what they give up to that rounding
    assert abs(x["ratio"] - x["gru_xp_ms"] / x["torch_ms"]) < 1e-3
    bad = subprocess.run([sys.executable, "benchmarks/gemm_floor.py", "--kinds", "nope"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "--kinds takes step, layer, infer" in bad.stderr


def test_gemm_floor_times_the_split_gemms_where_the_batch_splits(tmp_path):
    """At 2 threads the floor script also times the GEMMs in the split's blocks (gemms_blocks) wherever a layer of
    that batch would split it (fast.batch_blocks at OpenBLAS's 2 threads, asked in a child of the same setting), and
    says None where it would not (one core, no OpenBLAS control)."""
    import json

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    ask = "from gru_xp.nn import fast; print(fast.batch_blocks(256) is not None)"
    probe = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert probe.returncode == 0, probe.stderr
    splits = probe.stdout.strip() == "True"
    out = tmp_path / "floor.json"
    r = subprocess.run([sys.executable, "benchmarks/gemm_floor.py", "seed", "--threads", "2", "--kinds", "infer",
                        "--repeats", "1", "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (x,) = json.loads(out.read_text())["rows"]
    assert (x["row"], x["kind"], x["threads"]) == ("seed", "infer", 2)
    if splits:
        assert x["gemms_blocks_ms"] > 0 and abs(x["gemms_blocks_ratio"] - x["gemms_blocks_ms"] / x["torch_ms"]) < 1e-3
        assert len(x["blocks_ms"]["gemms_blocks"]) == 1
    else:
        assert x["gemms_blocks_ms"] is None and x["gemms_blocks_ratio"] is None and "gemms_blocks" not in x["blocks_ms"]


def test_cif2016_check_stage_writes_out_and_leaves_the_shipped_results(tmp_path):
    """`cif2016.py --stage check --out F` (README): naive reproduces the archive's mean MASE 1.256 under the
    protocol, the results go to F with the other stages' figures carried over, and the shipped file is untouched."""
    import json

    shipped = ROOT / "benchmarks" / "results" / "cif2016.json"
    before = shipped.read_bytes()
    out = tmp_path / "cif.json"
    r = subprocess.run([sys.executable, "benchmarks/cif2016.py", "--stage", "check", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert shipped.read_bytes() == before
    got, ref = json.loads(out.read_text()), json.loads(before)
    assert round(got["check"]["naive"]["mase"], 3) == 1.256 and got["check"]["naive_matches_archive"] is True
    assert got["final"] == ref["final"]  # the stages not run keep the shipped figures
