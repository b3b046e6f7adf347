"""Late, early, repeated, reused and absurd inputs (issue 14): none of them corrupts a balance."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from schemas.canonical import canonical_json
from schemas.events import (
    EarningRule,
    PointsEarned,
    PointsExpired,
    PointsMatured,
    PointsRedeemed,
    PointsReversed,
    PurchaseRecorded,
    TierChanged,
)
from schemas.rules import CategoryBonus, ProgramRules
from services.ledger.domain.chain import seal
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import (
    DuplicatePurchase,
    InsufficientPoints,
    PurchaseInFuture,
    RefundInFuture,
    RefundWindowClosed,
)
from services.projector.fold import Decoded, fold
from tests.unit.ledger_fixtures import (
    MEMBER,
    RULES,
    adjust,
    apply,
    at,
    given,
    item,
    log_of,
    lot,
    of_type,
    purchase,
    redeem,
    refund,
    tick,
)

# ord-1 for 1,000 CNY, then a purchase after which the ledger forgets ord-1, then ord-1 again.
REUSED = (
    purchase("ord-1", 100000, at(2025, 1, 10)),
    purchase("ord-2", 10000, at(2026, 2, 1)),
    purchase("ord-1", 50000, at(2026, 3, 1), command_id="purchase:ord-1:again"),
)


def test_a_reused_purchase_id_opens_its_own_lot_with_its_own_expiry() -> None:
    account = given(*REUSED)
    assert [(lot.points, lot.expires_at) for lot in account.lots] == [
        (1000, at(2027, 1, 10)),
        (100, at(2028, 2, 1)),
        (500, at(2028, 3, 1)),
    ]
    assert len({lot.lot_id for lot in account.lots}) == 3
    first = account.lots[0]
    account, events, _ = apply(account, tick(at(2027, 1, 11)))
    assert of_type(events, PointsExpired) == [
        PointsExpired(points=1000, lots=(lot(first.lot_id, 1000, at(2027, 1, 10)),))
    ]
    assert account.available == 600


def test_the_read_side_keeps_the_lots_of_a_reused_purchase_id_apart() -> None:
    log = log_of(MEMBER, *REUSED, tick(at(2027, 1, 11)))
    folded = fold([Decoded(event, event.to_bytes().decode()) for event in log], {})
    assert sorted((lot.points, lot.expires_at) for lot in folded.lots.values()) == [
        (0, None),
        (100, at(2028, 2, 1)),
        (500, at(2028, 3, 1)),
    ]
    assert folded.members[MEMBER].available == 600


def test_two_earnings_under_one_purchase_id_mature_in_the_same_tick() -> None:
    rules = ProgramRules(pending_days=7, refund_window_days=30, qualifying_window_months=1)
    account = given(
        purchase("ord-1", 10000, at(2025, 1, 10)),
        purchase("ord-2", 10000, at(2025, 3, 1)),
        purchase("ord-1", 20000, at(2025, 3, 2), command_id="purchase:ord-1:again"),
        rules=rules,
    )
    assert len(account.pending) == 3
    account, _, _ = apply(account, tick(at(2025, 3, 20)), rules)
    assert (account.pending_points, account.available) == (0, 400)


def test_a_purchase_id_still_remembered_is_a_retry_with_the_same_facts_and_refused_with_others() -> None:
    account = given(purchase("ord-1", 10000))
    assert decide(account, purchase("ord-1", 10000, command_id="retry"), RULES) == []
    with pytest.raises(DuplicatePurchase):
        decide(account, purchase("ord-1", 5000, command_id="other"), RULES)
    with pytest.raises(DuplicatePurchase):
        decide(account, purchase("ord-1", 10000, at(2025, 2, 1), command_id="other"), RULES)


def test_a_purchase_dated_past_the_tolerance_after_it_arrived_is_refused() -> None:
    arrived = at(2026, 11, 22)
    with pytest.raises(PurchaseInFuture):
        decide(given(), purchase("ord-9", 10000, at(2036, 11, 22), received=arrived), RULES)
    later = purchase("ord-9", 10000, arrived + timedelta(hours=24), received=arrived)
    assert of_type(decide(given(), later, RULES), PurchaseRecorded)
    strict = ProgramRules(future_tolerance_hours=0)
    with pytest.raises(PurchaseInFuture):
        decide(given(), later, strict)


def test_one_purchase_dated_ahead_moves_no_horizon_for_the_others() -> None:
    arrived = at(2026, 11, 22)
    account = given(
        purchase("ord-1", 10000, at(2026, 6, 1)),
        purchase("ord-2", 10000, arrived + timedelta(hours=20), received=arrived),
        purchase("ord-3", 10000, at(2026, 1, 5), received=arrived),
    )
    assert set(account.purchases) == {"ord-1", "ord-2", "ord-3"}
    _, events, _ = apply(account, refund("rf-1", "ord-1", 10000, arrived))
    assert of_type(events, PointsReversed)[0].points == 100


def test_a_refund_past_the_refund_window_is_refused() -> None:
    rules = ProgramRules(refund_window_days=30)
    account = given(purchase("ord-1", 10000), rules=rules)
    assert of_type(decide(account, refund("rf-1", "ord-1", 1000, at(2025, 2, 14)), rules), PointsReversed)
    with pytest.raises(RefundWindowClosed):
        decide(account, refund("rf-1", "ord-1", 1000, at(2025, 2, 15)), rules)


def test_a_refund_never_reverses_points_that_already_expired() -> None:
    rules = ProgramRules(expiry_months=3)
    account = given(
        purchase("ord-1", 100000),
        tick(at(2025, 4, 15)),
        adjust("goodwill", 50, at(2025, 4, 20)),
        rules=rules,
    )
    assert (account.available, account.expired) == (50, 1000)
    account, events, _ = apply(account, refund("rf-1", "ord-1", 100000, at(2025, 5, 1)), rules)
    assert of_type(events, PointsReversed) == []
    assert (account.available, account.debt) == (50, 0)


def test_a_refund_reverses_only_the_live_share_of_a_partly_expired_purchase() -> None:
    rules = ProgramRules(expiry_months=3)
    account = given(
        purchase("ord-1", 100000),
        purchase("ord-2", 60000, at(2025, 3, 1)),
        redeem("x-1", 1200, at(2025, 3, 2)),  # all of ord-1's lot and 200 of ord-2's
        tick(at(2025, 6, 1)),  # ord-2's remaining 400 expire
        rules=rules,
    )
    assert (account.available, account.expired) == (0, 400)
    account, events, _ = apply(account, refund("rf-1", "ord-2", 60000, at(2025, 6, 2)), rules)
    assert of_type(events, PointsReversed)[0].points == 200
    assert account.debt == 200


def test_an_expiry_the_clock_has_not_recorded_yet_is_not_taken_back_either() -> None:
    rules = ProgramRules(expiry_months=3)
    account = given(purchase("ord-1", 100000), rules=rules)
    account, events, _ = apply(account, refund("rf-1", "ord-1", 100000, at(2025, 5, 1)), rules)
    assert [type(event) for event in events][:1] == [PointsExpired]
    assert of_type(events, PointsReversed) == []
    assert (account.available, account.expired, account.debt) == (0, 1000, 0)


def test_points_past_their_expiry_cannot_be_spent_before_the_tick() -> None:
    account = given(purchase("ord-1", 10000), purchase("ord-2", 5000, at(2025, 6, 1)))
    expired_at = at(2027, 1, 15)
    with pytest.raises(InsufficientPoints):
        decide(account, redeem("x-1", 100, expired_at), RULES)
    with pytest.raises(InsufficientPoints):
        decide(account, adjust("a-1", -100, expired_at), RULES)
    account, events, _ = apply(account, redeem("x-1", 50, expired_at))
    assert of_type(events, PointsExpired)[0].points == 100
    (redeemed,) = of_type(events, PointsRedeemed)
    assert [item.expires_at for item in redeemed.from_lots] == [at(2027, 6, 1)]
    assert (account.available, account.expired) == (0, 100)


def test_a_refund_dated_past_the_tolerance_after_it_arrived_is_refused_and_expires_nothing() -> None:
    account = given(purchase("ord-1", 100000), purchase("ord-2", 10000, at(2026, 6, 1)))
    ahead = refund("rf-1", "ord-2", 5000, at(2027, 2, 1), received=at(2026, 6, 2))
    with pytest.raises(RefundInFuture):
        decide(account, ahead, RULES)
    within = refund("rf-1", "ord-2", 5000, at(2026, 6, 3), received=at(2026, 6, 2))
    account, _, _ = apply(account, within)
    assert (account.available, account.expired) == (1050, 0)


# 100 points earned, spent, then taken back by a full refund: a debt of 100.
IN_DEBT = (
    purchase("ord-1", 10000),
    redeem("x-1", 100, at(2025, 1, 16)),
    refund("rf-1", "ord-1", 10000, at(2025, 1, 17)),
)


def test_a_late_purchase_past_its_expiry_on_arrival_repays_no_debt() -> None:
    rules = ProgramRules(expiry_months=3)
    account = given(*IN_DEBT, rules=rules)
    assert account.debt == 100
    late = purchase("ord-2", 5000, at(2024, 9, 1), received=at(2025, 2, 10))
    account, events, _ = apply(account, late, rules)
    assert of_type(events, PointsEarned)[0].debt_repaid == 0
    account, _, _ = apply(account, tick(at(2025, 2, 11)), rules)
    assert (account.available, account.expired, account.debt) == (-100, 50, 100)


def test_points_maturing_after_their_expiry_repay_no_debt() -> None:
    rules = ProgramRules(pending_days=14, expiry_months=1)
    account = given(
        purchase("ord-1", 10000),
        tick(at(2025, 1, 30)),
        *IN_DEBT[1:],
        purchase("ord-2", 5000, at(2025, 1, 31)),
        rules=rules,
    )
    assert (account.debt, account.pending_points) == (100, 50)
    account, events, _ = apply(account, tick(at(2025, 3, 10)), rules)  # the ticks in between were missed
    assert of_type(events, PointsMatured)[0].debt_repaid == 0
    assert (account.available, account.expired, account.debt) == (-100, 50, 100)


BEAUTY_X2 = ProgramRules(category_bonuses=(CategoryBonus(category="beauty", multiplier="2"),))
MIXED = purchase("ord-1", 20000, items=[item("beauty", "100.00", "b-1"), item("home", "100.00", "h-1")])


def test_a_refund_that_names_its_items_reverses_what_they_earned() -> None:
    account = given(MIXED, rules=BEAUTY_X2)
    assert account.available == 300
    returned = refund("rf-1", "ord-1", 10000, at(2025, 1, 20), items=[item("beauty", "100.00", "b-1")])
    account, events, _ = apply(account, returned, BEAUTY_X2)
    assert of_type(events, PointsReversed)[0].points == 200
    account, events, _ = apply(account, refund("rf-2", "ord-1", 10000, at(2025, 1, 21)), BEAUTY_X2)
    assert of_type(events, PointsReversed)[0].points == 100
    assert account.available == 0


def test_a_refund_without_items_reverses_its_share_of_the_amount() -> None:
    account = given(MIXED, rules=BEAUTY_X2)
    _, events, _ = apply(account, refund("rf-1", "ord-1", 10000, at(2025, 1, 20)), BEAUTY_X2)
    assert of_type(events, PointsReversed)[0].points == 150


def test_a_purchase_that_arrives_after_later_ones_still_promotes() -> None:
    june = at(2025, 6, 1)
    account = given(purchase("ord-june", 100000, june))
    late = purchase("ord-march", 110000, at(2025, 3, 1), received=june + timedelta(days=2))
    account, events, _ = apply(account, late)
    (promotion,) = of_type(events, TierChanged)
    assert (promotion.to_tier, promotion.qualifying_spend_minor) == ("silver", 210000)
    assert account.tier == "silver"


def test_a_log_from_before_every_earning_had_its_own_lot_still_reads() -> None:
    """Two pending lots of one name, as the ledger once wrote them, mature one at a time."""
    rules = ProgramRules(pending_days=7)
    old_name = "purchase:ord-1"
    account = given(purchase("ord-0", 50, at(2025, 1, 1)), rules=rules)  # earns nothing itself
    for n, when in enumerate((at(2025, 1, 10), at(2025, 1, 11))):
        earned = PointsEarned(
            purchase_id="ord-0",
            lot_id=old_name,
            points=100,
            expires_at=at(2027, 1, 10),
            matures_at=when + timedelta(days=7),
            rule=EarningRule(tier="regular", tier_multiplier="1.0", points_per_cny="1", rounding="floor"),
        )
        account, _ = seal(
            account, purchase(f"old-{n}", 10000, when, command_id=f"old-{n}"), [earned], 1, when
        )
    account, events, _ = apply(account, tick(at(2025, 1, 20)), rules)
    assert [event.lot_id for event in of_type(events, PointsMatured)] == [old_name, old_name]
    assert (account.pending_points, account.available) == (0, 200)


def test_a_rule_added_later_changes_the_fingerprint_only_when_set_away_from_its_default() -> None:
    """An upgraded ledger with the same rules file is not taken for a change of rules."""
    as_before = {k: v for k, v in RULES.model_dump(mode="json").items() if k not in ProgramRules.ADDED_LATER}
    assert RULES.fingerprint() == hashlib.sha256(canonical_json(as_before)).hexdigest()
    assert ProgramRules(future_tolerance_hours=1).fingerprint() != RULES.fingerprint()
