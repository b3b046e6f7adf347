"""What a batch of events changes in the read models, decided without touching the database."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from schemas.events import Event, EventData, PointsEarned


@dataclass
class BalanceChange:
    """Increments to one member's balance row, and the last event they include."""

    last_sequence: int
    last_event_at: datetime
    available: int = 0
    lifetime_earned: int = 0


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
        change = folded.balances.get(event.member_id)
        if change is None:
            change = folded.balances[event.member_id] = BalanceChange(event.sequence, event.occurred_at)
        change.last_sequence = event.sequence
        change.last_event_at = max(change.last_event_at, event.occurred_at)
        if isinstance(event.data, PointsEarned):
            change.available += event.data.points
            change.lifetime_earned += event.data.points
        folded.applied += 1
    return folded
