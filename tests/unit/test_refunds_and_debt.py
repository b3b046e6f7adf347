"""Refunds take back the points they earned; points already spent become a debt paid back first."""

from __future__ import annotations

import pytest

from schemas.events import (
    PointsAdjusted,
    PointsEarned,
    PointsExpired,
    PointsRestored,
    PointsReversed,
    PurchaseRefunded,
)
from schemas.rules import ProgramRules
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import InsufficientPoints, RefundExceedsPurchase, UnknownPurchase
from services.ledger.domain.lots import Lot
from tests.unit.ledger_fixtures import (
    LOT_1,
    RULES,
    TWO_LOTS,
    adjust,
    apply,
    at,
    cancel,
    given,
    lot,
    of_type,
    purchase,
    redeem,
    refund,
)


@pytest.mark.parametrize(
    ("refunds", "reversals"),
    [
        ([12990], [129]),
        ([6495, 6495], [64, 65]),
        ([3333, 3333, 6324], [33, 33, 63]),
        ([1, 12989], [0, 129]),
    ],
)
def test_partial_refunds_reverse_in_proportion_and_add_up_to_the_earning(
    refunds: list[int], reversals: list[int]
) -> None:
    account = given(purchase("o-1", 12990))
    reversed_points = []
    for n, amount in enumerate(refunds):
        account, events, _ = apply(account, refund(f"r-{n}", "o-1", amount, at(2025, 2, 1 + n)))
        reversed_points.append(sum(event.points for event in of_type(events, PointsReversed)))
    assert reversed_points == reversals
    assert (account.available, account.lots, account.reversed) == (0, (), 129)


@pytest.mark.parametrize(("first", "second"), [(0, 10001), (6000, 4001), (10000, 1)])
def test_a_refund_cannot_exceed_what_is_left_of_the_purchase(first: int, second: int) -> None:
    account = given(purchase("o-1", 10000), *([refund("r-1", "o-1", first)] if first else []))
    with pytest.raises(RefundExceedsPurchase):
        decide(account, refund("r-2", "o-1", second), RULES)


def test_a_refund_of_an_unknown_purchase_is_rejected() -> None:
    with pytest.raises(UnknownPurchase):
        decide(given(purchase("o-1", 10000)), refund("r-1", "o-9", 100), RULES)


def test_a_refund_of_spent_points_leaves_a_debt_that_the_next_earning_pays_first() -> None:
    account = given(purchase("o-1", 10000), redeem("x-1", 60))
    account, events, _ = apply(account, refund("r-1", "o-1", 10000, at(2025, 2, 1)))
    assert events == [
        PurchaseRefunded(refund_id="r-1", purchase_id="o-1", amount_minor=10000, refunded_total_minor=10000),
        PointsReversed(
            refund_id="r-1",
            purchase_id="o-1",
            points=100,
            from_lots=(lot("purchase:o-1@3", 40, LOT_1.expires_at),),
            debt_added=60,
        ),
    ]
    assert (account.available, account.debt) == (-60, 60)
    with pytest.raises(InsufficientPoints):
        decide(account, redeem("x-2", 1), RULES)
    account, events, _ = apply(account, purchase("o-2", 15000, at(2025, 3, 1)))
    assert [(e.points, e.debt_repaid) for e in of_type(events, PointsEarned)] == [(150, 60)]
    assert account.lots == (Lot("purchase:o-2@8", 90, at(2027, 3, 1)),)
    assert (account.available, account.debt) == (90, 0)


def test_points_cancelled_back_pay_a_debt_first() -> None:
    account = given(
        *TWO_LOTS,
        redeem("x-1", 100, at(2025, 3, 1)),
        redeem("x-2", 100, at(2025, 3, 1)),
        refund("r-2", "o-2", 10000, at(2025, 3, 2)),
    )
    assert (account.available, account.debt) == (-100, 100)
    account, events, _ = apply(account, cancel("x-1", at(2025, 4, 1)))
    assert of_type(events, PointsRestored) == [
        PointsRestored(redemption_id="x-1", points=100, to_lots=(), debt_repaid=100)
    ]
    assert (account.available, account.debt, account.lots) == (0, 0, ())


def test_points_of_an_expired_lot_do_not_pay_a_debt_when_cancelled_back() -> None:
    account = given(
        purchase("o-1", 10000),
        redeem("x-1", 100),
        purchase("o-2", 10000, at(2026, 6, 1)),
        redeem("x-2", 100, at(2026, 6, 1)),
        refund("r-2", "o-2", 10000, at(2026, 6, 2)),
    )
    assert account.debt == 100
    account, events, _ = apply(account, cancel("x-1", at(2027, 2, 1)))
    assert of_type(events, PointsExpired) == [PointsExpired(points=100, lots=(LOT_1,))]
    assert (account.available, account.debt, account.expired) == (-100, 100, 100)


def test_a_refund_in_the_return_window_takes_back_the_pending_points() -> None:
    rules = ProgramRules(pending_days=14)
    account = given(purchase("o-1", 10000), rules=rules)
    account, events, _ = apply(account, refund("r-1", "o-1", 10000, at(2025, 1, 20)), rules)
    (reversal,) = of_type(events, PointsReversed)
    assert reversal.from_pending == (lot("purchase:o-1@3", 100, at(2027, 1, 15)),)
    assert (account.available, account.pending_points, account.debt) == (0, 0, 0)


def test_a_positive_adjustment_pays_the_debt_first() -> None:
    account = given(purchase("o-1", 10000), redeem("x-1", 100), refund("r-1", "o-1", 10000))
    account, events, _ = apply(account, adjust("a-1", 30, at(2025, 2, 1)))
    assert [(e.points, e.debt_repaid) for e in of_type(events, PointsAdjusted)] == [(30, 30)]
    assert (account.available, account.debt, account.lots) == (-70, 70, ())
