"""Metrics against hand-computed values, and the table / JSON helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gru_xp import metrics


def test_by_hand():
    actual = np.array([1.0, 2.0, 4.0, 8.0])
    pred = np.array([2.0, 2.0, 2.0, 4.0])  # errors 1, 0, -2, -4
    assert metrics.rmse(actual, pred) == pytest.approx(math.sqrt((1 + 0 + 4 + 16) / 4))
    assert metrics.mae(actual, pred) == pytest.approx((1 + 0 + 2 + 4) / 4)
    assert metrics.mape(actual, pred) == pytest.approx(100 * (1 / 1 + 0 + 2 / 4 + 4 / 8) / 4)
    assert metrics.mase(actual, pred, 0.5) == pytest.approx(7 / 4 / 0.5)


def test_two_dimensional_horizon_uses_every_output():
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[1.0, 3.0], [3.0, 2.0]])  # errors 0, 1, 0, -2
    assert metrics.rmse(actual, pred) == pytest.approx(math.sqrt(5 / 4))
    assert metrics.mae(actual, pred) == pytest.approx(3 / 4)


def test_mase_scale_is_in_sample_seasonal_naive_mae():
    y = np.array([1.0, 3.0, 2.0, 6.0, 4.0])
    assert metrics.mase_scale(y, 1) == pytest.approx((2 + 1 + 4 + 2) / 4)
    assert metrics.mase_scale(y, 2) == pytest.approx((1 + 3 + 2) / 3)
    assert math.isnan(metrics.mase_scale(np.ones(5), 1))  # a constant series cannot scale
    assert math.isnan(metrics.mase([1.0], [2.0], math.nan))


def test_mape_with_zero_actual_is_nan_not_inf():
    assert math.isnan(metrics.mape([0.0, 1.0], [1.0, 1.0]))


def test_evaluate_skill_and_table():
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    m = metrics.evaluate(actual, {"model": actual + 0.5, "naive": actual - 1.0, "seasonal_naive": actual + 2.0}, 1.0)
    assert m["model"]["rmse"] == pytest.approx(0.5) and m["naive"]["rmse"] == pytest.approx(1.0)
    assert metrics.skill(m, "naive") == pytest.approx(0.5)
    assert metrics.skill(m, "seasonal_naive") == pytest.approx(0.25)
    table = metrics.format_table({"test": m})
    assert "seasonal_naive" in table and "RMSE" in table and "0.25" in table


def test_jsonable_replaces_non_finite():
    assert metrics.jsonable({"a": [1.0, math.nan], "b": {"c": math.inf}}) == {"a": [1.0, None], "b": {"c": None}}
