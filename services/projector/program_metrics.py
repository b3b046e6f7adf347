"""Program metrics per period, from the totals per day of the program's calendar: pure arithmetic."""

from __future__ import annotations

import itertools
from dataclasses import fields, replace
from datetime import date, datetime, time, timedelta
from typing import Literal

from schemas.rules import ProgramRules
from services.projector.fold import ProgramTotals
from services.projector.views import PeriodMetrics

Period = Literal["day", "month"]


def period_count(period: Period, first: date, last: date) -> int:
    if period == "day":
        return (last - first).days + 1
    return (last.year - first.year) * 12 + last.month - first.month + 1


def period_starts(period: Period, first: date, last: date) -> list[date]:
    """Starts of the periods from the one holding `first` to the one holding `last`, and the end."""
    if period == "day":
        return [first + timedelta(days=n) for n in range(period_count(period, first, last) + 1)]
    starts = [first.replace(day=1)]
    while starts[-1] <= last:
        current = starts[-1]
        starts.append(date(current.year + current.month // 12, current.month % 12 + 1, 1))
    return starts


class _Running:
    """Totals of the days before a moment, for moments in increasing order: one pass over the days."""

    def __init__(self, days: dict[date, ProgramTotals]) -> None:
        self._days = sorted(days.items())
        self._next = 0
        self.total = ProgramTotals()

    def before(self, moment: date) -> ProgramTotals:
        while self._next < len(self._days) and self._days[self._next][0] < moment:
            change = self._days[self._next][1]
            for f in fields(ProgramTotals):
                setattr(self.total, f.name, getattr(self.total, f.name) + getattr(change, f.name))
            self._next += 1
        return replace(self.total)


def _minus(later: ProgramTotals, earlier: ProgramTotals) -> ProgramTotals:
    return ProgramTotals(
        **{f.name: getattr(later, f.name) - getattr(earlier, f.name) for f in fields(ProgramTotals)}
    )


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def value_in_force(recorded: list[tuple[datetime, ProgramRules]], day: date, rules: ProgramRules) -> int:
    """The redemption value of a point when `day` began in the program's calendar: that of the
    rules recorded last before (`recorded` is oldest first). Before the first recording, the first
    rules were the program's; with none recorded, `rules` (the defaults) are.
    """
    moment = datetime.combine(day, time(), rules.zone)
    value = (recorded[0][1] if recorded else rules).redemption_value_minor_per_point
    for recorded_at, then in recorded:
        if recorded_at >= moment:
            break
        value = then.redemption_value_minor_per_point
    return value


def periods(
    starts: list[date],
    days: dict[date, ProgramTotals],
    tier_days: dict[tuple[date, str], int],
    active: dict[date, int],
    values_minor_per_point: list[int],
) -> list[PeriodMetrics]:
    """One entry per consecutive pair of `starts`; `active` counts purchasing members per period
    start, `values_minor_per_point` the value of a point at each period's end."""
    running = _Running(days)
    tier_moves, moved = sorted(tier_days.items()), 0
    distribution: dict[str, int] = {}
    result = []
    before = running.before(starts[0])
    for (start, end), value_minor_per_point in zip(
        itertools.pairwise(starts), values_minor_per_point, strict=True
    ):
        upto = running.before(end)
        during = _minus(upto, before)
        while moved < len(tier_moves) and tier_moves[moved][0][0] < end:
            (_, tier), members = tier_moves[moved]
            distribution[tier] = distribution.get(tier, 0) + members
            moved += 1
        active_members = active.get(start, 0)
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
                points_adjusted=during.points_adjusted,
                breakage_rate=_ratio(during.points_expired, during.points_earned),
                lifetime_breakage_rate=_ratio(upto.points_expired, upto.points_earned),
                liability_points=upto.points_liability,
                liability_minor=upto.points_liability * value_minor_per_point,
                owed_by_members_points=upto.points_liability - upto.points_outstanding,
                promotions=during.promotions,
                demotions=during.demotions,
                tier_distribution={tier: n for tier, n in sorted(distribution.items()) if n},
            )
        )
        before = upto
    return result
