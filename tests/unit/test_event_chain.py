"""Sealing: per-member sequence, hash chain and derived ids make the log explain itself."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.canonical import GENESIS_HASH, event_hash
from schemas.events import Event
from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal, seal_with_bytes
from services.ledger.domain.commands import AdvanceClock, RecordPurchase
from services.ledger.domain.decide import decide
from tests.unit import ledger_fixtures as make

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
RULES = ProgramRules()


def purchase(member_id: str = "m-1", command_id: str = "c-1") -> RecordPurchase:
    return RecordPurchase(
        command_id=command_id,
        correlation_id=command_id,
        member_id=member_id,
        occurred_at=NOW,
        received_at=NOW,
        purchase_id="o-1",
        amount_minor=12990,
        currency="CNY",
    )


def test_sealing_is_deterministic_numbered_and_chained() -> None:
    account = Account.new("m-1")
    first = seal(account, purchase(), decide(account, purchase(), RULES), 1, NOW)[1]
    again = seal(account, purchase(), decide(account, purchase(), RULES), 1, NOW)[1]
    assert [e.to_bytes() for e in first] == [e.to_bytes() for e in again]
    assert [e.sequence for e in first] == [1, 2, 3]
    assert first[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in first[1:]] == [e.hash for e in first[:-1]]
    assert all(event.hash == event_hash(event.document()) and event.hash_is_valid() for event in first)
    assert {event.rules_version for event in first} == {1}


def test_event_ids_differ_per_member_for_one_command() -> None:
    """A clock tick is one command reaching many members: their events must not share ids."""
    tick = {"command_id": "tick-1", "correlation_id": "tick-1", "occurred_at": NOW}
    a = seal(Account.new("m-a"), AdvanceClock(member_id="m-a", **tick), [], 1, NOW)
    assert a[1] == []
    one = seal(
        Account.new("m-a"),
        purchase("m-a", "c"),
        decide(Account.new("m-a"), purchase("m-a", "c"), RULES),
        1,
        NOW,
    )
    two = seal(
        Account.new("m-b"),
        purchase("m-b", "c"),
        decide(Account.new("m-b"), purchase("m-b", "c"), RULES),
        1,
        NOW,
    )
    assert not {e.event_id for e in one[1]} & {e.event_id for e in two[1]}


def test_a_tampered_event_no_longer_matches_its_hash() -> None:
    event = seal(Account.new("m-1"), purchase(), decide(Account.new("m-1"), purchase(), RULES), 1, NOW)[1][2]
    document = event.document()
    document["data"]["points"] += 1
    assert event_hash(document) != event.hash


def test_the_bytes_sealed_are_the_events_serialised() -> None:
    """The processor sends the bytes `seal_with_bytes` made once; they must be each event's own form."""
    commands = [
        make.enrol(name="Li"),
        make.purchase("p-1", 300000, make.at(2025, 1, 15), [make.item("beauty", "100.00")]),
        make.refund("f-1", "p-1", 100000, make.at(2025, 1, 20)),
        make.tick(make.at(2025, 2, 10)),
        make.redeem("r-1", 500, make.at(2025, 2, 11)),
        make.cancel("r-1", make.at(2025, 2, 12)),
        make.adjust("a-1", -50, make.at(2025, 2, 13)),
        make.set_tier("gold", make.at(2025, 2, 14)),
        make.update_profile(make.at(2025, 2, 15), phone="13812345678"),
        make.erase(make.at(2025, 2, 16)),
    ]
    account, kinds = Account.new(make.MEMBER), set()
    for command in commands:
        decided = decide(account, command, RULES)
        account, events, raw = seal_with_bytes(account, command, decided, 1, NOW)
        assert raw == [event.to_bytes() for event in events]
        assert [Event.from_bytes(value) for value in raw] == events
        kinds |= {event.type for event in events}
    assert len(kinds) >= 12
