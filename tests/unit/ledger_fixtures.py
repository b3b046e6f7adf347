"""Commands with fixed ids and times, applied as the processor does: decide, then seal."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from schemas.events import EncryptedProfile, Event, EventData, LotPoints
from schemas.inbound import PurchaseItem
from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import (
    AdjustPoints,
    AdvanceClock,
    CancelRedemption,
    Command,
    EnrolMember,
    ErasePersonalData,
    RecordPurchase,
    RecordRules,
    RedeemPoints,
    RefundPurchase,
    SetTier,
    UpdateProfile,
)
from services.ledger.domain.decide import decide

MEMBER = "m-1"
RULES = ProgramRules()
MICROSECOND = timedelta(microseconds=1)


def at(year: int, month: int, day: int, hour: int = 10) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


T0 = at(2025, 1, 15)


def _ids(command_id: str, occurred_at: datetime, member_id: str = MEMBER) -> dict[str, object]:
    return {
        "command_id": command_id,
        "correlation_id": f"corr:{command_id}",
        "member_id": member_id,
        "occurred_at": occurred_at,
    }


def purchase(
    purchase_id: str,
    amount_minor: int,
    when: datetime = T0,
    items: Iterable[PurchaseItem] = (),
    command_id: str | None = None,
    received: datetime | None = None,
) -> RecordPurchase:
    """A purchase that arrives when it is made, unless `received` says otherwise."""
    return RecordPurchase(
        **_ids(command_id or f"purchase:{purchase_id}", when),
        received_at=received or when,
        purchase_id=purchase_id,
        amount_minor=amount_minor,
        currency="CNY",
        items=tuple(items),
    )


def item(category: str, amount: str, sku: str = "sku-1") -> PurchaseItem:
    return PurchaseItem(sku=sku, category=category, quantity=1, amount=amount)


def refund(
    refund_id: str,
    purchase_id: str,
    amount_minor: int,
    when: datetime = T0,
    command_id: str | None = None,
    items: Iterable[PurchaseItem] = (),
    received: datetime | None = None,
) -> RefundPurchase:
    """A refund that arrives when it is made, unless `received` says otherwise."""
    return RefundPurchase(
        **_ids(command_id or f"refund:{refund_id}", when),
        received_at=received or when,
        refund_id=refund_id,
        purchase_id=purchase_id,
        amount_minor=amount_minor,
        items=tuple(items),
    )


def redeem(
    redemption_id: str, points: int, when: datetime = T0, command_id: str | None = None
) -> RedeemPoints:
    return RedeemPoints(
        **_ids(command_id or f"redeem:{redemption_id}", when),
        redemption_id=redemption_id,
        points=points,
        reward="voucher",
    )


def cancel(redemption_id: str, when: datetime = T0, command_id: str | None = None) -> CancelRedemption:
    return CancelRedemption(
        **_ids(command_id or f"cancel:{redemption_id}", when),
        redemption_id=redemption_id,
    )


def adjust(
    adjustment_id: str,
    points: int,
    when: datetime = T0,
    reason: str = "goodwill",
    actor: str = "key-ops",
    command_id: str | None = None,
) -> AdjustPoints:
    return AdjustPoints(
        **_ids(command_id or f"adjust:{adjustment_id}", when),
        adjustment_id=adjustment_id,
        points=points,
        reason=reason,
        actor=actor,
    )


def set_tier(
    tier: str,
    when: datetime = T0,
    reason: str = "service recovery",
    actor: str = "key-ops",
    command_id: str | None = None,
) -> SetTier:
    return SetTier(
        **_ids(command_id or f"set-tier:{tier}:{when.isoformat()}", when),
        tier=tier,
        reason=reason,
        actor=actor,
    )


def sealed_profile(**fields: str) -> EncryptedProfile:
    """A stand-in for a sealed profile: the domain never looks inside."""
    return EncryptedProfile.model_validate({"key_id": "dk-test", "fields": fields or {"name": "c2VhbGVk"}})


def enrol(when: datetime = T0, command_id: str = "enrol", **fields: str) -> EnrolMember:
    return EnrolMember(**_ids(command_id, when), profile=sealed_profile(**fields))


def update_profile(when: datetime = T0, command_id: str = "profile", **fields: str) -> UpdateProfile:
    return UpdateProfile(**_ids(command_id, when), profile=sealed_profile(**fields))


def erase(when: datetime = T0, command_id: str = "erase", actor: str = "key-ops") -> ErasePersonalData:
    return ErasePersonalData(**_ids(command_id, when), actor=actor)


def tick(when: datetime, command_id: str | None = None) -> AdvanceClock:
    return AdvanceClock(**_ids(command_id or f"tick:{when.isoformat()}", when))


def record_rules(when: datetime = T0, command_id: str = "rules:1") -> RecordRules:
    return RecordRules(**_ids(command_id, when, member_id="program"))


def apply(
    account: Account, command: Command, rules: ProgramRules = RULES
) -> tuple[Account, list[EventData], list[Event]]:
    """Decide and seal one command: the account after it, what was decided, and the sealed events."""
    decided = decide(account, command, rules)
    after, events = seal(account, command, decided, rules.version, command.occurred_at)
    return after, decided, events


def given(*commands: Command, rules: ProgramRules = RULES, member_id: str = MEMBER) -> Account:
    """The account after each command was decided and sealed in turn."""
    account = Account.new(member_id)
    for command in commands:
        account, _, _ = apply(account, command, rules)
    return account


def log_of(member_id: str, *commands: Command, rules: ProgramRules = RULES) -> list[Event]:
    """The events the processor appends for this member, given the commands in turn."""
    account, log = Account.new(member_id), []
    for command in commands:
        account, _, events = apply(account, replace(command, member_id=member_id), rules)
        log.extend(events)
    return log


def of_type(events: Iterable[EventData], kind: type[EventData]) -> list[EventData]:
    return [event for event in events if isinstance(event, kind)]


def lot(lot_id: str, points: int, expires_at: datetime) -> LotPoints:
    return LotPoints(lot_id=lot_id, points=points, expires_at=expires_at)


# 100 points at T0 (expiring 2027-01-15) and 100 points a month later (expiring 2027-02-15).
TWO_LOTS = (purchase("o-1", 10000), purchase("o-2", 10000, at(2025, 2, 15)))
LOT_1 = lot("purchase:o-1@3", 100, at(2027, 1, 15))
LOT_2 = lot("purchase:o-2@5", 100, at(2027, 2, 15))
