"""Calendar features (calendar = true): two more input channels, sin and cos of 2*pi*phase/period, where the input step
at position i carries the phase of position i + 1 (target-aligned: the step whose value it is followed by; the last
step of a window carries the phase of its first target t + 1). phase = month - 1 (period 12) for monthly dates,
quarter - 1 (4) for quarterly, day of week for daily (7) and business-daily (5) dates, day of year - 1 (365.25) for
weekly; without such dates the row index modulo the season. They are deterministic functions of time (nothing is
fitted, so nothing leaks) and future positions are known: recursive forecasts continue the dates at the series'
frequency.

Every function takes a data.Series (its dates, freq, year_dates and y) and is a deterministic function of time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import UserError

CAL_KINDS = {"monthly": ("month", 12.0), "quarterly": ("quarter", 4.0), "daily": ("day-of-week", 7.0),
             "business-daily": ("day-of-week", 5.0), "weekly": ("day-of-year", 365.25)}


def calendar_kind(series, season: int) -> tuple[str, float]:
    """(kind, period) of the calendar features of a series: the month (12) for monthly dates, the quarter (4) for
    quarterly, the day of the week for daily (7) and business-daily (5) dates, the day of the year (365.25) for
    weekly; otherwise the row index modulo the season ("index", season), which needs a season > 1."""
    if series.dates is not None and series.freq in CAL_KINDS:
        return CAL_KINDS[series.freq]
    if season > 1:
        return "index", float(season)
    raise UserError(f"--calendar needs a seasonal period: the series has no usable calendar ({series.freq}) and "
                    f"season {season}; pass --season N (the period in rows) or drop --calendar")


def future_dates(series, k: int) -> list:
    """The k timestamps after the end of a dated series, continuing its frequency."""
    last = series.dates[-1]
    if series.year_dates or series.freq == "yearly":
        return [last + pd.DateOffset(years=i) for i in range(1, k + 1)]
    if series.freq == "monthly":
        return [last + pd.DateOffset(months=i) for i in range(1, k + 1)]
    if series.freq == "quarterly":
        return [last + pd.DateOffset(months=3 * i) for i in range(1, k + 1)]
    if series.freq == "business-daily":
        return [last + pd.offsets.BDay(i) for i in range(1, k + 1)]
    step = pd.Timedelta(np.median(np.diff(series.dates.as_unit("ns").asi8)), unit="ns")
    return [last + i * step for i in range(1, k + 1)]


def calendar_phase(kind: str, series, total: int) -> np.ndarray:
    """(total,) float phase in [0, period) of positions 0 .. total-1 of the series; positions past its end (the
    future, for recursive forecasts) continue its calendar (dates: its frequency; no dates: the row index)."""
    n = len(series.y)
    if kind == "index":
        return np.arange(total, dtype=np.float64)  # reduced modulo the period in Pipeline.features
    if series.dates is None:
        raise UserError(f"this model uses calendar features ({kind}) but the data have no dates; pass data with "
                        f"the date column it was trained with (--date COL)")
    d = pd.DatetimeIndex(series.dates)
    if total > n:
        d = d.append(pd.DatetimeIndex(future_dates(series, total - n)))
    d = d[:total]
    if kind == "month":
        return (d.month - 1).to_numpy(dtype=np.float64)
    if kind == "quarter":
        return (d.quarter - 1).to_numpy(dtype=np.float64)
    if kind == "day-of-week":
        return d.dayofweek.to_numpy(dtype=np.float64)
    if kind == "day-of-year":
        return (d.dayofyear - 1).to_numpy(dtype=np.float64)
    raise UserError(f"unknown calendar feature kind {kind!r} in the saved pipeline; retrain with 'gru-xp train'")
