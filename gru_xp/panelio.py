"""A panel run's folder (issue 18): written atomically, read back for `gru-xp predict`.

    model.npz        the final models' weights (one, or ensemble members m0. .. m{N-1}.) and the metadata below
    config.json      kind "panel", the model, every setting, the data (source, sha256), each series' name, test
                     horizon, validation/test starts and fitted pipeline (scalers on its own training part)
    metrics.json     {"val": {...}, "test": {"model": {"mase", "mase_median", "smape", "rmse", "mae", "mape",
                     "series", "coverage_80", "width_80", "interval_score_80", ...}, "naive": {...},
                     "seasonal_naive": {...}}}
    series_metrics.csv   one row per series: its points, horizon, MASE scale and every predictor's scores
    predictions.csv  series, date/step, split, horizon, actual, predicted, naive, seasonal_naive, lower_C, upper_C
    history.json, intervals.json, cost.png, series.png (the best, median and worst series by the model's test MASE)
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint, metrics, plots
from .config import RunConfig, from_dict
from .data import Pipeline
from .errors import UserError
from .nn.forecaster import Forecaster
from .runs import member_params, model_spec


def series_table(panel, rows: dict) -> list:
    """Per-series rows: name, points, horizon, then {split}_{predictor}_{metric} for each split scored."""
    index = {split: {k: {r["series"]: r for r in rs} for k, rs in r.items()} for split, r in rows.items()}
    out = []
    for i, name in enumerate(panel.names):
        row = {"series": name, "points": int(len(panel.series[i].y)), "horizon": int(panel.horizons[i])}
        for split, preds in index.items():
            for k, by_name in preds.items():
                r = by_name.get(name)
                for m in ("mase", "smape", "rmse", "mae"):
                    row[f"{split}_{k}_{m}"] = float("nan") if r is None else float(r[m])
        out.append(row)
    return out


def _meta(res, be) -> dict:
    cfg, prep, fp = res.config, res.prep, res.final_prep
    p = prep.panel
    import pandas

    from . import __version__

    spec = model_spec(cfg, fp.pipes[0].n_inputs)
    if cfg.ensemble > 1:
        spec["ensemble"] = cfg.ensemble
    h = res.history
    return {"kind": "panel", "model": spec, "config": cfg.to_dict(),
            "data": {"source": p.source, "sha256": p.sha256, "series": len(p.names), "frequency": p.freq,
                     "season": p.season},
            "panel": {"names": list(p.names), "horizons": p.horizons.tolist(), "points": p.lengths.tolist(),
                      "val_start": prep.val_start.tolist(), "test_start": prep.test_start.tolist(),
                      "stage": fp.stage, "pipelines": [pp.to_dict() for pp in fp.pipes]},
            "run": {"device": be.describe(), "backend": be.name, "dtype": be.dtype_name,
                    "versions": {"gru_xp": __version__, "python": platform.python_version(),
                                 "numpy": np.__version__, "pandas": pandas.__version__},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(res.seconds, 3),
                    "epochs_run": len(h.train_loss), "best_epoch": h.best_epoch, "stopped_early": h.stopped_early,
                    "refit_epochs": [len(r.train_loss) for r in res.refit_histories],
                    "command": " ".join(sys.argv), "status": res.status}}


def _predictions_csv(res) -> str:
    import pandas as pd

    p = res.panel
    rows = []
    levels = [metrics.level_name(c) for c in res.config.intervals] if res.intervals else []
    for split, per in res.forecasts.items():
        for i, d in sorted(per.items()):
            labels = p.series[i].labels()
            for k in range(d["model"].size):
                t = d["origin"] + k + 1
                row = {"series": p.names[i], "date": labels[t] if t < len(labels) else t, "split": split,
                       "horizon": k + 1, "actual": d["actual"][k], "predicted": d["model"][k],
                       "naive": d["naive"][k], "seasonal_naive": d["seasonal_naive"][k]}
                for c in levels:
                    for side in ("lower", "upper"):
                        v = d.get(f"{side}_{c}")
                        row[f"{side}_{c}"] = np.nan if v is None else v[k]
                rows.append(row)
    df = pd.DataFrame(rows)
    if all(s.dates is None for s in p.series):
        df = df.rename(columns={"date": "step"})
    return df.to_csv(index=False, float_format="%.8g")


def write_panel_run(out: Path, res, be) -> None:
    import pandas as pd

    meta = _meta(res, be)
    hist = {**dataclasses.asdict(res.history), "status": res.status}
    if len(res.histories) > 1:
        hist["members"] = [dataclasses.asdict(h) for h in res.histories]
    if res.refit_histories:
        hist["refit"] = [dataclasses.asdict(h) for h in res.refit_histories]
    with checkpoint.atomic_dir(out) as tmp:
        checkpoint.save(tmp / "model.npz", member_params([m.params for m in res.models]), meta)
        checkpoint.write_json(tmp / "config.json", metrics.jsonable({**meta,
                                                                     "format_version": checkpoint.FORMAT_VERSION}))
        checkpoint.write_json(tmp / "metrics.json", metrics.jsonable(res.metrics))
        checkpoint.write_json(tmp / "history.json", metrics.jsonable(hist))
        checkpoint.write_text(tmp / "series_metrics.csv",
                              pd.DataFrame(res.series_rows).to_csv(index=False, float_format="%.6g"))
        checkpoint.write_text(tmp / "predictions.csv", _predictions_csv(res))
        if res.intervals is not None:
            checkpoint.write_json(tmp / "intervals.json", metrics.jsonable(res.intervals))
        if res.config.plots:
            plots.cost(tmp / "cost.png", res.history.train_loss, res.history.val_loss, res.history.best_epoch)
            plots.panel_series(tmp / "series.png", res.panel, res.forecasts.get("test", {}), res.series_rows,
                               res.config.intervals)


# ==== back from a panel run folder ============================================================================
@dataclass
class LoadedPanel:
    models: list  # the final models (ensemble members)
    pipes: list  # [Pipeline] per series, in the run's order
    names: list
    horizons: list
    config: RunConfig
    meta: dict
    intervals: dict | None = None
    folder: Path | None = None
    extra: dict = field(default_factory=dict)


def load_panel_run(run_dir, device: str = "cpu") -> LoadedPanel:
    from .backend import resolve

    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"run folder {d} not found; pass --run DIR written by 'gru-xp train'")
    params, meta = checkpoint.load(d / "model.npz", require=("model", "panel", "config"))
    try:
        cfg = from_dict(meta["config"])
        pan = meta["panel"]
        pipes = [Pipeline.from_dict(p) for p in pan["pipelines"]]
        names, horizons = [str(n) for n in pan["names"]], [int(h) for h in pan["horizons"]]
        spec = dict(meta["model"])
        n = int(spec.pop("ensemble", 1))
        if len(pipes) != len(names) or len(horizons) != len(names) or n < 1:
            raise ValueError("series, pipelines and horizons disagree")
        if any(int(spec["input_size"]) != p.n_inputs for p in pipes):
            raise ValueError(f"input_size {spec['input_size']} but the pipelines make {pipes[0].n_inputs} inputs")
        be = resolve(device, cfg.dtype)
        models = [Forecaster(**spec, device=be, dtype=cfg.dtype, seed=0) for _ in range(n)]
        states = [params] if n == 1 else [{k[len(f"m{i}."):]: v for k, v in params.items() if k.startswith(f"m{i}.")}
                                          for i in range(n)]
    except UserError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"run folder {d} has corrupt metadata ({type(e).__name__}: {e}); retrain with 'gru-xp "
                        f"train'") from None
    for m, st in zip(models, states):
        m.load_state_dict(st)
        m.eval()
    state = None
    if (d / "intervals.json").is_file():
        try:
            with open(d / "intervals.json", encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{d / 'intervals.json'} is unreadable ({type(e).__name__}); restore it from the run or "
                            f"retrain") from None
    return LoadedPanel(models, pipes, names, horizons, cfg, meta, state, d)
