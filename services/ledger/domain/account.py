"""A member's account as the processor holds it, and how each event changes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, TypeVar, assert_never, cast

from schemas.canonical import GENESIS_HASH
from schemas.effects import NO_EFFECT, Effect, effect
from schemas.events import (
    AnyEventData,
    CommandRejected,
    Event,
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
from schemas.inbound import PurchaseItem
from schemas.money import to_minor
from services.ledger.domain import lots as lot_ops
from services.ledger.domain import memory
from services.ledger.domain.lots import Lot, PendingLot
from services.ledger.domain.memory import Outcome


@dataclass(frozen=True)
class Purchase:
    command_id: str
    amount_minor: int
    occurred_at: datetime
    refunded_minor: int = 0
    points_earned: int = 0
    points_reversed: int = 0
    # The lot its points opened, and how many of them left that lot by expiry: a refund never
    # reverses those.
    lot_id: str = ""
    points_expired: int = 0
    # What a refund naming items needs to reverse exactly what they earned: the items' spend per
    # category, and the category bonuses the purchase earned at.
    category_spend: tuple[tuple[str, int], ...] = ()
    bonuses: tuple[tuple[str, str], ...] = ()
    # Its refunds: their ids are remembered as long as the purchase is (it can be refunded).
    refund_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Redemption:
    command_id: str
    points: int
    from_lots: tuple[LotPoints, ...]
    cancelled: bool = False


@dataclass(frozen=True)
class Account:
    member_id: str
    sequence: int = 0
    last_hash: str = GENESIS_HASH
    enrolled: bool = False
    has_profile: bool = False
    erased: bool = False
    tier: str = ""
    next_evaluation_at: datetime | None = None
    lots: tuple[Lot, ...] = ()
    pending: tuple[PendingLot, ...] = ()
    # Points reversed after they were spent: the balance is below zero by this much.
    debt: int = 0
    lifetime_earned: int = 0
    redeemed: int = 0
    expired: int = 0
    reversed: int = 0
    adjusted: int = 0
    purchases: dict[str, Purchase] = field(default_factory=dict)
    # Business ids of refunds and adjustments -> the command that did them. Each is remembered
    # while a retry of it could still do harm (domain.memory).
    refunds: dict[str, str] = field(default_factory=dict)
    redemptions: dict[str, Redemption] = field(default_factory=dict)
    adjustments: dict[str, str] = field(default_factory=dict)
    # By command id, the oldest first.
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    rules_version: int = 0
    rules_fingerprint: str = ""
    # Purchases before this instant have been forgotten: they can no longer be refunded or
    # recognised as duplicates, so a purchase that old is refused.
    forgotten_before: datetime | None = None

    @classmethod
    def new(cls, member_id: str) -> Account:
        return cls(member_id=member_id)

    @property
    def available(self) -> int:
        return sum(lot.points for lot in self.lots) - self.debt

    @property
    def pending_points(self) -> int:
        return sum(lot.points for lot in self.pending)

    def next_due(self) -> datetime | None:
        """The next instant a clock tick has something to do for this member."""
        moments = [lot.expires_at for lot in self.lots[:1]]
        moments += [lot.matures_at for lot in self.pending]
        if self.next_evaluation_at is not None:
            moments.append(self.next_evaluation_at)
        return min(moments, default=None)


_OCCURRED_AT = attrgetter("occurred_at")


def evolve(account: Account, event: Event) -> Account:
    """The account after one of its events. Never fails: events are facts."""
    outcomes, forgotten = memory.remember(account.outcomes, event)
    account = _set(account, sequence=event.sequence, last_hash=event.hash, outcomes=outcomes)
    return _forget(_apply(account, event), forgotten, event.recorded_at)


def _forget(account: Account, forgotten: set[str], now: datetime) -> Account:
    """Forget the business ids a retry can no longer misuse (domain.memory); refund ids go with
    their purchase (PurchaseRecorded)."""
    adjustments = memory.without_commands(account.adjustments, forgotten)
    redemptions = memory.still_cancellable(account.redemptions, account.outcomes, now)
    if adjustments is account.adjustments and redemptions is account.redemptions:
        return account
    return _set(account, adjustments=adjustments, redemptions=redemptions)


def _apply(account: Account, event: Event) -> Account:
    """The points and lots (as `schemas.effects` says), then what the account remembers of the event."""
    change = effect(event.data)
    if change is not NO_EFFECT:
        account = _move(account, change)
    data = cast(AnyEventData, event.data)  # every EventData is one of these (tests/unit/test_effects.py)
    match data:
        case MemberEnrolled():
            return _set(account, enrolled=True, tier=data.tier, has_profile=data.profile is not None)
        case ProfileUpdated():
            return _set(account, has_profile=True)
        case PersonalDataErased():
            return _set(account, has_profile=False, erased=True)
        case PurchaseRecorded():
            purchase = Purchase(
                command_id=event.command_id,
                amount_minor=data.amount_minor,
                occurred_at=event.occurred_at,
                category_spend=_category_spend(data.items),
            )
            purchases = {**account.purchases, data.purchase_id: purchase}
            if data.forget_before is None:
                return _set(account, purchases=purchases)
            # Most purchases forget nothing: a scan in C for the oldest comes before any filter.
            if min(map(_OCCURRED_AT, purchases.values())) >= data.forget_before:
                return _set(account, purchases=purchases, forgotten_before=data.forget_before)
            kept = {key: p for key, p in purchases.items() if p.occurred_at >= data.forget_before}
            gone = {r for key, p in purchases.items() if key not in kept for r in p.refund_ids}
            refunds = {r: c for r, c in account.refunds.items() if r not in gone} if gone else account.refunds
            return _set(account, purchases=kept, refunds=refunds, forgotten_before=data.forget_before)
        case PointsEarned():
            account = _update_purchase(account, data.purchase_id, earned=data.points)
            purchase = _set(
                account.purchases[data.purchase_id],
                lot_id=data.lot_id,
                bonuses=tuple(data.rule.category_bonuses.items()),
            )
            return _set(account, purchases={**account.purchases, data.purchase_id: purchase})
        case PurchaseRefunded():
            purchase = account.purchases[data.purchase_id]
            refunded = _set(
                purchase,
                refunded_minor=data.refunded_total_minor,
                refund_ids=(*purchase.refund_ids, data.refund_id),
            )
            purchases = {**account.purchases, data.purchase_id: refunded}
            return _set(
                account, purchases=purchases, refunds={**account.refunds, data.refund_id: event.command_id}
            )
        case PointsReversed():
            return _update_purchase(account, data.purchase_id, reversed_=data.points)
        case PointsRedeemed():
            redemption = Redemption(command_id=event.command_id, points=data.points, from_lots=data.from_lots)
            return _set(account, redemptions={**account.redemptions, data.redemption_id: redemption})
        case RedemptionCancelled():
            cancelled = _set(account.redemptions[data.redemption_id], cancelled=True)
            return _set(account, redemptions={**account.redemptions, data.redemption_id: cancelled})
        case PointsAdjusted():
            return _set(account, adjustments={**account.adjustments, data.adjustment_id: event.command_id})
        case PointsExpired():
            return _expire_purchases(account, data.lots)
        case TierChanged():
            return _set(account, tier=data.to_tier, next_evaluation_at=data.next_evaluation_at)
        case TierRetained():
            return _set(account, next_evaluation_at=data.next_evaluation_at)
        case ProgramRulesChanged():
            return _set(account, rules_version=data.version, rules_fingerprint=data.fingerprint)
        case PointsMatured() | PointsRestored() | CommandRejected():
            return account
        case _:
            assert_never(data)


def _move(account: Account, change: Effect) -> Account:
    """The effect's figures added, its points moved between the account's lots."""
    points = change.points
    lots, pending = account.lots, account.pending
    if change.taken:
        lots = lot_ops.remove(lots, change.taken)
    if change.taken_pending:
        pending = lot_ops.remove(pending, change.taken_pending)
    if change.returned:
        lots = lot_ops.add(lots, change.returned)
    opened, matured = change.opened, change.matured
    if opened is not None and opened.matures_at is not None:
        opening = PendingLot(opened.lot_id, opened.points, opened.expires_at, opened.matures_at)
        pending = lot_ops.by_maturity((*pending, opening))
    elif opened is not None:
        lots = lot_ops.opened(lots, Lot(opened.lot_id, opened.points, opened.expires_at))
    if matured is not None:
        ripe, pending = lot_ops.mature(pending, matured.lot_id)
        credit = matured.points - matured.debt_repaid
        lots = lot_ops.add(lots, [LotPoints(lot_id=ripe.lot_id, points=credit, expires_at=ripe.expires_at)])
    return _set(
        account,
        lots=lots,
        pending=pending,
        debt=account.debt + points.debt,
        lifetime_earned=account.lifetime_earned + points.lifetime_earned,
        redeemed=account.redeemed + points.redeemed,
        expired=account.expired + points.expired,
        reversed=account.reversed + points.reversed,
        adjusted=account.adjusted + points.adjusted,
    )


T = TypeVar("T", Account, Purchase, Redemption)


def _set(record: T, **changes: Any) -> T:
    """`dataclasses.replace` without re-running `__init__`: evolve is on the processor's hot path."""
    changed = object.__new__(type(record))
    changed.__dict__.update(record.__dict__, **changes)
    return changed


def _category_spend(items: tuple[PurchaseItem, ...]) -> tuple[tuple[str, int], ...]:
    spend: dict[str, int] = {}
    for item in items:
        spend[item.category] = spend.get(item.category, 0) + to_minor(item.amount)
    return tuple(spend.items())


def _expire_purchases(account: Account, lapsed: tuple[LotPoints, ...]) -> Account:
    """Count the expired points against the purchases whose lots they were."""
    by_lot = {p.lot_id: purchase_id for purchase_id, p in account.purchases.items() if p.lot_id}
    found = [(by_lot[item.lot_id], item.points) for item in lapsed if item.lot_id in by_lot]
    if not found:
        return account
    purchases = dict(account.purchases)
    for purchase_id, points in found:
        purchase = purchases[purchase_id]
        purchases[purchase_id] = _set(purchase, points_expired=purchase.points_expired + points)
    return _set(account, purchases=purchases)


def _update_purchase(account: Account, purchase_id: str, earned: int = 0, reversed_: int = 0) -> Account:
    purchase = account.purchases[purchase_id]
    updated = _set(
        purchase,
        points_earned=purchase.points_earned + earned,
        points_reversed=purchase.points_reversed + reversed_,
    )
    return _set(account, purchases={**account.purchases, purchase_id: updated})
