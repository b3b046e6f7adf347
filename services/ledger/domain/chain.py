"""Sealing decided event data into envelopes: sequence, hash chain and derived ids."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import orjson
from pydantic import TypeAdapter

from schemas.canonical import event_hash
from schemas.events import Event, EventData
from services.ledger.domain.account import Account, evolve
from services.ledger.domain.commands import Command
from services.ledger.domain.ids import derived_id

EVENT_NAMESPACE = uuid.UUID("6f1c3a52-4b8e-4f0e-9a57-2d3c1b0e8a11")

_instant: TypeAdapter[datetime] = TypeAdapter(datetime)


def seal(
    account: Account, command: Command, decided: list[EventData], rules_version: int, recorded_at: datetime
) -> tuple[Account, list[Event]]:
    """Number, chain and identify the events, and fold them into the account."""
    account, events, _ = seal_with_bytes(account, command, decided, rules_version, recorded_at)
    return account, events


def seal_with_bytes(
    account: Account, command: Command, decided: list[EventData], rules_version: int, recorded_at: datetime
) -> tuple[Account, list[Event], list[bytes]]:
    """`seal`, and each event as the bytes `Event.to_bytes` gives.

    Ids come from the command id, the member (a clock tick reaches many) and the event's index,
    so a retried decision produces byte-identical events; `recorded_at` is the input record's
    timestamp for the same reason. Each event is serialised once, as the JSON document its hash
    covers: this runs for every event the processor writes.
    """
    occurred_json, recorded_json = (
        _instant.dump_python(command.occurred_at, mode="json"),
        _instant.dump_python(recorded_at, mode="json"),
    )
    events, raw = [], []
    for index, data in enumerate(decided):
        envelope: dict[str, Any] = {
            "event_id": derived_id(EVENT_NAMESPACE, f"{command.command_id}:{account.member_id}:{index}"),
            "type": type(data).__name__,
            "schema_version": data.SCHEMA_VERSION,
            "member_id": account.member_id,
            "sequence": account.sequence + 1,
            "occurred_at": occurred_json,
            "recorded_at": recorded_json,
            "command_id": command.command_id,
            "correlation_id": command.correlation_id,
            "rules_version": rules_version,
            "prev_hash": account.last_hash,
        }
        data_json = data.model_dump(mode="json")
        digest = event_hash({**envelope, "data": data_json})
        # Built from fields already typed and checked: validating them again is most of the cost.
        event = Event.model_construct(
            **{
                **envelope,
                "occurred_at": command.occurred_at,
                "recorded_at": recorded_at,
                "hash": digest,
                "data": data,
            }
        )
        account = evolve(account, event)
        events.append(event)
        raw.append(orjson.dumps({**envelope, "hash": digest, "data": data_json}))
    return account, events, raw
