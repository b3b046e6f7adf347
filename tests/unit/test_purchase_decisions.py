"""Given an account / when a purchase / then these events."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from schemas.canonical import GENESIS_HASH, event_hash
from schemas.events import PointsEarned, PurchaseRecorded
from services.ledger.domain.account import Account, account_from_json, account_to_json, evolve
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import RecordPurchase
from services.ledger.domain.decide import decide
from services.ledger.domain.rules import Rules

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
RULES = Rules()


def purchase(purchase_id: str = "o-1", amount_minor: int = 12990, command_id: str = "c-1") -> RecordPurchase:
    return RecordPurchase(
        command_id=command_id,
        correlation_id=command_id,
        member_id="m-1",
        occurred_at=NOW,
        purchase_id=purchase_id,
        amount_minor=amount_minor,
        currency="CNY",
    )


def apply(account: Account, command: RecordPurchase) -> Account:
    return seal(account, command, decide(account, command, RULES), RULES.version, NOW)[0]


def test_a_purchase_earns_one_point_per_cny_rounded_down() -> None:
    events = decide(Account.new("m-1"), purchase(amount_minor=12990), RULES)
    assert events == [
        PurchaseRecorded(purchase_id="o-1", amount_minor=12990, currency="CNY"),
        PointsEarned(purchase_id="o-1", points=129, rule="base"),
    ]


def test_a_purchase_under_one_cny_earns_nothing_but_is_recorded() -> None:
    events = decide(Account.new("m-1"), purchase(amount_minor=99), RULES)
    assert [type(event) for event in events] == [PurchaseRecorded]


def test_a_repeated_purchase_id_changes_nothing() -> None:
    account = apply(Account.new("m-1"), purchase())
    assert decide(account, purchase(command_id="c-2"), RULES) == []


def test_sealing_is_deterministic_and_chained() -> None:
    account = Account.new("m-1")
    first = seal(account, purchase(), decide(account, purchase(), RULES), 1, NOW)
    again = seal(account, purchase(), decide(account, purchase(), RULES), 1, NOW)
    assert [e.to_bytes() for e in first[1]] == [e.to_bytes() for e in again[1]]
    events = first[1]
    assert [e.sequence for e in events] == [1, 2]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash
    assert all(event.hash == event_hash(event.document()) for event in events)
    assert len({event.event_id for event in events}) == 2


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 10_000_000)), max_size=30))
def test_folding_the_events_reproduces_the_processors_account(purchases: list[tuple[str, int]]) -> None:
    account = Account.new("m-1")
    log = []
    for index, (purchase_id, amount) in enumerate(purchases):
        command = purchase(purchase_id, amount, command_id=f"c-{index}")
        account, events = seal(account, command, decide(account, command, RULES), RULES.version, NOW)
        log.extend(events)
    assert reduce(evolve, log, Account.new("m-1")) == account
    assert account_from_json(account_to_json(account)) == account
    first_amounts: dict[str, int] = {}
    for purchase_id, amount in purchases:
        first_amounts.setdefault(purchase_id, amount)
    assert account.available == sum(amount // 100 for amount in first_amounts.values())
    assert [event.sequence for event in log] == list(range(1, len(log) + 1))
