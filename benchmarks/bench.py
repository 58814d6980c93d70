"""Benchmark gru_xp against PyTorch in the same run (see gru_xp/bench.py). Examples:
    python benchmarks/bench.py --threads 1,all --processes 7 --json benchmarks/results/cpu-$(date +%F).json
    python benchmarks/bench.py --json benchmarks/results/cpu-$(date +%F).json   # every core, step/layer/infer
    python benchmarks/bench.py --cells all --reference
    python benchmarks/bench.py --device cuda --json benchmarks/results/gpu-$(date +%F).json
"""
import sys

from gru_xp.bench import main

if __name__ == "__main__":
    sys.exit(main())
