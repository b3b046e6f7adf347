"""The program's calendar: days, months and recency in its time zone, and what a point was worth then."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from schemas.rules import ProgramRules
from services.projector.fold import quarter_hour
from services.projector.program_metrics import value_in_force
from services.projector.segments import recency, recency_bounds

# 04:00 on 1 April in Beijing, still 31 March in UTC.
NOW = datetime(2025, 3, 31, 20, 0, tzinfo=UTC)


def test_program_totals_are_kept_per_utc_quarter_hour() -> None:
    beijing = timezone(timedelta(hours=8))
    assert quarter_hour(datetime(2025, 3, 1, 3, 14, 59, 999, tzinfo=beijing)) == datetime(
        2025, 2, 28, 19, 0, tzinfo=UTC
    )
    assert quarter_hour(datetime(2025, 3, 1, 3, 15, tzinfo=beijing)) == datetime(
        2025, 2, 28, 19, 15, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("time_zone", "expected"),
    [("Asia/Shanghai", "silent"), ("UTC", "active")],
)
def test_recency_counts_calendar_days_of_the_program(time_zone: str, expected: str) -> None:
    """23:00 on 1 March in Beijing is 31 days before 1 April there; in UTC it is 1 March, 30 days back."""
    last_purchase = datetime(2025, 3, 1, 15, 0, tzinfo=UTC)
    assert recency(last_purchase, recency_bounds(NOW, ProgramRules(time_zone=time_zone))) == expected


def test_the_segments_bounds_are_midnights_of_the_program_calendar() -> None:
    bounds = recency_bounds(NOW, ProgramRules())
    assert bounds.active_since == datetime(2025, 3, 1, 16, 0, tzinfo=UTC)  # 2 March, 00:00 in Beijing
    assert bounds.silent_since == datetime(2024, 10, 2, 16, 0, tzinfo=UTC)


def test_a_period_is_priced_at_the_value_of_a_point_in_force_at_its_end() -> None:
    recorded = [
        (datetime(2025, 1, 1, tzinfo=UTC), ProgramRules()),
        (datetime(2025, 2, 15, tzinfo=UTC), ProgramRules(version=2, redemption_value_minor_per_point=20)),
    ]
    values = [
        value_in_force(recorded, end, ProgramRules())
        for end in (date(2024, 12, 1), date(2025, 2, 1), date(2025, 3, 1))
    ]
    assert values == [10, 10, 20]
    assert value_in_force([], date(2025, 3, 1), ProgramRules(redemption_value_minor_per_point=5)) == 5


def test_a_member_who_never_kept_a_purchase_is_new_however_long_ago_they_enrolled() -> None:
    assert recency(None, recency_bounds(NOW, ProgramRules())) == "new"
