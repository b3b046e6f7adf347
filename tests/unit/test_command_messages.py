"""Inbound records become commands, or a dead-letter reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.ledger.command_messages import InvalidRecord, parse_command_record, parse_inbound_record
from services.ledger.domain.commands import RecordPurchase, RefundPurchase

ARRIVED = datetime(2026, 11, 22, 10, 5, tzinfo=UTC)
PURCHASE = {
    "type": "purchase",
    "purchase_id": "ord-1001",
    "member_id": "m-42",
    "amount": "129.90",
    "currency": "CNY",
    "occurred_at": "2026-11-22T18:00:00+08:00",
    "store_id": "sh-07",
    "channel": "store",
    "items": [{"sku": "A1", "category": "beauty", "quantity": 1, "amount": "129.90"}],
}


def test_a_purchase_message_becomes_a_command_with_a_derived_id() -> None:
    command = parse_inbound_record(json.dumps(PURCHASE).encode(), ARRIVED)
    assert isinstance(command, RecordPurchase)
    assert command.amount_minor == 12990
    assert command.occurred_at.isoformat() == "2026-11-22T10:00:00+00:00"
    assert command.received_at == ARRIVED
    assert command.items[0].category == "beauty"
    assert parse_inbound_record(json.dumps(PURCHASE).encode(), ARRIVED).command_id == command.command_id


def test_a_purchase_id_used_for_another_purchase_is_another_command() -> None:
    """Not dropped as a retry of the first: the ledger decides it (and rejects it while it remembers
    the first purchase)."""
    first = parse_inbound_record(json.dumps(PURCHASE).encode(), ARRIVED)
    for other in ({"amount": "50.00"}, {"occurred_at": "2026-11-23T18:00:00+08:00"}):
        again = parse_inbound_record(json.dumps({**PURCHASE, **other}).encode(), ARRIVED)
        assert again.command_id != first.command_id


def test_a_refund_message_names_its_items() -> None:
    refund = {
        "type": "refund",
        "refund_id": "rf-1",
        "purchase_id": "ord-1001",
        "member_id": "m-42",
        "amount": "129.90",
        "currency": "CNY",
        "occurred_at": "2026-11-23T09:00:00Z",
        "items": PURCHASE["items"],
    }
    command = parse_inbound_record(json.dumps(refund).encode(), ARRIVED)
    assert isinstance(command, RefundPurchase)
    assert [item.category for item in command.items] == ["beauty"]


def test_a_command_message_keeps_its_ids() -> None:
    raw = json.dumps(
        {"command_id": "c-1", "correlation_id": "r-1", "issued_at": "2026-11-25T00:00:00Z", "body": PURCHASE}
    ).encode()
    command = parse_command_record(raw, ARRIVED)
    assert (command.command_id, command.correlation_id) == ("c-1", "r-1")
    assert isinstance(command, RecordPurchase) and command.received_at == ARRIVED
    assert not command.keyed


def test_a_command_sent_under_an_idempotency_key_says_so() -> None:
    raw = json.dumps(
        {
            "command_id": "c-1",
            "correlation_id": "key-1",
            "issued_at": "2026-11-25T00:00:00Z",
            "body": PURCHASE,
            "keyed": True,
        }
    ).encode()
    command = parse_command_record(raw, ARRIVED)
    assert isinstance(command, RecordPurchase) and command.keyed and command.correlation_id == "key-1"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "no value"),
        (b"", "Invalid JSON"),
        (b"\xff\xfe", "Invalid JSON"),
        (b"[]", "value"),
        (json.dumps({**PURCHASE, "amount": "1.234"}).encode(), "amount"),
        (json.dumps({**PURCHASE, "amount": "-1"}).encode(), "amount"),
        (json.dumps({**PURCHASE, "currency": "USD"}).encode(), "currency"),
        (json.dumps({**PURCHASE, "occurred_at": "2026-11-22T10:00:00"}).encode(), "occurred_at"),
        (json.dumps({**PURCHASE, "member_id": ""}).encode(), "member_id"),
        (json.dumps({**PURCHASE, "type": "gift"}).encode(), "gift"),
    ],
)
def test_an_invalid_record_says_why(value: bytes | None, fragment: str) -> None:
    with pytest.raises(InvalidRecord) as raised:
        parse_inbound_record(value, ARRIVED)
    assert fragment in raised.value.message
