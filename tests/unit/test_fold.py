"""The projector's fold applies each event once and skips what it cannot read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import RecordPurchase
from services.ledger.domain.decide import decide
from services.projector.fold import MALFORMED, UNKNOWN_TYPE, Folded, MemberChange, decode, fold
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def events_for(member_id: str, amounts: list[int]) -> list[bytes]:
    account, raw = Account.new(member_id), []
    for index, amount in enumerate(amounts):
        command = RecordPurchase(
            command_id=f"c{index}",
            correlation_id="r",
            member_id=member_id,
            occurred_at=NOW,
            received_at=NOW,
            purchase_id=f"o{index}",
            amount_minor=amount,
            currency="CNY",
        )
        account, events = seal(account, command, decide(account, command, ProgramRules()), 1, NOW)
        raw.extend(event.to_bytes() for event in events)
    return raw


def test_events_at_or_below_the_applied_sequence_are_duplicates() -> None:
    raw = events_for("m-1", [1000, 2000, 3000])
    folded = fold([decode(r) for r in raw + raw[:2]], {"m-1": 2})
    assert folded.duplicates == 4
    assert folded.members["m-1"].available == 60
    assert folded.members["m-1"].last_sequence == 7


def test_unknown_and_broken_events_are_counted_not_fatal() -> None:
    unknown = json.dumps({"type": "PointsTeleported", "member_id": "m-1"}).encode()
    folded = fold(
        [decode(unknown), decode(b"{not json"), decode(None), *map(decode, events_for("m-2", [500]))], {}
    )
    assert folded.skipped == {UNKNOWN_TYPE: 1, MALFORMED: 2}
    assert folded.members["m-2"].available == 5


def test_a_missing_sequence_is_reported_and_the_rest_applied() -> None:
    raw = events_for("m-3", [1000, 2000])
    folded = fold([decode(r) for r in raw[:2] + raw[3:]], {})
    assert folded.gaps == [("m-3", 3, 4)]
    assert folded.applied == len(raw) - 1


def reconciles(change: MemberChange) -> bool:
    earned = change.lifetime_earned + change.adjusted
    return earned - change.redeemed - change.expired - change.reversed == change.available + change.pending


def test_an_adjustment_is_its_own_figure_and_the_balance_reconciles() -> None:
    log = log_of("m-a", make.enrol(at(2025, 3, 1)), make.adjust("a-1", 500, at(2025, 3, 2)))
    folded = fold([decode(event.to_bytes()) for event in log], {})
    member = folded.members["m-a"]
    assert (member.available, member.lifetime_earned, member.adjusted) == (500, 0, 500)
    assert reconciles(member)
    assert sum(totals.points_adjusted for totals in folded.quarter_hours.values()) == 500


def test_a_refund_of_spent_points_is_debt_that_later_earnings_repay() -> None:
    log = log_of(
        "m-d",
        make.purchase("o-1", 100000, at(2025, 3, 1)),  # 1000 points
        make.redeem("rd-1", 1000, at(2025, 3, 2)),
        make.refund("rf-1", "o-1", 100000, at(2025, 3, 3)),  # 1000 reversed, all spent
        make.purchase("o-2", 30000, at(2025, 3, 4)),  # 300 points repay 300 of the debt
    )
    folded = fold([decode(event.to_bytes()) for event in log], {})
    member = folded.members["m-d"]
    assert (member.available, member.debt, member.reversed) == (-700, 700, 1000)
    assert reconciles(member)


def test_a_debt_is_not_netted_against_the_points_of_others() -> None:
    """A at 1,000 and B at -300: the program owes 1,000 points, and B owes 300."""
    a = log_of("m-la", make.purchase("o-1", 100000, at(2025, 3, 1)))
    b = log_of(
        "m-lb",
        make.purchase("o-2", 30000, at(2025, 3, 1)),
        make.redeem("rd-1", 300, at(2025, 3, 2)),
        make.refund("rf-1", "o-2", 30000, at(2025, 3, 3)),
    )
    records = [decode(event.to_bytes()) for event in a + b]
    # B's refund in a later batch, from B's stored balance of 0.
    first = fold(records[: len(a) + len(b) - 2], {})
    later = fold(records[len(a) + len(b) - 2 :], {}, into=Folded(known={"m-lb"}, balances={"m-lb": 0}))
    liability = sum(t.points_liability for f in (first, later) for t in f.quarter_hours.values())
    outstanding = sum(t.points_outstanding for f in (first, later) for t in f.quarter_hours.values())
    assert (liability, outstanding) == (1000, 700)
