"""The results of a sweep (gru_xp/sweep.py): OUT/results.json and OUT/results.csv, one row a task, rewritten
atomically after every finished task; the progress line of a task and the summary table ranked by validation."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import UserError
from .metrics import fmt as _fmt


class ResultsTable:
    """OUT/results.json (list of rows, strict JSON) and OUT/results.csv, rewritten atomically after every row."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.json_path = self.out / "results.json"
        self.csv_path = self.out / "results.csv"
        self.rows: dict[str, dict] = {}
        if self.json_path.is_file():
            try:
                with open(self.json_path, encoding="utf-8") as f:
                    rows = json.load(f)
                if not isinstance(rows, list):
                    raise ValueError("not a list")
                self.rows = {r["key"]: r for r in rows}
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{self.json_path} is corrupt ({type(e).__name__}); delete it or pass another "
                                f"--out") from None

    def done(self, key: str) -> bool:
        r = self.rows.get(key)
        return r is not None and r.get("status") == "ok"

    def add(self, row: dict, order: list[str] | None = None) -> None:
        self.rows[row["key"]] = row
        self.write(order)

    def ordered(self, order: list[str] | None = None) -> list[dict]:
        order = order or []
        keys = [k for k in order if k in self.rows] + [k for k in self.rows if k not in set(order)]
        return [self.rows[k] for k in keys]

    def write(self, order: list[str] | None = None) -> None:
        import pandas as pd

        from .checkpoint import write_json, write_text
        from .metrics import jsonable

        rows = self.ordered(order)
        write_json(self.json_path, jsonable(rows))
        flat = [{k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()} for r in rows]
        write_text(self.csv_path, pd.DataFrame(flat).to_csv(index=False, float_format="%.8g"))


def progress_line(i: int, n: int, row: dict) -> str:
    """The log line of the i-th of n finished tasks."""
    head = f"[{i}/{n}] {row['key'][:10]} {row['status']:<6}"
    if row["status"] != "ok":
        return f"{head} {row['seconds']:.1f}s  {row['point']}: {row['error']}"
    return (f"{head} test RMSE {_fmt(row['test_model_rmse'])} (naive {_fmt(row['test_naive_rmse'])}, "
            f"x{_fmt(row['test_skill_naive'])})  {row['seconds']:.1f}s  {row['point']}")


def _val_rank(r) -> float:
    """Validation RMSE / seasonal-naive RMSE: on the original scale and scale-free, so comparable across scalers,
    transforms and series (the scaled val_loss is not)."""
    v = r.get("val_skill_seasonal_naive")
    if r.get("val_model_mase_median") is not None:  # a panel: mean MASE over series / seasonal naive's (issue 18)
        v = (r.get("val_model_mase") or math.nan) / (r.get("val_seasonal_naive_mase") or math.nan)
    return v if v is not None and math.isfinite(v) else math.inf


def summary_table(rows: list[dict], top: int = 10) -> str:
    """The `top` successful rows, best first by _val_rank."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=_val_rank)
    if not ok:
        return "no successful task"
    head = f"{'rank':>4} {'key':<10} {'val/snaive':>10} {'test RMSE':>10} {'naive':>10} {'x naive':>8} {'s':>6}  point"
    lines = [f"best by validation RMSE / seasonal naive (top {min(top, len(ok))} of {len(ok)}):", head,
             "-" * len(head)]
    for i, r in enumerate(ok[:top], 1):
        lines.append(f"{i:>4} {r['key'][:10]:<10} {_fmt(r.get('val_skill_seasonal_naive')):>10} "
                     f"{_fmt(r['test_model_rmse']):>10} "
                     f"{_fmt(r['test_naive_rmse']):>10} {_fmt(r['test_skill_naive']):>8} {r['seconds']:>6.1f}  "
                     f"{r['point']}")
    return "\n".join(lines)
