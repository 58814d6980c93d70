"""Prediction intervals, measured: coverage, width and interval score of every shipped config on its test part
(beside the seasonal-naive conformal interval), the 4-fold walk-forward backtest, and the design study that fixed
the defaults on pre-test data only.

    python benchmarks/intervals.py                 # test parts + backtest -> benchmarks/results/intervals.json
    python benchmarks/intervals.py --only electric --seeds 0,5
    python benchmarks/intervals.py --inner         # design study, pre-test data only -> results/intervals-inner.json

Test mode: each config is run with its own settings and the default intervals (gru_xp.runs.run, save=False); per
run the test coverage, mean width and interval score at 80% and 95% of the model and of the seasonal-naive
conformal interval (the same conformal procedure around the seasonal-naive forecast). The binomial band is the
central 95% range of Binomial(n, c) / n for n test origins (for a K-step head the K outputs of one origin are not
independent, so the band is the one of n origins, not n*K outputs).

Inner mode (how window, gamma and calibration_size were chosen, never on test data): every config is cut at its test
start (the rows before round(split_ratio * n)), split again at 0.8 as in `benchmarks/quality.py --inner`; the
model is trained once per seed with intervals off, the calibration refit is fitted once with the largest
calibration size, and every candidate (window x gamma x calibration size) is scored on the inner hold-out from the
same forecasts (a smaller calibration size keeps only the refit's latest origins: an approximation, the refit
itself was fitted on a slightly shorter series). The rule, fixed before looking: the smallest mean |coverage -
nominal| over configs and both levels; among candidates within 0.005 of it, the smallest mean interval score
relative to the best candidate's per config and level.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import inner_data, machine_info, parse_seeds, write_json_atomic  # noqa: E402

from gru_xp import intervals, metrics  # noqa: E402
from gru_xp.backend import resolve  # noqa: E402
from gru_xp.backtest import backtest  # noqa: E402
from gru_xp.config import make_config  # noqa: E402
from gru_xp.runs import calibration_refit, member_predict, run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LEVELS = (0.8, 0.95)
KEYS = ("coverage", "width", "interval_score")

# (label, config, overrides, seeds); electric is an ensemble of 5 (seeds s..s+4): base seeds 0, 5, .. are disjoint
SUITE = [
    ("electric", "electric", {}, [0, 5, 10, 15, 20]),
    ("electric, quantile head (CQR)", "electric", {"loss": "quantile"}, [0, 5, 10, 15, 20]),
    ("default", "default", {}, range(5)),
    ("goog", "goog", {}, range(5)),
    ("aapl", "aapl", {}, range(5)),
    ("ibm", "ibm", {}, range(5)),
    ("sine", "sine", {}, range(3)),
    ("sine-tutorial", "sine-tutorial", {}, range(3)),
    ("electric-keras-lstm", "electric-keras-lstm", {}, range(3)),
    ("electric-keras-gru", "electric-keras-gru", {}, range(3)),
    ("electric-keras-rnn", "electric-keras-rnn", {}, range(3)),
    ("goog-seed", "goog-seed", {}, [0]),
]
BACKTESTS = [("electric", "electric", {}, [0, 5, 10]), ("default", "default", {}, range(3))]
INNER = [("electric", "electric", {}), ("default", "default", {}), ("goog", "goog", {}), ("aapl", "aapl", {}),
         ("ibm", "ibm", {}), ("electric-keras-gru", "electric-keras-gru", {})]
GRID = {"window": [0, 100, 50, 30], "gamma": [0.0, 0.005, 0.02], "calibration_size": [0, 20, 40, 80]}


def binomial_band(n: int, c: float) -> tuple[float, float]:
    """The central 95% range of Binomial(n, c) / n (the pmf in log space: n may be thousands)."""
    k = np.arange(n + 1)
    logpmf = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k]) \
        + k * math.log(c) + (n - k) * math.log(1 - c)
    cdf = np.cumsum(np.exp(logpmf))
    return float(np.searchsorted(cdf, 0.025) / n), float(np.searchsorted(cdf, 0.975) / n)


def interval_record(split_metrics: dict) -> dict:
    return {who: {f"{k}_{metrics.level_name(c)}": split_metrics[who][f"{k}_{metrics.level_name(c)}"]
                  for k in KEYS for c in LEVELS} for who in ("model", "naive", "seasonal_naive")}


def one_run(config: str, ov: dict, seed: int) -> dict:
    cfg = make_config(config, {**ov, "seed": seed, "quiet": True, "plots": False})
    t0 = time.perf_counter()
    r = run(cfg, save=False, progress=False, log=lambda *a, **k: None)
    test = r.predictions["test"]
    return {"seed": seed, "wall_s": round(time.perf_counter() - t0, 2), "test_origins": int(test["anchors"].size),
            "horizon": cfg.horizon, "refit_cut": (r.intervals or {}).get("refit", {}) and r.intervals["refit"]["cut"],
            "test": interval_record(r.metrics["test"]), "test_rmse": r.metrics["test"]["model"]["rmse"]}


def summarize(runs: list, key: str) -> dict:
    out = {}
    for who in ("model", "seasonal_naive"):
        for k in KEYS:
            for c in LEVELS:
                name = f"{k}_{metrics.level_name(c)}"
                v = np.array([r[key][who][name] for r in runs], dtype=float)
                out[f"{who}.{name}"] = {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
    return out


def verdict(runs: list, n: int) -> dict:
    """Targets: every run's coverage inside the binomial band; the mean within 3 points of nominal; the mean 80%
    width below the seasonal-naive conformal interval's."""
    out = {}
    for c in LEVELS:
        lo, hi = binomial_band(n, c)
        cov = [r["test"]["model"][f"coverage_{metrics.level_name(c)}"] for r in runs]
        out[metrics.level_name(c)] = {"band": [lo, hi], "runs_in_band": int(sum(lo <= v <= hi for v in cov)),
                                      "runs": len(cov), "mean_within_3_points": bool(abs(np.mean(cov) - c) <= 0.03)}
    w = np.mean([r["test"]["model"]["width_80"] for r in runs])
    ws = np.mean([r["test"]["seasonal_naive"]["width_80"] for r in runs])
    out["width_80_below_seasonal_naive"] = bool(w < ws)
    return out


def test_mode(args, save=lambda res: None) -> dict:
    """save(partial results) is called after every config and backtest (a crash keeps what was measured)."""
    results, backtests = [], []
    jobs = [j for j in SUITE if not args.only or j[0] in args.only]
    for label, config, ov, seeds in jobs:
        seeds = parse_seeds(args.seeds) if args.seeds else list(seeds)
        runs = []
        for sd in seeds:
            runs.append(one_run(config, ov, sd))
            print(f"  {label} seed {sd}: " + " ".join(
                f"cov{metrics.level_name(c)} {runs[-1]['test']['model'][f'coverage_{metrics.level_name(c)}']:.3f}"
                for c in LEVELS) + f" w80 {runs[-1]['test']['model']['width_80']:.4g} (s.naive "
                f"{runs[-1]['test']['seasonal_naive']['width_80']:.4g}) {runs[-1]['wall_s']:.1f}s", flush=True)
        res = {"label": label, "config": config, "overrides": ov, "seeds": seeds, "runs": runs,
               "summary": summarize(runs, "test"), "verdict": verdict(runs, runs[0]["test_origins"])}
        results.append(res)
        save({"results": results, "backtests": backtests, "partial": True})
    for label, config, ov, seeds in BACKTESTS:
        if args.only and label not in args.only or args.no_backtest:
            continue
        for sd in (parse_seeds(args.seeds) if args.seeds else list(seeds)):
            cfg = make_config(config, {**ov, "seed": sd, "quiet": True, "plots": False})
            t0 = time.perf_counter()
            r = backtest(cfg, 4, "every", progress=False, log=lambda *a, **k: None)
            rec = {"label": label, "seed": sd, "wall_s": round(time.perf_counter() - t0, 1),
                   "folds": [{"fold": d["fold"], "origins": d["origins"], **interval_record(d["metrics"])}
                             for d in r.folds],
                   "overall": {"origins": r.overall["origins"], **interval_record(r.overall["metrics"])}}
            backtests.append(rec)
            save({"results": results, "backtests": backtests, "partial": True})
            o = rec["overall"]["model"]
            print(f"  backtest {label} seed {sd}: overall cov80 {o['coverage_80']:.3f} cov95 {o['coverage_95']:.3f} "
                  f"w80 {o['width_80']:.4g} ({rec['wall_s']:.0f}s)", flush=True)
    return {"results": results, "backtests": backtests}


def inner_mode(args) -> dict:
    """The design study on pre-test data (see the module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="gru-xp-intervals-inner-"))
    combos = list(itertools.product(GRID["window"], GRID["gamma"], GRID["calibration_size"]))
    table = {}  # (config, combo) -> list of per-seed {coverage_80, ...}
    try:
        for label, config, ov in (j for j in INNER if not args.only or j[0] in args.only):
            inner = inner_data(config, ov, tmp)
            for sd in (parse_seeds(args.seeds) if args.seeds else range(3)):
                cfg = make_config(config, {**ov, **inner, "seed": sd, "quiet": True, "plots": False, "intervals": []})
                r = run(cfg, save=False, progress=False, log=lambda *a, **k: None)
                big = dataclasses.replace(cfg, intervals=list(LEVELS), calibration_size=max(GRID["calibration_size"]))
                be = resolve(cfg.device, cfg.dtype)
                refit = calibration_refit(big, r.data, be, False, lambda *a, **k: None, False)
                prep, y = r.data, r.data.series.y
                predict, taus = member_predict(r.models)
                s0 = intervals.Settings(LEVELS, 0, 0.0, prep.pipeline.log)
                cal, fq, _ = intervals.calibrate(s0, y, prep.pipeline, prep.phase, predict, taus, prep.val_start,
                                                 refit, {"test": prep.test.anchors})
                actual = r.predictions["test"]["actual"]
                K, s_ = cfg.horizon, prep.test_start
                for w, g, size in combos:
                    # the earliest calibration origin this size keeps: s - K - size when the validation tail is
                    # shorter than that (a refit's rows), else the main model's first (size 0: never refitted)
                    keep = cal.origins >= (min(s_ - K - size, prep.val_start - 1) if size else prep.val_start - 1)
                    b = intervals.run_bands(intervals.Settings(LEVELS, w, g, prep.pipeline.log), y,
                                            prep.pipeline.season, cal.rows(keep), fq)["test"]["model"]
                    rec = {}
                    for c in LEVELS:
                        rec.update(metrics.interval_scores(actual, b.lower[c], b.upper[c], c))
                    table.setdefault((label, (w, g, size)), []).append(rec)
                print(f"  {label} seed {sd}: done ({len(combos)} candidates)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return choose(table, combos)


def choose(table: dict, combos: list) -> dict:
    labels = sorted({k[0] for k in table})
    rows = []
    best_score = {}
    for lab in labels:
        for c in LEVELS:
            n = metrics.level_name(c)
            best_score[(lab, n)] = min(np.mean([r[f"interval_score_{n}"] for r in table[(lab, cb)]]) for cb in combos)
    for cb in combos:
        err, rel, per = [], [], {}
        for lab in labels:
            recs = table[(lab, cb)]
            for c in LEVELS:
                n = metrics.level_name(c)
                cov = float(np.mean([r[f"coverage_{n}"] for r in recs]))
                sc = float(np.mean([r[f"interval_score_{n}"] for r in recs]))
                err.append(abs(cov - c))
                rel.append(sc / best_score[(lab, n)] if math.isfinite(sc) else math.inf)
                per[f"{lab} coverage_{n}"] = cov
        rows.append({"window": cb[0], "gamma": cb[1], "calibration_size": cb[2],
                     "mean_abs_coverage_error": float(np.mean(err)), "mean_relative_interval_score":
                         float(np.mean(rel)), "per_config": per})
    m = min(r["mean_abs_coverage_error"] for r in rows)
    near = [r for r in rows if r["mean_abs_coverage_error"] <= m + 0.005]
    chosen = min(near, key=lambda r: r["mean_relative_interval_score"])
    rows.sort(key=lambda r: (r["mean_abs_coverage_error"], r["mean_relative_interval_score"]))
    return {"rule": "min mean |coverage - nominal| over configs and levels; within 0.005 of it, min mean relative "
                    "interval score", "chosen": chosen, "candidates": rows}


def markdown(res: dict) -> str:
    lines = ["| config | runs | n test origins x K | coverage 80% mean (min-max) [band] | coverage 95% mean (min-max) "
             "[band] | width 80% model / s.naive | width 95% model / s.naive | interval score 80% model / s.naive |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        s, v, r0 = r["summary"], r["verdict"], r["runs"][0]

        def cov(n):
            return (f"{s[f'model.coverage_{n}']['mean']:.3f} ({s[f'model.coverage_{n}']['min']:.3f}-"
                    f"{s[f'model.coverage_{n}']['max']:.3f}) [{v[n]['band'][0]:.2f}-{v[n]['band'][1]:.2f}]")

        def pair(k):
            return f"{s[f'model.{k}']['mean']:.4g} / {s[f'seasonal_naive.{k}']['mean']:.4g}"

        lines.append(f"| {r['label']} | {len(r['runs'])} | {r0['test_origins']} x {r0['horizon']} | {cov('80')} | "
                     f"{cov('95')} | {pair('width_80')} | {pair('width_95')} | {pair('interval_score_80')} |")
    if res.get("backtests"):
        lines += ["", "| backtest (4 folds, retrain every) | seed | coverage 80% per fold | overall 80% | coverage 95% "
                      "per fold | overall 95% | width 80% model / s.naive |", "|---|---|---|---|---|---|---|"]
        for b in res["backtests"]:
            f80 = ", ".join(f"{d['model']['coverage_80']:.2f}" for d in b["folds"])
            f95 = ", ".join(f"{d['model']['coverage_95']:.2f}" for d in b["folds"])
            o = b["overall"]
            lines.append(f"| {b['label']} | {b['seed']} | {f80} | {o['model']['coverage_80']:.3f} | {f95} | "
                         f"{o['model']['coverage_95']:.3f} | {o['model']['width_80']:.4g} / "
                         f"{o['seasonal_naive']['width_80']:.4g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", help="only these labels (repeatable)")
    ap.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,5 (default: the suite's)")
    ap.add_argument("--inner", action="store_true", help="the design study on pre-test data")
    ap.add_argument("--no-backtest", action="store_true", help="skip the walk-forward backtests")
    ap.add_argument("--json", default=None, help="output file (default results/intervals.json or "
                                                 "results/intervals-inner.json; none with --only)")
    a = ap.parse_args(argv)
    info, t0 = machine_info(), time.perf_counter()
    out = Path(a.json) if a.json else (None if a.only or a.seeds else
                                       RESULTS / ("intervals-inner.json" if a.inner else "intervals.json"))

    def save(res):
        if out is not None:
            write_json_atomic(out, {"machine": info, "total_seconds": round(time.perf_counter() - t0, 1), **res})

    res = inner_mode(a) if a.inner else test_mode(a, save)
    total = time.perf_counter() - t0
    if a.inner:
        c = res["chosen"]
        print(f"chosen: window {c['window']}, gamma {c['gamma']}, calibration_size {c['calibration_size']} "
              f"(mean |coverage - nominal| {c['mean_abs_coverage_error']:.4f})")
        for r in res["candidates"][:12]:
            print(f"  window {r['window']:>3} gamma {r['gamma']:<5} size {r['calibration_size']:>2}: "
                  f"|err| {r['mean_abs_coverage_error']:.4f} rel score {r['mean_relative_interval_score']:.4f}")
    else:
        print(markdown(res))
    print(f"total {total:.0f}s")
    if out is not None:
        save(res)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
