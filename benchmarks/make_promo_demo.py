"""Writes data/promo_demo.csv and data/promo_demo_future.csv: a made-up panel for the README's covariate commands.

Five daily series (ids s0..s4), each a random walk around its own level plus 30 on days with a promotion (a 0/1
column `promo`, known ahead). promo_demo.csv holds 150 observed days per series; promo_demo_future.csv the same plus
6 days per series whose promo is set and whose y is empty: what `gru-xp predict --data` reads future covariates from.
Made up so the answer is known: a model given --future-covariates promo should beat one without it by far.

    python benchmarks/make_promo_demo.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
N_SERIES, N_OBSERVED, N_FUTURE, LIFT = 5, 150, 6, 30.0


def frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    days = pd.date_range("2010-01-01", periods=N_OBSERVED + N_FUTURE, freq="D")
    for s in range(N_SERIES):
        promo = (rng.random(days.size) < 0.2).astype(int)
        y = 100.0 + 10.0 * s + np.cumsum(rng.normal(0.0, 1.0, days.size)) + LIFT * promo
        for t, day in enumerate(days):
            rows.append({"unique_id": f"s{s}", "ds": day.date().isoformat(),
                         "y": round(float(y[t]), 3) if t < N_OBSERVED else None, "promo": int(promo[t])})
    return pd.DataFrame(rows)


def main() -> int:
    df = frame()
    df[df["y"].notna()].to_csv(ROOT / "data" / "promo_demo.csv", index=False)
    df.to_csv(ROOT / "data" / "promo_demo_future.csv", index=False)
    print("wrote data/promo_demo.csv and data/promo_demo_future.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
