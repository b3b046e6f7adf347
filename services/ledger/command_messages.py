"""Records the processor consumes, turned into domain commands.

Two inputs carry commands: loyalty.purchases.v1 (bare inbound messages from commerce services)
and loyalty.commands.v1 (messages from the ledger API, with a command id and correlation id).
"""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from schemas.inbound import InboundMessage, PurchaseMessage, RefundMessage
from schemas.money import to_minor
from services.ledger.domain.commands import Command, RecordPurchase

M = TypeVar("M")

INBOUND_NAMESPACE = uuid.UUID("0b5e0c9e-7d0a-4f55-8a0e-3f6f1f3f2c10")


class InvalidRecord(Exception):
    """A record that no decision can be taken on; it goes to the dead-letter topic."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CommandMessage(BaseModel):
    """The value of a loyalty.commands.v1 record."""

    model_config = ConfigDict(frozen=True)

    command_id: str
    correlation_id: str
    body: InboundMessage


_inbound: TypeAdapter[PurchaseMessage | RefundMessage] = TypeAdapter(InboundMessage)


def parse_command_record(value: bytes | None) -> Command:
    envelope = _validate(TypeAdapter(CommandMessage), value)
    return to_command(envelope.body, envelope.command_id, envelope.correlation_id)


def parse_inbound_record(value: bytes | None) -> Command:
    """A bare purchase or refund; its command id is derived from its business id."""
    message = _validate(_inbound, value)
    key = (
        f"purchase:{message.purchase_id}"
        if isinstance(message, PurchaseMessage)
        else f"refund:{message.refund_id}"
    )
    command_id = str(uuid.uuid5(INBOUND_NAMESPACE, f"{message.member_id}:{key}"))
    return to_command(message, command_id, command_id)


def to_command(message: BaseModel, command_id: str, correlation_id: str) -> Command:
    if isinstance(message, PurchaseMessage):
        return RecordPurchase(
            command_id=command_id,
            correlation_id=correlation_id,
            member_id=message.member_id,
            occurred_at=message.occurred_at.astimezone(UTC),
            purchase_id=message.purchase_id,
            amount_minor=to_minor(message.amount),
            currency=message.currency,
            store_id=message.store_id,
            channel=message.channel,
            items=tuple(message.items or ()),
        )
    raise InvalidRecord("unsupported_type", f"{type(message).__name__} is not handled yet")


def _validate(adapter: TypeAdapter[M], value: bytes | None) -> M:
    if value is None:
        raise InvalidRecord("empty_value", "the record has no value")
    try:
        return adapter.validate_json(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part not in ("purchase", "refund")) or "value"
        raise InvalidRecord("invalid_message", f"{where}: {first['msg']}") from None
