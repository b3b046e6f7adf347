"""Points from earning to redemption, refund, cancellation, expiry and adjustment."""

from __future__ import annotations

from datetime import datetime

import pytest

from schemas.events import (
    PointsAdjusted,
    PointsExpired,
    PointsMatured,
    PointsRedeemed,
    PointsRestored,
    ProgramRulesChanged,
    RedemptionCancelled,
)
from schemas.rules import ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.commands import Command
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import (
    InsufficientPoints,
    RulesChangedWithoutNewVersion,
    UnknownRedemption,
)
from services.ledger.domain.lots import Lot
from tests.unit.ledger_fixtures import (
    LOT_1,
    LOT_2,
    MICROSECOND,
    RULES,
    T0,
    TWO_LOTS,
    adjust,
    apply,
    at,
    cancel,
    given,
    lot,
    of_type,
    purchase,
    record_rules,
    redeem,
    refund,
    tick,
)


def test_a_redemption_takes_the_oldest_lots_first() -> None:
    account = given(*TWO_LOTS, purchase("o-3", 30000, at(2025, 3, 15)))
    account, events, _ = apply(account, redeem("x-1", 150, at(2025, 4, 1)))
    assert events == [
        PointsRedeemed(
            redemption_id="x-1",
            points=150,
            reward="voucher",
            value_minor=1500,
            currency="CNY",
            from_lots=(LOT_1, LOT_2.model_copy(update={"points": 50})),
        )
    ]
    assert [(held.lot_id, held.points) for held in account.lots] == [
        ("purchase:o-2@5", 50),
        ("purchase:o-3@7", 300),
    ]


def test_a_redemption_can_take_every_available_point() -> None:
    assert apply(given(*TWO_LOTS), redeem("x-1", 200))[0].available == 0


@pytest.mark.parametrize("points", [201, 10_000])
def test_a_redemption_never_overdraws(points: int) -> None:
    with pytest.raises(InsufficientPoints):
        decide(given(*TWO_LOTS), redeem("x-1", points), RULES)


@pytest.mark.parametrize(
    ("done", "again"),
    [
        (purchase("o-1", 10000), purchase("o-1", 10000, command_id="other")),
        (refund("r-1", "o-1", 1000), refund("r-1", "o-1", 2000, command_id="other")),
        (redeem("x-1", 10), redeem("x-1", 20, command_id="other")),
        (adjust("a-1", 5), adjust("a-1", -5, command_id="other")),
        (purchase("o-2", 10000), purchase("o-3", 10000, command_id="purchase:o-2")),
        (tick(at(2027, 1, 15)), tick(at(2027, 2, 15), command_id="tick:2027-01-15T10:00:00+00:00")),
    ],
    ids=["purchase_id", "refund_id", "redemption_id", "adjustment_id", "command_id", "tick command_id"],
)
def test_a_command_already_decided_decides_nothing(done: Command, again: Command) -> None:
    account = given(*TWO_LOTS, done)
    assert decide(account, again, RULES) == []
    assert apply(account, again)[0] == account


def test_a_cancelled_redemption_goes_back_to_its_own_lots_and_expiry() -> None:
    before = given(*TWO_LOTS)
    account = given(*TWO_LOTS, redeem("x-1", 150, at(2025, 3, 1)))
    account, events, _ = apply(account, cancel("x-1", at(2025, 4, 1)))
    assert events == [
        RedemptionCancelled(redemption_id="x-1", points=150),
        PointsRestored(
            redemption_id="x-1", points=150, to_lots=(LOT_1, LOT_2.model_copy(update={"points": 50}))
        ),
    ]
    assert account.lots == before.lots
    assert [held.expires_at for held in account.lots] == [at(2027, 1, 15), at(2027, 2, 15)]
    assert (account.available, account.redeemed) == (200, 0)


def test_points_cancelled_back_to_an_expired_lot_expire_at_once() -> None:
    account = given(*TWO_LOTS, redeem("x-1", 150, at(2025, 3, 1)), tick(at(2027, 1, 15)))
    account, events, _ = apply(account, cancel("x-1", at(2027, 1, 20)))
    assert events == [
        RedemptionCancelled(redemption_id="x-1", points=150),
        PointsRestored(
            redemption_id="x-1", points=150, to_lots=(LOT_1, LOT_2.model_copy(update={"points": 50}))
        ),
        PointsExpired(points=100, lots=(LOT_1,)),
    ]
    assert account.lots == (Lot("purchase:o-2@5", 100, at(2027, 2, 15)),)
    assert (account.available, account.expired) == (100, 100)


def test_a_redemption_is_cancelled_once() -> None:
    account = given(*TWO_LOTS, redeem("x-1", 150), cancel("x-1"))
    assert decide(account, cancel("x-1", command_id="cancel-again"), RULES) == []


def test_an_unknown_redemption_cannot_be_cancelled() -> None:
    with pytest.raises(UnknownRedemption):
        decide(given(*TWO_LOTS), cancel("x-9"), RULES)


@pytest.mark.parametrize(
    ("earned_at", "expires_at"),
    [(T0, at(2027, 1, 15)), (at(2024, 1, 31), at(2026, 1, 31)), (at(2024, 2, 29), at(2026, 2, 28))],
)
def test_a_lot_expires_at_the_instant_24_months_after_it_was_earned(
    earned_at: datetime, expires_at: datetime
) -> None:
    account = given(purchase("o-1", 10000, earned_at))
    assert decide(account, tick(expires_at - MICROSECOND), RULES) == []
    account, events, _ = apply(account, tick(expires_at))
    assert events == [PointsExpired(points=100, lots=(lot("purchase:o-1@3", 100, expires_at),))]
    assert (account.available, account.expired, account.lots) == (0, 100, ())


def test_pending_points_mature_on_a_tick_and_cannot_be_redeemed_before() -> None:
    rules = ProgramRules(pending_days=14)
    account = given(purchase("o-1", 10000), rules=rules)
    assert (account.available, account.pending_points) == (0, 100)
    with pytest.raises(InsufficientPoints):
        decide(account, redeem("x-1", 1, at(2025, 1, 20)), rules)
    assert decide(account, tick(at(2025, 1, 29) - MICROSECOND), rules) == []
    account, events, _ = apply(account, tick(at(2025, 1, 29)), rules)
    assert events == [PointsMatured(lot_id="purchase:o-1@3", points=100)]
    assert (account.available, account.pending_points) == (100, 0)
    assert apply(account, redeem("x-1", 100, at(2025, 1, 29)), rules)[0].available == 0


def test_a_positive_adjustment_opens_its_own_lot() -> None:
    account, events, _ = apply(given(*TWO_LOTS), adjust("a-1", 50, at(2025, 3, 1), reason="late delivery"))
    assert events == [
        PointsAdjusted(
            adjustment_id="a-1",
            points=50,
            reason="late delivery",
            actor="key-ops",
            lot_id="adjustment:a-1@6",
            expires_at=at(2027, 3, 1),
        )
    ]
    assert account.available == 250


@pytest.mark.parametrize(("points", "taken"), [(-30, [30]), (-130, [100, 30]), (-200, [100, 100])])
def test_a_negative_adjustment_takes_the_oldest_points(points: int, taken: list[int]) -> None:
    account, events, _ = apply(given(*TWO_LOTS), adjust("a-1", points))
    (adjustment,) = of_type(events, PointsAdjusted)
    assert [(item.lot_id, item.points) for item in adjustment.from_lots] == list(
        zip(["purchase:o-1@3", "purchase:o-2@5"], taken, strict=False)
    )
    assert account.available == 200 + points


def test_a_negative_adjustment_never_overdraws() -> None:
    with pytest.raises(InsufficientPoints):
        decide(given(*TWO_LOTS), adjust("a-1", -201), RULES)


def test_rules_are_recorded_once_per_version() -> None:
    program = Account.new("program")
    program, events, _ = apply(program, record_rules())
    assert events == [
        ProgramRulesChanged(version=1, fingerprint=RULES.fingerprint(), rules=RULES.model_dump(mode="json"))
    ]
    assert decide(program, record_rules(command_id="rules:again"), RULES) == []
    changed = ProgramRules(pending_days=14)
    with pytest.raises(RulesChangedWithoutNewVersion):
        decide(program, record_rules(command_id="rules:2"), changed)
    newer = ProgramRules(version=2, pending_days=14)
    assert [event.version for event in decide(program, record_rules(command_id="rules:2"), newer)] == [2]
