"""Program metrics per period, from the per-day totals: pure arithmetic, no database."""

from __future__ import annotations

import itertools
from dataclasses import fields
from datetime import date, timedelta
from typing import Literal

from services.projector.fold import DayChange
from services.projector.views import PeriodMetrics

Period = Literal["day", "month"]


def period_starts(period: Period, first: date, last: date) -> list[date]:
    """Starts of the periods from the one holding `first` to the one holding `last`, and the end."""
    if period == "day":
        return [first + timedelta(days=n) for n in range((last - first).days + 2)]
    starts = [first.replace(day=1)]
    while starts[-1] <= last:
        current = starts[-1]
        starts.append(date(current.year + current.month // 12, current.month % 12 + 1, 1))
    return starts


def _sum(days: dict[date, DayChange], start: date | None, end: date) -> DayChange:
    total = DayChange()
    for day, change in days.items():
        if (start is None or day >= start) and day < end:
            for f in fields(DayChange):
                setattr(total, f.name, getattr(total, f.name) + getattr(change, f.name))
    return total


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def periods(
    starts: list[date],
    days: dict[date, DayChange],
    tier_days: dict[tuple[date, str], int],
    active: dict[date, int],
    value_minor_per_point: int,
) -> list[PeriodMetrics]:
    """One entry per consecutive pair of `starts`; `active` counts purchasing members per period start."""
    result = []
    for start, end in itertools.pairwise(starts):
        before, during, upto = _sum(days, None, start), _sum(days, start, end), _sum(days, None, end)
        active_members = active.get(start, 0)
        distribution: dict[str, int] = {}
        for (day, tier), members in tier_days.items():
            if day < end:
                distribution[tier] = distribution.get(tier, 0) + members
        net_spend = during.spend_minor - during.refunded_minor
        result.append(
            PeriodMetrics(
                start=start,
                end=end,
                members_at_start=before.enrolments,
                members_at_end=upto.enrolments,
                new_members=during.enrolments,
                growth_rate=_ratio(upto.enrolments - before.enrolments, before.enrolments),
                active_members=active_members,
                activity_rate=_ratio(active_members, upto.enrolments),
                purchases=during.purchases,
                spend_minor=during.spend_minor,
                refunded_minor=during.refunded_minor,
                spend_per_active_member_minor=net_spend // active_members if active_members else None,
                points_earned=during.points_earned,
                points_redeemed=during.points_redeemed,
                points_expired=during.points_expired,
                points_reversed=during.points_reversed,
                breakage_rate=_ratio(during.points_expired, during.points_earned),
                lifetime_breakage_rate=_ratio(upto.points_expired, upto.points_earned),
                liability_points=upto.points_outstanding,
                liability_minor=upto.points_outstanding * value_minor_per_point,
                promotions=during.promotions,
                demotions=during.demotions,
                tier_distribution={tier: n for tier, n in sorted(distribution.items()) if n},
            )
        )
    return result
