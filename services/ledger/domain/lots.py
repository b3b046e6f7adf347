"""Point lots: every earning is a lot with its own expiry; spending takes the oldest first."""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from operator import attrgetter
from typing import TypeVar

from schemas.events import LotPoints


@dataclass(frozen=True)
class Lot:
    lot_id: str
    points: int
    expires_at: datetime


@dataclass(frozen=True)
class PendingLot:
    lot_id: str
    points: int
    expires_at: datetime
    matures_at: datetime


AnyLot = TypeVar("AnyLot", Lot, PendingLot)


def oldest_first(lots: Iterable[Lot]) -> tuple[Lot, ...]:
    return tuple(sorted(lots, key=_oldest_first_key))


def by_maturity(lots: Iterable[PendingLot]) -> tuple[PendingLot, ...]:
    """Pending lots in the order they mature: one order however the account was put together."""
    return tuple(sorted(lots, key=lambda lot: (lot.matures_at, lot.lot_id)))


def take_oldest(lots: tuple[Lot, ...], points: int) -> tuple[LotPoints, ...]:
    """Which lots `points` come out of, soonest to expire first; the caller has checked there is enough."""
    takes = []
    for lot in lots:
        if points <= 0:
            break
        taken = min(lot.points, points)
        takes.append(LotPoints(lot_id=lot.lot_id, points=taken, expires_at=lot.expires_at))
        points -= taken
    return tuple(takes)


def lapse(lots: tuple[Lot, ...], now: datetime) -> tuple[tuple[Lot, ...], tuple[LotPoints, ...]]:
    """The lots still alive at `now`, and the points of those past their expiry.

    A lot at or past its expiry is spent by no decision, whether or not a tick recorded it yet.
    """
    live = tuple(lot for lot in lots if lot.expires_at > now)
    lapsed = tuple(
        LotPoints(lot_id=lot.lot_id, points=lot.points, expires_at=lot.expires_at)
        for lot in lots
        if lot.expires_at <= now
    )
    return live, lapsed


def remove(lots: tuple[AnyLot, ...], takes: Iterable[LotPoints]) -> tuple[AnyLot, ...]:
    """Take points out of lots, available or pending, dropping those left empty."""
    taken: dict[str, int] = {}
    for take in takes:
        taken[take.lot_id] = taken.get(take.lot_id, 0) + take.points
    kept = (
        replace(lot, points=lot.points - taken[lot.lot_id]) if lot.lot_id in taken else lot for lot in lots
    )
    return tuple(lot for lot in kept if lot.points > 0)


def opened(lots: tuple[Lot, ...], lot: Lot) -> tuple[Lot, ...]:
    """`add(lots, [lot])` for lots in `oldest_first` order, as every account keeps them: a new lot
    is inserted in its place (one insertion, where every earning opens a lot), one already there
    gets the points, and a lot of no points is not opened."""
    if lot.lot_id in map(_LOT_ID, lots):  # a scan in C: an account has a lot per earning it keeps
        return add(lots, [LotPoints(lot_id=lot.lot_id, points=lot.points, expires_at=lot.expires_at)])
    if lot.points <= 0:
        return lots
    ordered = list(lots)
    insort(ordered, lot, key=_oldest_first_key)
    return tuple(ordered)


_LOT_ID = attrgetter("lot_id")


def _oldest_first_key(lot: Lot) -> tuple[datetime, str]:
    return lot.expires_at, lot.lot_id


def add(lots: tuple[Lot, ...], returned: Iterable[LotPoints]) -> tuple[Lot, ...]:
    """Give points back to their lots, re-opening a lot that had been emptied."""
    by_id = {lot.lot_id: lot for lot in lots}
    for item in returned:
        if item.points <= 0:
            continue
        known = by_id.get(item.lot_id)
        by_id[item.lot_id] = (
            replace(known, points=known.points + item.points)
            if known
            else Lot(lot_id=item.lot_id, points=item.points, expires_at=item.expires_at)
        )
    return oldest_first(by_id.values())


def mature(pending: tuple[PendingLot, ...], lot_id: str) -> tuple[PendingLot, tuple[PendingLot, ...]]:
    """The pending lot that matures, and the others. One at a time: logs written before every
    earning had its own lot can hold two of the same name."""
    ripe = next(lot for lot in pending if lot.lot_id == lot_id)
    still = list(pending)
    still.remove(ripe)
    return ripe, tuple(still)


def split_front(
    items: Iterable[LotPoints], points: int
) -> tuple[tuple[LotPoints, ...], tuple[LotPoints, ...]]:
    """The first `points` of `items` (in order), and what is left of them."""
    front, rest = [], []
    for item in items:
        taken = min(item.points, max(points, 0))
        points -= taken
        if taken:
            front.append(item.model_copy(update={"points": taken}))
        if item.points - taken:
            rest.append(item.model_copy(update={"points": item.points - taken}))
    return tuple(front), tuple(rest)
