"""What each event does to a member's points and lots: the one place that says it.

The ledger's `evolve`, the projector's fold, `loyalty history` and `loyalty verify` all read an
event's meaning for the balance from `effect`. It lives with the contract because it is part of
what a published event means, and the write side and the read side may share only `schemas/`.

An effect has two sides. The figures (earned, adjusted, redeemed, expired, reversed) are what the
event says happened; `available` and `pending` are what its lot movements do to the lots, less
the change in debt. The ledger's events keep lifetime_earned + adjusted - redeemed - expired -
reversed equal to available + pending after every command, which is what `verify` checks.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, assert_never, cast

from schemas.events import (
    AnyEventData,
    CommandRejected,
    EventData,
    LotPoints,
    MemberEnrolled,
    PersonalDataErased,
    PointsAdjusted,
    PointsEarned,
    PointsExpired,
    PointsMatured,
    PointsRedeemed,
    PointsRestored,
    PointsReversed,
    ProfileUpdated,
    ProgramRulesChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    RedemptionCancelled,
    TierChanged,
    TierRetained,
)


class Points(NamedTuple):
    """Changes in a member's point figures (a tuple: one is built for every event).

    `debt` is the part of the reversals that found the points already spent; `available` counts
    it already (it is below zero by the debt), and later credits repay it first.
    """

    available: int = 0
    pending: int = 0
    lifetime_earned: int = 0
    redeemed: int = 0
    expired: int = 0
    reversed: int = 0
    adjusted: int = 0
    debt: int = 0

    @property
    def outstanding(self) -> int:
        return self.available + self.pending

    @property
    def net(self) -> int:
        """What the figures say the member holds: earned + adjusted - redeemed - expired - reversed."""
        return self.lifetime_earned + self.adjusted - self.redeemed - self.expired - self.reversed

    @property
    def conserved(self) -> bool:
        """Whether what the events say happened accounts for what the lots hold, less the debt."""
        return self.net == self.outstanding

    def plus(self, other: Points) -> Points:
        return Points(*(mine + theirs for mine, theirs in zip(self, other, strict=True)))


class LotOpened(NamedTuple):
    """Points that open a lot: pending until `matures_at` when set; net of the debt they repaid."""

    lot_id: str
    points: int
    expires_at: datetime
    matures_at: datetime | None = None


class LotMatured(NamedTuple):
    """A pending lot's points become available; the first `debt_repaid` of them repay the debt."""

    lot_id: str
    points: int
    debt_repaid: int


class Effect(NamedTuple):
    points: Points
    opened: LotOpened | None = None
    matured: LotMatured | None = None
    # Points taken out of available lots, and out of pending ones.
    taken: tuple[LotPoints, ...] = ()
    taken_pending: tuple[LotPoints, ...] = ()
    # Points given back to the lots they were taken from (re-opening them if emptied).
    returned: tuple[LotPoints, ...] = ()


NO_EFFECT = Effect(Points())


def effect(data: EventData) -> Effect:
    """What the event does to the member's points and lots.

    Every event type is named here: one this module does not know fails at once (`assert_never`,
    which mypy checks too), never falls through as "no change".
    """
    known = cast(AnyEventData, data)  # every EventData is one of these: tests/unit/test_effects.py
    match known:
        case PointsEarned() if known.matures_at is not None:
            opened = LotOpened(known.lot_id, known.points, known.expires_at, known.matures_at)
            return _moved(earned=known.points, debt=-known.debt_repaid, opened=opened)
        case PointsEarned():
            opened = LotOpened(known.lot_id, known.points - known.debt_repaid, known.expires_at)
            return _moved(earned=known.points, debt=-known.debt_repaid, opened=opened)
        case PointsMatured():
            matured = LotMatured(known.lot_id, known.points, known.debt_repaid)
            return _moved(debt=-known.debt_repaid, matured=matured)
        case PointsReversed():
            return _moved(
                reversed_=known.points,
                debt=known.debt_added,
                taken=known.from_lots,
                taken_pending=known.from_pending,
            )
        case PointsRedeemed():
            return _moved(redeemed=known.points, taken=known.from_lots)
        case RedemptionCancelled():
            return _moved(redeemed=-known.points)
        case PointsRestored():
            return _moved(debt=-known.debt_repaid, returned=known.to_lots)
        case PointsAdjusted(lot_id=str(lot_id), expires_at=datetime() as expires_at) if known.points > 0:
            opened = LotOpened(lot_id, known.points - known.debt_repaid, expires_at)
            return _moved(adjusted=known.points, debt=-known.debt_repaid, opened=opened)
        case PointsAdjusted():  # points removed by hand: taken from the oldest lots
            return _moved(adjusted=known.points, debt=-known.debt_repaid, taken=known.from_lots)
        case PointsExpired():
            return _moved(expired=known.points, taken=known.lots)
        case (
            MemberEnrolled()
            | ProfileUpdated()
            | PersonalDataErased()
            | PurchaseRecorded()
            | PurchaseRefunded()
            | TierChanged()
            | TierRetained()
            | ProgramRulesChanged()
            | CommandRejected()
        ):
            return NO_EFFECT
        case _:
            assert_never(known)


def _moved(
    *,
    earned: int = 0,
    adjusted: int = 0,
    redeemed: int = 0,
    expired: int = 0,
    reversed_: int = 0,
    debt: int = 0,
    opened: LotOpened | None = None,
    matured: LotMatured | None = None,
    taken: tuple[LotPoints, ...] = (),
    taken_pending: tuple[LotPoints, ...] = (),
    returned: tuple[LotPoints, ...] = (),
) -> Effect:
    """The effect, with available and pending counted from the lot movements, never from the figures."""
    lots = sum(item.points for item in returned) - sum(item.points for item in taken)
    pending = -sum(item.points for item in taken_pending)
    if opened is not None and opened.matures_at is None:
        lots += opened.points
    elif opened is not None:
        pending += opened.points
    if matured is not None:
        lots += matured.points - matured.debt_repaid
        pending -= matured.points
    points = Points(lots - debt, pending, earned, redeemed, expired, reversed_, adjusted, debt)
    return Effect(points, opened, matured, taken, taken_pending, returned)
