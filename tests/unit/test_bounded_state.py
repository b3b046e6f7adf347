"""A member's state stays bounded: purchases past every window are forgotten, and refused; no
state record grows with the member's history."""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas.rules import ProgramRules
from services.ledger import state_records
from services.ledger.domain.account import Account
from services.ledger.domain.commands import Command, RecordPurchase
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import PurchaseTooOld, UnknownPurchase
from tests.unit.ledger_fixtures import MEMBER, T0, apply, at, given, purchase, redeem, refund, tick

RULES = ProgramRules()


def test_purchases_past_the_refund_and_qualifying_windows_are_forgotten() -> None:
    account = given(
        *(purchase(f"o-{month}", 1000, when=T0 + timedelta(days=31 * month)) for month in range(30))
    )
    assert len(account.purchases) <= 13
    assert "o-0" not in account.purchases and "o-29" in account.purchases


def test_a_forgotten_purchase_cannot_be_refunded_or_recorded_again() -> None:
    account = given(purchase("o-old", 1000, when=T0), purchase("o-new", 1000, when=at(2026, 6, 1)))
    with pytest.raises(UnknownPurchase, match="refund window"):
        decide(account, refund("r-1", "o-old", 500, when=at(2026, 6, 2)), RULES)
    with pytest.raises(PurchaseTooOld):
        decide(account, purchase("o-old", 1000, when=T0, command_id="c-again"), RULES)


def test_purchases_the_pending_tier_evaluation_needs_are_kept() -> None:
    # Silver at T0, evaluated at T0 + 12 months; a purchase after that date arrives before its tick.
    account = given(purchase("o-1", 200_000, when=T0), purchase("o-2", 100, when=T0 + timedelta(days=400)))
    assert "o-1" in account.purchases


def test_no_state_record_grows_with_a_member_s_history() -> None:
    """10,000 purchases, a day apart, spent every ten days, with monthly ticks: each command
    writes a few small records, however long the history."""
    account = Account.new(MEMBER)
    largest, written_by_purchases = 0, 0
    for n in range(10_000):
        when = T0 + timedelta(days=n)
        commands: list[Command] = [purchase(f"o-{n}", 20_000 + n % 7_000, when=when)]
        if n % 10 == 9:
            commands.append(redeem(f"r-{n}", 1_500, when=when))
        if n % 30 == 0:
            commands.append(tick(when))
        for command in commands:
            after, _, _ = apply(account, command)
            written = state_records.changes(account, after)
            largest = max([largest, *(len(key) + len(value or b"") for key, value in written)])
            if isinstance(command, RecordPurchase):
                written_by_purchases += len(written)
            account = after
    assert account.sequence > 20_000 and len(account.purchases) >= 365, "a long history, a year of it held"
    assert largest < 1_000, f"the largest record is {largest} bytes"
    assert written_by_purchases / 10_000 <= 6.5, (
        "a purchase writes its summary, purchase, lot, outcome, and what went (a purchase, outcomes "
        "or a redemption forgotten)"
    )
    assert len(account.outcomes) <= 40, "commands of the last 30 days"
    assert len(account.redemptions) <= 12, "redemptions whose points could still come back"
