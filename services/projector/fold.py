"""What a batch of events changes in the read models, decided without touching the database.

Events are folded into per-row increments (members, lots, program quarter hours) and new rows
(events, tier history); the store writes them in one transaction with the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from pydantic import ValidationError

from schemas.effects import Effect, Points, effect
from schemas.events import (
    EncryptedProfile,
    Event,
    EventData,
    LotPoints,
    MemberEnrolled,
    PersonalDataErased,
    PointsAdjusted,
    PointsEarned,
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
from schemas.money import to_minor


@dataclass(slots=True)
class MemberChange:
    """Increments to one member's row, and the latest values of the fields an event sets."""

    last_sequence: int
    last_event_at: datetime
    available: int = 0
    pending: int = 0
    lifetime_earned: int = 0
    redeemed: int = 0
    expired: int = 0
    reversed: int = 0
    adjusted: int = 0
    debt: int = 0
    enrolled_at: datetime | None = None
    tier: str | None = None
    tier_changed_at: datetime | None = None
    evaluation_set: bool = False
    next_evaluation_at: datetime | None = None
    last_purchase_at: datetime | None = None
    # The last purchase not refunded in full, as far as this batch knows: recency counts from it.
    last_kept_purchase_at: datetime | None = None
    purchases: int = 0
    spend_minor: int = 0
    refunded_minor: int = 0

    def add(self, change: Points) -> None:
        self.available += change.available
        self.pending += change.pending
        self.lifetime_earned += change.lifetime_earned
        self.redeemed += change.redeemed
        self.expired += change.expired
        self.reversed += change.reversed
        self.adjusted += change.adjusted
        self.debt += change.debt


@dataclass(slots=True)
class LotChange:
    """A lot's change over the batch. The ledger never takes a lot below zero and drops it at zero,
    so a lot that stood at p points before the batch was used up in it exactly when p + low == 0;
    its points then came back (if they did) with `expires_at`, the expiry of the first credit since
    the last time the running change was at its lowest. A lot new in the batch has p == 0."""

    points: int = 0
    low: int = 0
    expires_at: datetime | None = None
    matures_at: datetime | None = None
    matured: bool = False


@dataclass(slots=True)
class ProfileChange:
    """Sealed fields set by the batch (merged over the stored ones), or the erasure of them all."""

    key_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    erased: bool = False


@dataclass(slots=True)
class ProgramTotals:
    """Program totals over a stretch of business time: a quarter hour in the read models, a day of
    the program's calendar in the metrics."""

    enrolments: int = 0
    purchases: int = 0
    spend_minor: int = 0
    refunded_minor: int = 0
    points_earned: int = 0
    points_redeemed: int = 0
    points_expired: int = 0
    points_reversed: int = 0
    points_adjusted: int = 0
    points_outstanding: int = 0
    # Change in what the program owes: the sum over members of max(0, available + pending). A
    # member's debt is not netted against the points of others.
    points_liability: int = 0
    promotions: int = 0
    demotions: int = 0


class EventRow(NamedTuple):
    event: Event
    change: Points
    raw: str
    amount_minor: int | None
    reference: str | None


class NewPurchase(NamedTuple):
    purchase_id: str
    occurred_at: datetime
    amount_minor: int
    # Item spend per category: a refund takes its share back from each (see store._after_refunds).
    categories: dict[str, int]


@dataclass
class Folded:
    # Streams that already have a row: their changes are increments, the others new rows.
    known: set[str] = field(default_factory=set)
    # Each member's available + pending, as stored before the batch and then after each event in
    # sequence (the order the ledger took them), for `points_liability`.
    balances: dict[str, int] = field(default_factory=dict)
    members: dict[str, MemberChange] = field(default_factory=dict)
    lots: dict[tuple[str, str], LotChange] = field(default_factory=dict)
    # (member, sequence) -> the purchase that event recorded.
    purchases: dict[tuple[str, int], NewPurchase] = field(default_factory=dict)
    # (member, purchase id, sequence of its purchase if recorded in this batch) -> (refunded total,
    # sequence of the refund). Without a purchase sequence, the refund is of the member's latest
    # purchase with that id before the refund (an id can come back once the ledger forgot it).
    refunds: dict[tuple[str, str, int | None], tuple[int, int]] = field(default_factory=dict)
    # (member, purchase id) -> sequence, for the purchases recorded in this batch.
    purchase_sequences: dict[tuple[str, str], int] = field(default_factory=dict)
    categories: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    tier_history: list[tuple[Event, TierChanged]] = field(default_factory=list)
    profiles: dict[str, ProfileChange] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)
    # Program totals and tier moves per UTC quarter hour of business time (see `quarter_hour`).
    quarter_hours: dict[datetime, ProgramTotals] = field(default_factory=dict)
    tier_quarter_hours: dict[tuple[datetime, str], int] = field(default_factory=dict)
    rules: list[tuple[Event, ProgramRulesChanged]] = field(default_factory=list)
    applied: int = 0
    # Why events were not applied (duplicate, unknown type, malformed), and how many.
    skipped: dict[str, int] = field(default_factory=dict)
    # (member, expected sequence, found sequence): events the log is missing. Applied anyway.
    gaps: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.skipped.get(DUPLICATE, 0)


UNKNOWN_TYPE = "unknown_type"
UNKNOWN_VERSION = "unknown_version"
MALFORMED = "malformed"
DUPLICATE = "duplicate"


class Decoded(NamedTuple):
    event: Event
    raw: str


def decode(raw: bytes | None) -> Decoded | str:
    """The event at its current version, or why it is skipped: a type or version this projector
    does not know yet, or a broken record.

    Neither may stop the projector; both are counted, and a newer projector can replay them.
    """
    try:
        return Decoded(Event.from_bytes(raw or b""), (raw or b"").decode())
    except (ValidationError, UnicodeDecodeError):
        try:
            document = json.loads(raw or b"")
            data_type = EventData.registry.get(document.get("type"))
            version = document.get("schema_version")
        except (ValueError, AttributeError):
            return MALFORMED
        if data_type is None:
            return UNKNOWN_TYPE
        if isinstance(version, int) and version > data_type.SCHEMA_VERSION:
            return UNKNOWN_VERSION
        return MALFORMED


def fold(records: list[Decoded | str], last_sequences: dict[str, int], into: Folded | None = None) -> Folded:
    """Apply each event once: one at or below the member's last applied sequence is a duplicate.

    `into` continues an earlier fold of the same transaction, as if both were one batch.
    """
    folded = Folded(known=set(last_sequences)) if into is None else into
    for record in records:
        if isinstance(record, str):
            folded.skipped[record] = folded.skipped.get(record, 0) + 1
            continue
        event = record.event
        last = last_sequences.get(event.member_id, 0)
        if event.sequence <= last:
            folded.skipped[DUPLICATE] = folded.skipped.get(DUPLICATE, 0) + 1
            continue
        if event.sequence != last + 1:
            folded.gaps.append((event.member_id, last + 1, event.sequence))
        last_sequences[event.member_id] = event.sequence
        folded.applied += 1
        _apply(folded, event, record.raw)
    return folded


def _apply(folded: Folded, event: Event, raw: str) -> None:
    member = folded.members.get(event.member_id)
    if member is None:
        member = folded.members[event.member_id] = MemberChange(event.sequence, event.occurred_at)
    member.last_sequence = event.sequence
    member.last_event_at = max(member.last_event_at, event.occurred_at)
    data = event.data
    if isinstance(data, ProgramRulesChanged):  # the program's own stream: no member rows
        folded.rules.append((event, data))
        return
    moved = effect(data)
    change = moved.points
    member.add(change)
    when = quarter_hour(event.occurred_at)
    totals = _totals(folded, when)
    totals.points_earned += change.lifetime_earned
    totals.points_redeemed += change.redeemed
    totals.points_expired += change.expired
    totals.points_reversed += change.reversed
    totals.points_adjusted += change.adjusted
    totals.points_outstanding += change.outstanding
    if change.outstanding:
        totals.points_liability += _liability_change(folded, event.member_id, change.outstanding)
    amount, reference = _what(data)
    folded.events.append(EventRow(event, change, raw, amount, reference))
    _lots(folded, event.member_id, moved)
    match data:
        case MemberEnrolled():
            member.enrolled_at = event.occurred_at
            member.tier = data.tier
            totals.enrolments += 1
            _tier_move(folded, when, data.tier, 1)
            if data.profile is not None:
                _profile(folded, event.member_id, data.profile)
        case ProfileUpdated():
            _profile(folded, event.member_id, data.profile)
        case PersonalDataErased():
            folded.profiles[event.member_id] = ProfileChange(erased=True)
        case PurchaseRecorded():
            spends: dict[str, int] = {}
            for item in data.items:
                spends[item.category] = spends.get(item.category, 0) + to_minor(item.amount)
            folded.purchases[(event.member_id, event.sequence)] = NewPurchase(
                data.purchase_id, event.occurred_at, data.amount_minor, spends
            )
            folded.purchase_sequences[(event.member_id, data.purchase_id)] = event.sequence
            if member.last_purchase_at is None or event.occurred_at > member.last_purchase_at:
                member.last_purchase_at = event.occurred_at
            if data.amount_minor > 0 and (
                member.last_kept_purchase_at is None or event.occurred_at > member.last_kept_purchase_at
            ):
                member.last_kept_purchase_at = event.occurred_at
            member.purchases += 1
            member.spend_minor += data.amount_minor
            totals.purchases += 1
            totals.spend_minor += data.amount_minor
            for category, spend in spends.items():
                key = (event.member_id, category)
                before = folded.categories.get(key, (0, 0))
                folded.categories[key] = (before[0] + spend, before[1] + 1)
        case PurchaseRefunded():
            recorded = folded.purchase_sequences.get((event.member_id, data.purchase_id))
            folded.refunds[(event.member_id, data.purchase_id, recorded)] = (
                data.refunded_total_minor,
                event.sequence,
            )
            member.refunded_minor += data.amount_minor
            totals.refunded_minor += data.amount_minor
        case TierChanged():
            member.tier = data.to_tier
            member.tier_changed_at = event.occurred_at
            member.evaluation_set = True
            member.next_evaluation_at = data.next_evaluation_at
            folded.tier_history.append((event, data))
            if data.reason == "promotion":
                totals.promotions += 1
            elif data.reason == "demotion":
                totals.demotions += 1
            _tier_move(folded, when, data.from_tier, -1)
            _tier_move(folded, when, data.to_tier, 1)
        case TierRetained():
            member.evaluation_set = True
            member.next_evaluation_at = data.next_evaluation_at


def _liability_change(folded: Folded, member_id: str, outstanding: int) -> int:
    """How much more the program owes the member: only a balance above zero is owed."""
    before = folded.balances.get(member_id, 0)
    after = folded.balances[member_id] = before + outstanding
    return max(0, after) - max(0, before)


def _what(data: EventData) -> tuple[int | None, str | None]:
    """The money amount and the business id an event is about, for the activity feed."""
    match data:
        case PurchaseRecorded():
            return data.amount_minor, data.purchase_id
        case PurchaseRefunded():
            return data.amount_minor, data.refund_id
        case PointsEarned():
            return None, data.purchase_id
        case PointsReversed():
            return None, data.refund_id
        case PointsRedeemed():
            return data.value_minor, data.redemption_id
        case RedemptionCancelled() | PointsRestored():
            return None, data.redemption_id
        case PointsAdjusted():
            return None, data.adjustment_id
        case PointsMatured():
            return None, data.lot_id
    return None, None


def _lots(folded: Folded, member_id: str, moved: Effect) -> None:
    """The event's lot movements (see schemas/effects.py). A pending lot is a row with `matures_at`
    that matures in place: it keeps its points, less the debt they repaid."""
    _take(folded, member_id, (*moved.taken_pending, *moved.taken), -1)
    _take(folded, member_id, moved.returned, 1)
    if moved.opened is not None:
        lot = _lot(folded, member_id, moved.opened.lot_id, moved.opened.points, moved.opened.expires_at)
        if moved.opened.matures_at is not None:
            lot.matures_at = moved.opened.matures_at
    if moved.matured is not None:
        lot = _lot(folded, member_id, moved.matured.lot_id, -moved.matured.debt_repaid, None)
        lot.matured = True
        lot.matures_at = None


def _take(folded: Folded, member_id: str, moved: tuple[LotPoints, ...], sign: int) -> None:
    for item in moved:
        _lot(folded, member_id, item.lot_id, sign * item.points, item.expires_at)


def _lot(folded: Folded, member_id: str, lot_id: str, points: int, expires_at: datetime | None) -> LotChange:
    lot = folded.lots.get((member_id, lot_id))
    if lot is None:
        lot = folded.lots[(member_id, lot_id)] = LotChange()
    lot.points += points
    if lot.points < lot.low or (points < 0 and lot.points == lot.low):
        lot.low, lot.expires_at = lot.points, None
    elif points > 0 and lot.expires_at is None:
        lot.expires_at = expires_at
    return lot


def _profile(folded: Folded, member_id: str, profile: EncryptedProfile) -> None:
    change = folded.profiles.setdefault(member_id, ProfileChange())
    change.key_id = profile.key_id
    change.fields.update({name: value for name, value in profile.fields.items()})


def quarter_hour(moment: datetime) -> datetime:
    """The UTC quarter hour holding `moment`. Every time zone in use is a whole number of quarter
    hours from UTC, so the days and months of any program calendar are sums of quarter hours: the
    read models need not know the program's time zone, and a change of it needs no rebuild."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def _totals(folded: Folded, when: datetime) -> ProgramTotals:
    found = folded.quarter_hours.get(when)
    if found is None:
        found = folded.quarter_hours[when] = ProgramTotals()
    return found


def _tier_move(folded: Folded, when: datetime, tier: str, members: int) -> None:
    folded.tier_quarter_hours[(when, tier)] = folded.tier_quarter_hours.get((when, tier), 0) + members
