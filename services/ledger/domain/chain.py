"""Sealing decided event data into envelopes: sequence, hash chain and derived ids."""

from __future__ import annotations

import uuid
from datetime import datetime

from schemas.canonical import event_hash
from schemas.events import Event, EventData
from services.ledger.domain.account import Account, evolve
from services.ledger.domain.commands import Command
from services.ledger.domain.ids import derived_id

EVENT_NAMESPACE = uuid.UUID("6f1c3a52-4b8e-4f0e-9a57-2d3c1b0e8a11")


def seal(
    account: Account, command: Command, decided: list[EventData], rules_version: int, recorded_at: datetime
) -> tuple[Account, list[Event]]:
    """Number, chain and identify the events, and fold them into the account.

    Ids come from the command id, the member (a clock tick reaches many) and the event's index,
    so a retried decision produces byte-identical events; `recorded_at` is the input record's
    timestamp for the same reason.
    """
    events = []
    for index, data in enumerate(decided):
        document = {
            "event_id": derived_id(EVENT_NAMESPACE, f"{command.command_id}:{account.member_id}:{index}"),
            "type": type(data).__name__,
            "schema_version": data.SCHEMA_VERSION,
            "member_id": account.member_id,
            "sequence": account.sequence + 1,
            "occurred_at": command.occurred_at,
            "recorded_at": recorded_at,
            "command_id": command.command_id,
            "correlation_id": command.correlation_id,
            "rules_version": rules_version,
            "prev_hash": account.last_hash,
            "hash": "",
            "data": data,
        }
        unsealed = Event.model_validate(document)
        event = unsealed.model_copy(update={"hash": event_hash(unsealed.document())})
        account = evolve(account, event)
        events.append(event)
    return account, events
