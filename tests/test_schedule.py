"""Alpha schedules: strictly increasing on (0, 1], exactly 1 at the end, 0 before the start."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kasmina.kernels import AlphaSchedule, alpha_at

SCHEDULES = list(AlphaSchedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("total", [1, 2, 3, 5, 7, 20, 100, 1000, 100_000])
def test_strictly_increasing_in_unit_interval_with_exact_endpoints(schedule: AlphaSchedule, total: int) -> None:
    values = [alpha_at(k, total, schedule) for k in range(1, total + 1)]
    assert all(0.0 < v <= 1.0 for v in values)
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] == 1.0
    assert alpha_at(0, total, schedule) == 0.0
    assert alpha_at(-3, total, schedule) == 0.0
    assert alpha_at(total + 1, total, schedule) == 1.0
    assert alpha_at(10 * total, total, schedule) == 1.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_total_one_jumps_straight_to_one(schedule: AlphaSchedule) -> None:
    assert alpha_at(0, 1, schedule) == 0.0
    assert alpha_at(1, 1, schedule) == 1.0


def test_default_is_sigmoid_and_it_starts_near_zero() -> None:
    assert alpha_at(3, 20) == alpha_at(3, 20, AlphaSchedule.SIGMOID)
    assert alpha_at(1, 20) < 0.02          # starts near 0 ...
    assert alpha_at(19, 20) > 0.98         # ... and is near 1 just before the end
    assert alpha_at(10, 20) == pytest.approx(0.5, abs=1e-15)
    for k in range(1, 20):                 # symmetric about the midpoint
        assert alpha_at(k, 20) + alpha_at(20 - k, 20) == pytest.approx(1.0, abs=1e-12)


def test_sigmoid_is_the_rescaled_logistic_curve() -> None:
    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    s = 10.0
    for k, total in [(1, 20), (7, 20), (13, 50), (99, 100)]:
        t = k / total
        expected = (sig(s * (t - 0.5)) - sig(-s / 2)) / (sig(s / 2) - sig(-s / 2))
        assert alpha_at(k, total) == pytest.approx(expected, rel=1e-12)
    assert alpha_at(5, 20, steepness=4.0) != alpha_at(5, 20)


def test_linear_and_cosine_formulas() -> None:
    assert alpha_at(3, 12, AlphaSchedule.LINEAR) == 0.25
    assert alpha_at(6, 12, "cosine") == pytest.approx(0.5, abs=1e-15)
    assert alpha_at(3, 12, "COSINE") == pytest.approx((1 - math.cos(math.pi * 0.25)) / 2, rel=1e-12)
    assert alpha_at(1, 10**9, "cosine") > 0.0   # no 1 - cos cancellation to 0


def test_parse_and_argument_errors() -> None:
    assert AlphaSchedule.parse(" linear ") is AlphaSchedule.LINEAR
    assert AlphaSchedule.parse(AlphaSchedule.COSINE) is AlphaSchedule.COSINE
    with pytest.raises(ValueError, match="allowed: SIGMOID, LINEAR, COSINE"):
        AlphaSchedule.parse("exp")
    with pytest.raises(ValueError, match="total"):
        alpha_at(1, 0)
    with pytest.raises(TypeError):
        alpha_at(1.5, 10)  # type: ignore[arg-type]
    for bad in (0.0, -1.0, float("nan"), 41.0):
        with pytest.raises(ValueError, match="steepness"):
            alpha_at(1, 10, steepness=bad)


def test_returns_plain_floats() -> None:
    for schedule in SCHEDULES:
        assert type(alpha_at(2, 5, schedule)) is float
        assert type(alpha_at(5, 5, schedule)) is float


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 10**6), frac=st.floats(0, 1), steepness=st.floats(0.5, 40.0),
       schedule=st.sampled_from(SCHEDULES))
def test_any_two_consecutive_steps_increase(total: int, frac: float, steepness: float,
                                            schedule: AlphaSchedule) -> None:
    k = min(total - 1, int(frac * total))
    lo = alpha_at(k, total, schedule, steepness=steepness)
    hi = alpha_at(k + 1, total, schedule, steepness=steepness)
    assert 0.0 <= lo < hi <= 1.0
