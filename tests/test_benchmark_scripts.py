"""The scripts in benchmarks/ that the README and benchmarks/NOTES.md tell users to run: each one loads (its
imports from gru_xp still exist) and has a main. Loaded in one child process, so that what a script sets at import
(gemm_floor.py pins the BLAS threads in os.environ) stays out of the test session."""
from __future__ import annotations

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
