"""Commands: what a caller asks the ledger to do, with time and ids already fixed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.events import EncryptedProfile
from schemas.inbound import PurchaseItem


@dataclass(frozen=True, kw_only=True)
class Command:
    """`keyed`: sent under a caller's Idempotency-Key. The correlation id then names the key (all
    attempts under it share it) and the command id names the key and the request's body, so that
    the key is remembered with the command's outcome, from its events alone."""

    command_id: str
    correlation_id: str
    member_id: str
    occurred_at: datetime
    keyed: bool = False


@dataclass(frozen=True, kw_only=True)
class RecordPurchase(Command):
    """`occurred_at` is the shop's date of the purchase; `received_at` is when its record reached the
    ledger's log, the clock a purchase's own date is judged against."""

    received_at: datetime
    purchase_id: str
    amount_minor: int
    currency: str
    store_id: str | None = None
    channel: str | None = None
    items: tuple[PurchaseItem, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RefundPurchase(Command):
    """`received_at`: when its record reached the ledger's log; a refund's own date is judged against it."""

    received_at: datetime
    refund_id: str
    purchase_id: str
    amount_minor: int
    # The items returned; none means a share of the whole purchase.
    items: tuple[PurchaseItem, ...] = ()


@dataclass(frozen=True, kw_only=True)
class RedeemPoints(Command):
    redemption_id: str
    points: int
    reward: str | None = None


@dataclass(frozen=True, kw_only=True)
class CancelRedemption(Command):
    redemption_id: str


@dataclass(frozen=True, kw_only=True)
class AdjustPoints(Command):
    adjustment_id: str
    points: int
    reason: str
    actor: str


@dataclass(frozen=True, kw_only=True)
class SetTier(Command):
    tier: str
    reason: str
    actor: str


@dataclass(frozen=True, kw_only=True)
class AdvanceClock(Command):
    """A clock tick reaching one member: expire lots, mature pending points, evaluate the tier."""


@dataclass(frozen=True, kw_only=True)
class RecordRules(Command):
    """Record the rules in force in the program's own stream, when they differ from the last."""


@dataclass(frozen=True, kw_only=True)
class EnrolMember(Command):
    profile: EncryptedProfile


@dataclass(frozen=True, kw_only=True)
class UpdateProfile(Command):
    profile: EncryptedProfile


@dataclass(frozen=True, kw_only=True)
class ErasePersonalData(Command):
    actor: str
