"""Retries and reused ids (issue 14, finding 12): an Idempotency-Key names one request, and every
id is remembered for a documented horizon of the processing clock, not for a number of commands."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from schemas.events import PointsAdjusted, PointsRedeemed, TierChanged
from services.ledger import state_records
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import Command
from services.ledger.domain.decide import decide, original_command
from services.ledger.domain.errors import IdempotencyKeyReused, UnknownRedemption
from services.ledger.domain.memory import OUTCOME_LIMIT, REMEMBERED_FOR, Outcome
from tests.unit.ledger_fixtures import (
    MEMBER,
    RULES,
    T0,
    adjust,
    apply,
    at,
    cancel,
    given,
    of_type,
    purchase,
    redeem,
    refund,
    set_tier,
    tick,
)

DAY = timedelta(days=1)


def keyed(command: Command, key: str, body: str) -> Command:
    """`command` as the API sends it under an Idempotency-Key: the key is its correlation id, and
    the command id names the key and the body."""
    return replace(command, keyed=True, correlation_id=key, command_id=f"{key}:{body}")


def test_a_retry_under_a_key_returns_the_original_outcome() -> None:
    first = keyed(redeem("rd-1", 100), "k-1", "body-a")
    account = given(purchase("o-1", 50_000), first)
    retry = keyed(redeem("rd-1", 100), "k-1", "body-a")
    assert original_command(account, retry) == first.command_id
    assert decide(account, retry, RULES) == []


@pytest.mark.parametrize(
    "other",
    [
        keyed(redeem("rd-2", 100), "k-1", "body-b"),
        keyed(redeem("rd-1", 200), "k-1", "body-c"),
    ],
)
def test_a_key_reused_for_another_request_is_refused(other: Command) -> None:
    account = given(purchase("o-1", 50_000), keyed(redeem("rd-1", 100), "k-1", "body-a"))
    with pytest.raises(IdempotencyKeyReused, match="another request"):
        original_command(account, other)
    with pytest.raises(IdempotencyKeyReused):
        decide(account, other, RULES)


def test_a_key_under_another_kind_or_member_is_another_key() -> None:
    """The API scopes a key to the member and the kind of command: another scope is another key."""
    account = given(purchase("o-1", 50_000), keyed(redeem("rd-1", 100), "k-1", "body-a"))
    assert of_type(decide(account, keyed(redeem("rd-2", 100), "k-2", "body-b"), RULES), PointsRedeemed)


def test_a_key_decided_before_requests_were_told_apart_is_taken_as_a_retry() -> None:
    """Earlier versions made the key itself the command id: such an outcome answers a retry."""
    account = given(purchase("o-1", 50_000), redeem("rd-1", 100, command_id="k-1"))
    retry = keyed(redeem("rd-1", 100), "k-1", "body-a")
    assert original_command(account, retry) == "k-1"
    assert decide(account, retry, RULES) == []


def test_keys_are_remembered_for_the_horizon_then_a_retry_runs_again() -> None:
    gold = keyed(set_tier("gold"), "k-tier", "gold")
    account = given(purchase("o-1", 10_000), gold, set_tier("silver", T0 + 10 * DAY, command_id="by-hand"))
    account = given_more(account, purchase("o-2", 100, T0 + REMEMBERED_FOR))
    assert decide(account, gold, RULES) == [], "remembered for the whole horizon"
    account = given_more(account, purchase("o-3", 100, T0 + REMEMBERED_FOR + DAY))
    assert gold.command_id not in account.outcomes
    changed = of_type(decide(account, gold, RULES), TierChanged)
    assert changed and changed[0].to_tier == "gold", "past the horizon a retry is a new command"


def test_the_horizon_follows_the_processing_clock_not_a_command_s_own_date() -> None:
    """A purchase that arrives 40 days after its date moves the clock by its arrival."""
    account = given(purchase("o-1", 10_000), adjust("a-1", 10, command_id="c-adjust"))
    late = purchase("o-2", 100, T0 + 5 * DAY, received=T0 + 40 * DAY)
    account, _ = seal(account, late, decide(account, late, RULES), RULES.version, T0 + 40 * DAY)
    assert "c-adjust" not in account.outcomes


def test_outcomes_kept_before_they_had_a_time_count_from_the_next_event() -> None:
    account = given(purchase("o-1", 10_000), set_tier("gold", command_id="old"))
    untimed = {
        command_id: replace(o, recorded_at=None, key=None) for command_id, o in account.outcomes.items()
    }
    account = replace(account, outcomes=untimed)
    later = T0 + 300 * DAY
    account = given_more(account, purchase("o-2", 100, later))
    assert account.outcomes["old"].recorded_at == later
    account = given_more(account, purchase("o-3", 100, later + REMEMBERED_FOR))
    assert "old" in account.outcomes
    account = given_more(account, purchase("o-4", 100, later + REMEMBERED_FOR + DAY))
    assert "old" not in account.outcomes


def test_a_member_remembers_at_most_a_bounded_number_of_outcomes() -> None:
    account = given(purchase("o-1", 10_000))
    for n in range(OUTCOME_LIMIT + 20):
        account = given_more(account, adjust(f"a-{n}", 1, T0 + n * timedelta(seconds=1)))
    assert len(account.outcomes) == OUTCOME_LIMIT
    assert "adjust:a-0" not in account.outcomes and f"adjust:a-{OUTCOME_LIMIT + 19}" in account.outcomes
    assert "a-0" not in account.adjustments, "an adjustment id goes with its command's outcome"


def test_an_adjustment_id_is_remembered_for_the_horizon() -> None:
    account = given(purchase("o-1", 10_000), adjust("a-1", 50, command_id="c-1"))
    again = adjust("a-1", 50, T0 + 20 * DAY, command_id="c-2")
    assert decide(account, again, RULES) == []
    account = given_more(account, purchase("o-2", 100, T0 + REMEMBERED_FOR + DAY))
    assert "a-1" not in account.adjustments
    assert of_type(decide(account, again, RULES), PointsAdjusted), "past the horizon it is a new adjustment"


def test_a_redemption_id_is_remembered_while_its_points_could_come_back() -> None:
    """Past the horizon but before its points expire, a redemption is neither spent again nor
    beyond cancelling; once they would have expired it is forgotten."""
    account = given(purchase("o-1", 10_000), redeem("rd-1", 40, command_id="c-1"))
    later = T0 + 200 * DAY
    account = given_more(account, purchase("o-2", 10_000, later))
    assert "c-1" not in account.outcomes and "rd-1" in account.redemptions
    assert decide(account, redeem("rd-1", 40, later, command_id="c-2"), RULES) == []
    assert decide(account, cancel("rd-1", later), RULES), "it can still be cancelled"
    expired = at(2027, 1, 16)  # the lot of o-1 expires on 2027-01-15
    account = given_more(account, tick(expired), purchase("o-3", 100, expired))
    assert "rd-1" not in account.redemptions
    with pytest.raises(UnknownRedemption, match="would have expired"):
        decide(account, cancel("rd-1", expired), RULES)


def test_a_cancelled_redemption_is_forgotten_in_the_same_way() -> None:
    account = given(purchase("o-1", 10_000), redeem("rd-1", 40), cancel("rd-1", T0 + DAY))
    account = given_more(account, tick(at(2027, 1, 16)), purchase("o-2", 100, at(2027, 1, 16)))
    assert account.redemptions == {}


def test_a_refund_id_is_remembered_as_long_as_its_purchase() -> None:
    """Its purchase can be refunded until it is forgotten: until then a refund id is never applied twice."""
    account = given(purchase("o-1", 10_000), refund("rf-1", "o-1", 1_000, T0 + DAY, command_id="c-1"))
    later = T0 + 200 * DAY
    account = given_more(account, purchase("o-2", 100, later))
    assert "c-1" not in account.outcomes
    assert decide(account, refund("rf-1", "o-1", 1_000, later, command_id="c-2"), RULES) == []
    account = given_more(account, purchase("o-3", 100, T0 + 400 * DAY))
    assert "o-1" not in account.purchases and "rf-1" not in account.refunds


def test_state_records_keep_outcome_times_keys_and_refunds_and_read_older_records() -> None:
    account = given(
        purchase("o-1", 10_000), refund("rf-1", "o-1", 500), keyed(set_tier("gold"), "k-1", "gold")
    )
    assert state_records.assemble(MEMBER, state_records.records(account).items()) == account
    older = {
        state_records.key(MEMBER, state_records.OUTCOME, "c-old"): b"[1,2,false]",
        state_records.key(MEMBER, state_records.PURCHASE, "o-1"): (
            b'["c-1",10000,"2025-01-15T10:00:00Z",0,100,0,"purchase:o-1@2",0,[],[]]'
        ),
        state_records.key(MEMBER, state_records.SUMMARY): state_records.records(account)[
            state_records.key(MEMBER, state_records.SUMMARY)
        ],
    }
    restored = state_records.assemble(MEMBER, older.items())
    assert restored.outcomes == {"c-old": Outcome(1, 2, False)}
    assert restored.purchases["o-1"].refund_ids == ()


def given_more(account: Account, *commands: Command) -> Account:
    for command in commands:
        account, _, _ = apply(account, command)
    return account
