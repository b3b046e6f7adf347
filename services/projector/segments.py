"""Recency segments, counted in days of the program's calendar: one definition for a member's
own segment and for the SQL that lists a segment's members."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import LiteralString, NamedTuple

from schemas.rules import ProgramRules
from services.projector.views import Segment

# Over `m` (members) and the parameters of `RecencyBounds`. Recency counts from the last purchase
# not refunded in full; a member with none never bought, and is `new` however long ago they enrolled.
RECENCY: dict[str, LiteralString] = {
    "active": "m.last_kept_purchase_at >= %(active_since)s",
    "silent": "m.last_kept_purchase_at < %(active_since)s AND m.last_kept_purchase_at >= %(silent_since)s",
    "churned": "m.last_kept_purchase_at < %(silent_since)s",
    "new": "m.last_kept_purchase_at IS NULL",
}


class RecencyBounds(NamedTuple):
    """Active from `active_since` on, silent from `silent_since` on, churned before."""

    active_since: datetime
    silent_since: datetime


def recency_bounds(now: datetime, rules: ProgramRules) -> RecencyBounds:
    """Starts of the calendar days `active_days` and `silent_days` before today, in the program's
    time zone: a purchase at 23:00 on the 1st of a month is a day older than one at 01:00 on the 2nd."""
    today = now.astimezone(rules.zone).date()

    def since(days: int) -> datetime:
        return datetime.combine(today - timedelta(days=days), time(), tzinfo=rules.zone)

    return RecencyBounds(since(rules.active_days), since(rules.silent_days))


def recency(last_kept_purchase: datetime | None, bounds: RecencyBounds) -> Segment:
    if last_kept_purchase is None:
        return "new"
    if last_kept_purchase >= bounds.active_since:
        return "active"
    return "silent" if last_kept_purchase >= bounds.silent_since else "churned"
