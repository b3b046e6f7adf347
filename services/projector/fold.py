"""What a batch of events changes in the read models, decided without touching the database."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from schemas.events import (
    Event,
    EventData,
    PointsAdjusted,
    PointsEarned,
    PointsExpired,
    PointsMatured,
    PointsRedeemed,
    PointsRestored,
    PointsReversed,
    RedemptionCancelled,
)


@dataclass
class BalanceChange:
    """Increments to one member's balance row, and the last event they include."""

    last_sequence: int
    last_event_at: datetime
    available: int = 0
    pending: int = 0
    lifetime_earned: int = 0
    redeemed: int = 0
    expired: int = 0
    reversed: int = 0

    def apply(self, data: EventData) -> None:
        match data:
            case PointsEarned():
                self.lifetime_earned += data.points
                if data.matures_at is None:
                    self.available += data.points
                else:
                    self.pending += data.points
            case PointsMatured():
                self.pending -= data.points
                self.available += data.points
            case PointsReversed():
                from_pending = sum(item.points for item in data.from_pending)
                self.pending -= from_pending
                self.available -= data.points - from_pending
                self.reversed += data.points
            case PointsRedeemed():
                self.available -= data.points
                self.redeemed += data.points
            case RedemptionCancelled():
                self.redeemed -= data.points
            case PointsRestored() | PointsAdjusted():
                self.available += data.points
            case PointsExpired():
                self.available -= data.points
                self.expired += data.points


@dataclass
class Folded:
    balances: dict[str, BalanceChange] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


UNKNOWN_TYPE = "unknown_type"
MALFORMED = "malformed"


def decode(raw: bytes | None) -> Event | str:
    """The event, or why it is skipped: a type this projector does not know, or a broken record.

    Neither may stop the projector; both are counted, and a newer projector can replay them.
    """
    try:
        return Event.from_bytes(raw or b"")
    except ValidationError:
        try:
            known = json.loads(raw or b"").get("type") in EventData.registry
        except (ValueError, AttributeError):
            known = True
        return MALFORMED if known else UNKNOWN_TYPE


def fold(events: list[Event | str], last_sequences: dict[str, int]) -> Folded:
    """Apply each event once: one at or below the member's last applied sequence is a duplicate."""
    folded = Folded()
    for event in events:
        if isinstance(event, str):
            folded.skipped[event] = folded.skipped.get(event, 0) + 1
            continue
        if event.sequence <= last_sequences.get(event.member_id, 0):
            folded.duplicates += 1
            continue
        last_sequences[event.member_id] = event.sequence
        folded.applied += 1
        if event.member_id.startswith("$"):  # the program's own stream has no member rows
            continue
        change = folded.balances.get(event.member_id)
        if change is None:
            change = folded.balances[event.member_id] = BalanceChange(event.sequence, event.occurred_at)
        change.last_sequence = event.sequence
        change.last_event_at = max(change.last_event_at, event.occurred_at)
        change.apply(event.data)
    return folded
