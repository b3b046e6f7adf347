"""A member's state stays bounded: purchases past every window are forgotten, and refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas.rules import ProgramRules
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import PurchaseTooOld, UnknownPurchase
from tests.unit.ledger_fixtures import T0, at, given, purchase, refund

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
