"""The projector's fold applies each event once and skips what it cannot read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import RecordPurchase
from services.ledger.domain.decide import decide
from services.projector.fold import MALFORMED, UNKNOWN_TYPE, decode, fold

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
