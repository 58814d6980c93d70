#!/usr/bin/env bash
# The first GPU, one command: what a CPU cannot prove about --device cuda (README, "GPU: what is proven where").
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        (default benchmarks/results; also copied to $OUT when set)
#
# 1. pytest -m "cuda or kernels": the CUDA tests (fused kernels launched, CPU vs GPU) and the kernel tests (NVRTC,
#    kernel bodies on the CPU, and the generated sources against the ones CuPy really compiled);
# 2. gru-xp check --device cuda: finite differences and NumPy-vs-GPU rows for every cell, reference and fast path;
# 3. gru-xp train --config electric on cuda beside the same run on cpu (run together): every metric of every split
#    within float32 rounding (relative 1e-5) and the same best epoch for every ensemble member;
# 4. gru-xp bench --device cuda --cells all --json RESULTS_DIR/gpu-DATE.json;
# then one summary table (also RESULTS_DIR/gpu-DATE-check.md). Each step has a time limit: under 8 minutes in all.
# Exit 0 when every step passed. Runs from a checkout, no install: PYTHONPATH is the repository. On a machine
# without a package registry, wheels in .whl/ (README) are installed to a temporary folder first.
# DEVICE=cpu BENCH_ARGS="--quick --rows H32 --no-extras" runs the same plumbing on a CPU (a check of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-benchmarks/results}
DATE=$(date -u +%F)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
WORK=$(mktemp -d /tmp/gru_xp_gpu_check.XXXXXX)
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    || { echo "gpu_check: the wheels in .whl/ did not install" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
if [[ $DEVICE == cuda* ]] && ! "$PY" -c "import sys; from gru_xp.backend import cuda_available as c
ok, why = c(); print(why) if not ok else None; sys.exit(0 if ok else 1)"; then
  echo "gpu_check: no usable CUDA GPU here (above); nothing to check" >&2
  exit 2
fi

declare -a NAMES STATUS SECS DETAILS
record() {  # name, exit status, seconds, detail; the step's log goes into the one log file
  NAMES+=("$1"); STATUS+=("$([ "$2" -eq 0 ] && echo PASS || echo "FAIL (exit $2)")"); SECS+=("$3"); DETAILS+=("$4")
  for f in "${@:5}"; do printf '\n===== %s: %s\n' "$1" "$(basename "$f")"; cat "$f"; done >>"$WORK/log.txt"
}

# 1. the CUDA and kernel tests
t0=$SECONDS
timeout 150 "$PY" -m pytest -q -m "cuda or kernels" -p no:cacheprovider tests >"$WORK/pytest.log" 2>&1
rc=$?
tail -n 25 "$WORK/pytest.log"
record 'pytest -m "cuda or kernels"' $rc $((SECONDS - t0)) \
  "$(grep -E '[0-9]+ (passed|failed)' "$WORK/pytest.log" | tail -n 1 | tr -d '=' | xargs)" "$WORK/pytest.log"

# 2. gru-xp check on the GPU
t0=$SECONDS
timeout 60 "$PY" -m gru_xp check --device "$DEVICE" >"$WORK/check.log" 2>&1
rc=$?
cat "$WORK/check.log"
record "gru-xp check --device $DEVICE" $rc $((SECONDS - t0)) "$(grep -E '^[0-9]+ passed' "$WORK/check.log" | tail -n 1)" \
  "$WORK/check.log"

# 3. the electric job on cuda and on cpu, together, then the metrics side by side
t0=$SECONDS
pids=()
for dev in "$DEVICE" cpu; do
  side=$([ ${#pids[@]} -eq 0 ] && echo dev || echo cpu)
  timeout 150 "$PY" -m gru_xp train --config electric --device "$dev" --out "$WORK/electric-$side" --no-plots --quiet \
    >"$WORK/train-$side.log" 2>&1 &
  pids+=($!)
done
wait "${pids[0]}"; rc_dev=$?
wait "${pids[1]}"; rc_cpu=$?
"$PY" - "$WORK" "$RESULTS/gpu-$DATE-electric.json" >"$WORK/compare.log" 2>&1 <<'EOF'
import json, sys
work, out = sys.argv[1], sys.argv[2]
LIMIT = 1e-5  # relative: float32 rounding (on one CPU, other paths and dtypes move the metrics by <= 1.5e-7:
#               benchmarks/results/electric-paths-cpu.json)
runs = {d: {f: json.load(open(f"{work}/electric-{d}/{f}.json")) for f in ("metrics", "history")} for d in ("dev", "cpu")}
rows, worst = [], 0.0
for split, by_model in runs["cpu"]["metrics"].items():
    for metric, ref in by_model["model"].items():
        got = runs["dev"]["metrics"][split]["model"][metric]
        rel = abs(got - ref) / max(abs(ref), 1e-12)
        worst = max(worst, rel)
        rows.append({"split": split, "metric": metric, "cpu": ref, "device": got, "rel_diff": rel})
epochs = {d: [m.get("best_epoch") for m in runs[d]["history"].get("members") or [runs[d]["history"]]] for d in runs}
secs = {d: sum(m.get("seconds", 0.0) for m in runs[d]["history"].get("members") or [runs[d]["history"]]) for d in runs}
ok = worst <= LIMIT and epochs["dev"] == epochs["cpu"]
json.dump({"limit_rel": LIMIT, "max_rel_diff": worst, "best_epochs": epochs, "seconds": secs, "ok": ok,
           "rows": rows}, open(out, "w"), indent=1)
t = {r["metric"]: r for r in rows if r["split"] == "test"}
same = "equal" if epochs["dev"] == epochs["cpu"] else "DIFFER"
print(f"max rel diff {worst:.1e} (limit {LIMIT:.0e}); best epochs {same}; test RMSE {t['rmse']['device']:.6f} vs cpu "
      f"{t['rmse']['cpu']:.6f}; training seconds {secs['dev']:.1f} vs cpu {secs['cpu']:.1f}")
sys.exit(0 if ok else 1)
EOF
rc=$?
cat "$WORK/compare.log"
[ $rc_dev -ne 0 ] && tail -n 5 "$WORK/train-dev.log"
[ $rc_cpu -ne 0 ] && tail -n 5 "$WORK/train-cpu.log"
[ $rc -eq 0 ] && { [ $rc_dev -ne 0 ] || [ $rc_cpu -ne 0 ]; } && rc=1
record "train electric: $DEVICE vs cpu" $rc $((SECONDS - t0)) "$(tail -n 1 "$WORK/compare.log")" \
  "$WORK/train-dev.log" "$WORK/train-cpu.log" "$WORK/compare.log"

# 4. the benchmark
t0=$SECONDS
# shellcheck disable=SC2086
timeout 100 "$PY" -m gru_xp bench --device "$DEVICE" --cells all --json "$RESULTS/gpu-$DATE.json" $BENCH_ARGS \
  >"$WORK/bench.log" 2>&1
rc=$?
cat "$WORK/bench.log"
record "gru-xp bench --device $DEVICE --cells all" $rc $((SECONDS - t0)) \
  "$RESULTS/gpu-$DATE.json: $(grep -cE '^\| (gru|lstm|rnn) ' "$WORK/bench.log") rows" "$WORK/bench.log"

# the summary
{
  echo "## gpu_check $DATE: $("$PY" -c "from gru_xp.backend import resolve; print(resolve('$DEVICE').describe())" 2>&1)"
  echo
  echo "| step | result | seconds | detail |"
  echo "|---|---|---|---|"
  for i in "${!NAMES[@]}"; do echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECS[$i]} | ${DETAILS[$i]} |"; done
  echo
  echo "total: $SECONDS s; the steps' output: gpu-$DATE-log.txt"
} >"$RESULTS/gpu-$DATE-check.md"
cp "$WORK/log.txt" "$RESULTS/gpu-$DATE-log.txt"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$RESULTS"/gpu-"$DATE"* "$OUT"/; fi  # the device tool's folder
echo
cat "$RESULTS/gpu-$DATE-check.md"
for r in "${STATUS[@]}"; do [ "$r" = PASS ] || exit 1; done
exit 0
