"""Forecast quality of shipped configs over several seeds, beside the naive and seasonal-naive baselines.

Each (config, overrides) is trained once per seed with gru_xp.runs.run(save=False); validation and test metrics
(original scale) of the model and both baselines are collected, with the model/baseline RMSE ratios and wall time.
Per config the table gives the mean, spread (std) and worst seed of each test ratio, and, as an extra row, the
seed ensemble (test forecasts of all seeds averaged; no selection on test anywhere).

Examples:
    python benchmarks/quality.py                          # the shipped suite -> benchmarks/results/quality.json
    python benchmarks/quality.py --only electric --seeds 0-9
    python benchmarks/quality.py --run electric --set weight_decay=1e-3 --set dropout=0.2 --seeds 0-4 \\
        --json /tmp/try.json                              # an ad-hoc candidate, not written to the results file

Results are written atomically with gru_xp.checkpoint.write_json (a temporary file in the same folder, fsync, then
os.replace), as strict JSON (NaN -> null).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gru_xp import checkpoint, metrics  # noqa: E402
from gru_xp.config import make_config  # noqa: E402
from gru_xp.runs import run  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "quality.json"

# (label, config, overrides, seeds). The Electric bar: test RMSE <= 0.8 x seasonal-naive RMSE, every seed.
# electric is an ensemble of 5 (seeds s..s+4): its 10 base seeds 0, 5, .., 45 give 10 ensembles with disjoint members.
PREVIOUS_ELECTRIC = {"log": False, "seq_length": 36, "hidden_size": 32, "weight_decay": 0.0,
                     "calendar": False, "ensemble": 1}  # before the first search
# electric before calendar inputs were selected (rolling-origin validation, see configs/electric.toml), for information
NO_CALENDAR_ELECTRIC = {"calendar": False, "hidden_size": 64}
SUITE = [
    ("default", "default", {}, range(5)),
    ("electric", "electric", {}, range(0, 50, 5)),
    ("electric-single", "electric", {"ensemble": 1}, range(10)),
    ("electric-no-calendar", "electric", NO_CALENDAR_ELECTRIC, range(0, 50, 5)),
    ("electric-previous", "electric", PREVIOUS_ELECTRIC, range(10)),
    ("goog", "goog", {}, range(5)),
    ("sine", "sine", {}, range(3)),
    ("sine-tutorial", "sine-tutorial", {}, range(3)),
    ("electric-keras-lstm", "electric-keras-lstm", {}, range(3)),
    ("electric-keras-gru", "electric-keras-gru", {}, range(3)),
    ("electric-keras-rnn", "electric-keras-rnn", {}, range(3)),
]
BARS = {"default": 0.8, "electric": 0.8, "electric-single": 0.8, "electric-no-calendar": 0.8, "electric-previous": 0.8}  # label -> max test RMSE / seasonal-naive RMSE


def parse_seeds(s: str) -> list[int]:
    out = []
    for part in s.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _ratio(a, b):
    return a / b if b and b > 0 and math.isfinite(b) else math.nan


INNER_SPLIT = 0.8  # --inner: the pre-test part is split again, its last 20% becoming the inner hold-out


def inner_data(config: str, overrides: dict, folder: Path) -> dict:
    """Overrides for the selection's inner hold-out: the config's series truncated at its test start (rows before
    round(split_ratio * n), read with the config's own date/target settings), split again at INNER_SPLIT, so the
    inner "test" lies entirely inside the original training+validation data. Nothing past the test start is read."""
    from gru_xp.data import load_series, split_points

    cfg = make_config(config, {**overrides, "quiet": True})
    series = load_series(cfg)
    _, s = split_points(len(series.y), cfg.split_ratio, cfg.val_ratio)
    cols = {"date": series.dates[:s].strftime("%Y-%m-%d")} if series.dates is not None else {}
    path = folder / f"{Path(series.source).stem}-pretest.csv"
    pd.DataFrame({**cols, "value": series.y[:s]}).to_csv(path, index=False)
    return {"data": str(path), "target": "value", "date": "date" if cols else "none", "split_ratio": INNER_SPLIT}


def one_run(config: str, overrides: dict, seed: int) -> tuple[dict, dict]:
    ov = {**overrides, "seed": seed, "quiet": True, "plots": False}
    cfg = make_config(config, ov)
    t0 = time.perf_counter()
    r = run(cfg, save=False, progress=False, log=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    rec = {"seed": seed, "wall_s": round(wall, 3), "train_s": round(r.history.seconds, 3),
           "epochs_run": len(r.history.train_loss), "best_epoch": r.history.best_epoch,
           "best_val_loss": r.history.best_loss, "stopped_early": r.history.stopped_early}
    if cfg.shrink:
        rec["shrink"] = r.data.pipeline.shrink
    if cfg.ensemble > 1:  # seeds seed .. seed+N-1, averaged; epochs/best epoch above are the first member's
        rec["ensemble"] = cfg.ensemble
        rec["members_epochs_run"] = [len(h.train_loss) for h in r.histories]
        rec["members_best_epoch"] = [h.best_epoch for h in r.histories]
    for split in ("train", "val", "test"):
        m = r.metrics.get(split)
        if m is None:
            continue
        rec[split] = m
        rec[split + "_ratio_naive"] = _ratio(m["model"]["rmse"], m["naive"]["rmse"])
        rec[split + "_ratio_snaive"] = _ratio(m["model"]["rmse"], m["seasonal_naive"]["rmse"])
    preds = {s: r.predictions[s] for s in ("val", "test") if s in r.predictions}
    return rec, preds


def summarize(recs: list[dict]) -> dict:
    out = {}
    keys = ["val_ratio_snaive", "val_ratio_naive", "test_ratio_snaive", "test_ratio_naive", "wall_s", "epochs_run"]
    for k in keys:
        v = np.array([r[k] for r in recs if k in r], dtype=float)
        if v.size:
            out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                      "min": float(v.min()), "max": float(v.max())}
    for split in ("val", "test"):
        for who in ("model", "naive", "seasonal_naive"):
            for met in ("rmse", "mae", "mase"):
                v = np.array([r[split][who][met] for r in recs if split in r], dtype=float)
                if v.size:
                    out[f"{split}_{who}_{met}"] = {"mean": float(v.mean()),
                                                   "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                                                   "min": float(v.min()), "max": float(v.max())}
    return out


def ensemble(preds: list[dict], recs: list[dict]) -> dict:
    """Average the seeds' forecasts (same windows for every seed unless the data depend on the seed)."""
    out = {}
    for split in ("val", "test"):
        ps = [p[split] for p in preds if split in p]
        if not ps or any(not np.array_equal(p["anchors"], ps[0]["anchors"]) or
                         not np.array_equal(p["actual"], ps[0]["actual"]) for p in ps):
            return {}  # e.g. the sine series is drawn from the seed: no common target to average over
        avg = np.mean([p["model"] for p in ps], axis=0)
        m = {"model": metrics.score(ps[0]["actual"], avg, math.nan)}
        base = recs[0][split]
        m["naive"], m["seasonal_naive"] = base["naive"], base["seasonal_naive"]
        m["model"]["mase"] = m["model"]["mae"] / base["naive"]["mae"] * base["naive"]["mase"] \
            if base["naive"]["mae"] > 0 else math.nan
        out[split] = m
        out[split + "_ratio_naive"] = _ratio(m["model"]["rmse"], base["naive"]["rmse"])
        out[split + "_ratio_snaive"] = _ratio(m["model"]["rmse"], base["seasonal_naive"]["rmse"])
    return out


def machine_info() -> dict:
    import pandas

    import gru_xp

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "loadavg_at_start": load, "git_commit": commit,
            "versions": {"gru_xp": gru_xp.__version__, "python": platform.python_version(),
                         "numpy": np.__version__, "pandas": pandas.__version__}}


def write_json_atomic(path: Path, obj) -> None:
    """Strict JSON (NaN -> null), written atomically by the package's own helper (temporary file, fsync, rename)."""
    checkpoint.write_json(path, metrics.jsonable(obj))


def _f(x, d=3):
    if isinstance(x, dict):  # a summary entry
        x = x.get("mean")
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{d}f}"


def _g(s: dict, key: str, stat: str = "mean"):
    return s.get(key, {}).get(stat)


def markdown(results: list[dict]) -> str:
    lines = ["| config | seeds | val RMSE / sn | test RMSE model | naive | seasonal naive | test / naive "
             "(mean, worst) | test / seasonal naive (mean ± std, worst) | test MASE | ensemble test / sn | bar | "
             "s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, e = r["summary"], r.get("ensemble") or {}
        bar = r.get("bar")
        if bar is not None:
            ok = s["test_ratio_snaive"]["max"] <= bar
            bar_txt = f"<= {bar}: {'met, every seed' if ok else 'NOT met on every seed'}"
        else:
            bar_txt = ""
        lines.append(
            f"| {r['label']} | {len(r['runs'])} | {_f(_g(s, 'val_ratio_snaive'))} | "
            f"{_f(s['test_model_rmse']['mean'])} ± {_f(s['test_model_rmse']['std'])} | "
            f"{_f(s['test_naive_rmse']['mean'])} | {_f(s['test_seasonal_naive_rmse']['mean'])} | "
            f"{_f(s['test_ratio_naive']['mean'])}, {_f(s['test_ratio_naive']['max'])} | "
            f"{_f(s['test_ratio_snaive']['mean'])} ± {_f(s['test_ratio_snaive']['std'])}, "
            f"{_f(s['test_ratio_snaive']['max'])} | {_f(s['test_model_mase']['mean'])} | "
            f"{_f(e.get('test_ratio_snaive'))} | {bar_txt} | {_f(s['wall_s']['mean'], 1)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", help="run only these suite labels (repeatable)")
    ap.add_argument("--run", help="an ad-hoc config (name or path) instead of the suite")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for --run (repeatable)")
    ap.add_argument("--label", help="label for --run")
    ap.add_argument("--seeds", help="seeds, e.g. 0-4 or 0,3,7 (default: the suite's)")
    ap.add_argument("--json", default=None, help=f"output file (default {DEFAULT_JSON.relative_to(ROOT)} for the "
                                                 f"suite; nothing for --run unless given)")
    ap.add_argument("--no-json", action="store_true", help="print the table only")
    ap.add_argument("--verbose", action="store_true", help="print every seed")
    ap.add_argument("--inner", action="store_true", help="selection mode: train on the series truncated at its test "
                                                         f"start, split {INNER_SPLIT} (the 'test' columns are then "
                                                         "the inner hold-out, inside the pre-test data)")
    a = ap.parse_args(argv)

    if a.run:
        ov = {}
        for kv in a.set:
            k, _, v = kv.partition("=")
            ov[k.strip().replace("-", "_")] = parse_value(v.strip())
        label = a.label or (a.run + ("".join(f" {k}={v}" for k, v in ov.items())))
        jobs = [(label, a.run, ov, parse_seeds(a.seeds) if a.seeds else list(range(5)))]
        out_json = Path(a.json) if a.json else None
    else:
        jobs = [(lab, c, ov, parse_seeds(a.seeds) if a.seeds else list(sd)) for lab, c, ov, sd in SUITE
                if not a.only or lab in a.only]
        out_json = None if a.no_json else Path(a.json) if a.json else DEFAULT_JSON
    if a.no_json:
        out_json = None

    if a.inner and out_json == DEFAULT_JSON:
        out_json = None  # the shipped results file holds test results only
    tmpdir = Path(tempfile.mkdtemp(prefix="gru-xp-inner-")) if a.inner else None
    info = machine_info()
    results = []
    t_all = time.perf_counter()
    for label, config, ov, seeds in jobs:
        recs, preds = [], []
        inner = inner_data(config, ov, tmpdir) if a.inner else {}  # the same pre-test file for every seed
        for sd in seeds:
            rec, p = one_run(config, {**ov, **inner}, sd)
            recs.append(rec)
            preds.append(p)
            if a.verbose:
                print(f"  {label} seed {sd}: val/sn {_f(rec.get('val_ratio_snaive'))} test/sn "
                      f"{_f(rec['test_ratio_snaive'])} test/naive {_f(rec['test_ratio_naive'])} "
                      f"best epoch {rec['best_epoch']}/{rec['epochs_run']} {rec['wall_s']:.1f}s", flush=True)
        res = {"label": label, "config": config, "overrides": ov, "seeds": list(seeds),
               "resolved_config": make_config(config, {**ov, "seed": seeds[0]}).to_dict(),
               "bar": BARS.get(label), "runs": recs, "summary": summarize(recs), "ensemble": ensemble(preds, recs)}
        if res["bar"] is not None:
            res["bar_met_every_seed"] = bool(res["summary"]["test_ratio_snaive"]["max"] <= res["bar"])
        results.append(res)
        s = res["summary"]
        print(f"{label}: test/sn mean {_f(s['test_ratio_snaive']['mean'])} worst {_f(s['test_ratio_snaive']['max'])}"
              f"  val/sn mean {_f(_g(s, 'val_ratio_snaive'))}  ({s['wall_s']['mean']:.1f}s/run)", flush=True)
    total = time.perf_counter() - t_all
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
    table = markdown(results)
    print()
    print(table)
    print(f"\ntotal {total:.0f}s on {info['cpu_count']} CPU(s), {info['date']}")
    if out_json is not None:
        write_json_atomic(out_json, {"machine": info, "total_seconds": round(total, 1),
                                     "bar": "Electric_Production 1-step: test RMSE <= 0.8 x seasonal-naive RMSE",
                                     "selection": "configs chosen on validation metrics only (see README)",
                                     "results": results})
        print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
