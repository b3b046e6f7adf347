"""Earning points and moving between tiers: given an account / when a command / then these events."""

from __future__ import annotations

from datetime import datetime

import pytest

from schemas.events import (
    EarningRule,
    EventData,
    MemberEnrolled,
    PointsEarned,
    PurchaseRecorded,
    TierChanged,
    TierRetained,
)
from schemas.inbound import PurchaseItem
from schemas.rules import CategoryBonus, ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.commands import Command
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import UnknownMember, UnknownTier
from tests.unit.ledger_fixtures import (
    MEMBER,
    MICROSECOND,
    RULES,
    apply,
    at,
    given,
    item,
    of_type,
    purchase,
    refund,
    set_tier,
    tick,
)

BEAUTY_X2 = ProgramRules(category_bonuses=(CategoryBonus(category="beauty", multiplier="2"),))


def earned(events: list[EventData]) -> int:
    return sum(event.points for event in of_type(events, PointsEarned))


def test_a_first_purchase_enrols_the_member_and_earns_one_point_per_whole_cny() -> None:
    events = decide(Account.new(MEMBER), purchase("o-1", 12990), RULES)
    assert events == [
        MemberEnrolled(via="purchase", tier="regular"),
        # 12 months back is older than 365 days back (2024 was a leap year): the older one.
        PurchaseRecorded(
            purchase_id="o-1", amount_minor=12990, currency="CNY", forget_before=at(2024, 1, 15)
        ),
        PointsEarned(
            purchase_id="o-1",
            lot_id="purchase:o-1@3",
            points=129,
            expires_at=at(2027, 1, 15),
            rule=EarningRule(tier="regular", tier_multiplier="1.0", points_per_cny="1", rounding="floor"),
        ),
    ]


def test_a_known_member_is_not_enrolled_again() -> None:
    account = given(purchase("o-1", 10000))
    events = decide(account, purchase("o-2", 10000), RULES)
    assert [type(event) for event in events] == [PurchaseRecorded, PointsEarned]


@pytest.mark.parametrize(("amount_minor", "points"), [(12990, 129), (100, 1), (199, 1), (99, 0), (0, 0)])
def test_points_are_whole_cny_rounded_down(amount_minor: int, points: int) -> None:
    assert earned(decide(Account.new(MEMBER), purchase("o-1", amount_minor), RULES)) == points


@pytest.mark.parametrize(
    ("tier", "points"), [("regular", 129), ("silver", 155), ("gold", 194), ("platinum", 259)]
)
def test_the_tier_multiplier_applies_to_the_earning(tier: str, points: int) -> None:
    account = given(purchase("o-1", 100), set_tier(tier))
    assert earned(decide(account, purchase("o-2", 12990), RULES)) == points


def test_the_purchase_that_promotes_earns_at_the_tier_in_force_before_it() -> None:
    account, events, _ = apply(Account.new(MEMBER), purchase("o-1", 200000))
    assert earned(events) == 2000
    assert account.tier == "silver"
    assert earned(decide(account, purchase("o-2", 10000), RULES)) == 120


@pytest.mark.parametrize(
    ("items", "amount_minor", "points"),
    [
        ((), 10000, 100),
        ((item("beauty", "50.00"), item("food", "50.00", sku="sku-2")), 10000, 150),
        ((item("beauty", "30.00"),), 10000, 130),  # spend not covered by items earns the base
        ((item("beauty", "100.00"), item("food", "100.00", sku="sku-2")), 15000, 225),  # basket discount
    ],
)
def test_a_category_bonus_doubles_the_points_of_its_items(
    items: tuple[PurchaseItem, ...], amount_minor: int, points: int
) -> None:
    events = decide(Account.new(MEMBER), purchase("o-1", amount_minor, items=items), BEAUTY_X2)
    assert earned(events) == points


def test_a_category_bonus_is_recorded_in_the_earning_rule_and_stacks_with_the_tier() -> None:
    account = given(purchase("o-1", 100), set_tier("silver"), rules=BEAUTY_X2)
    events = decide(account, purchase("o-2", 10000, items=[item("beauty", "100.00")]), BEAUTY_X2)
    (earning,) = of_type(events, PointsEarned)
    assert earning.points == 240
    assert earning.rule.category_bonuses == {"beauty": "2"}


@pytest.mark.parametrize(
    ("rounding", "amount_minor", "points"),
    [("floor", 12950, 129), ("half_up", 12950, 130), ("half_up", 12949, 129), ("half_up", 12990, 130)],
)
def test_rounding_follows_the_rules(rounding: str, amount_minor: int, points: int) -> None:
    rules = ProgramRules(rounding=rounding)
    assert earned(decide(Account.new(MEMBER), purchase("o-1", amount_minor), rules)) == points


@pytest.mark.parametrize(
    ("amount_minor", "tier"),
    [(199999, "regular"), (200000, "silver"), (799999, "silver"), (800000, "gold"), (2600000, "gold")],
)
def test_a_purchase_promotes_as_soon_as_the_window_qualifies(amount_minor: int, tier: str) -> None:
    account, events, _ = apply(Account.new(MEMBER), purchase("o-1", amount_minor))
    assert account.tier == tier
    promotion = TierChanged(
        from_tier="regular",
        to_tier=tier,
        reason="promotion",
        qualifying_spend_minor=amount_minor,
        purchase_count=1,
        next_evaluation_at=at(2026, 1, 15),
    )
    assert of_type(events, TierChanged) == ([] if tier == "regular" else [promotion])


def test_spend_adds_up_in_the_window() -> None:
    account = given(purchase("o-1", 100000))
    (change,) = of_type(decide(account, purchase("o-2", 100000, at(2025, 6, 1)), RULES), TierChanged)
    assert (change.to_tier, change.qualifying_spend_minor, change.purchase_count) == ("silver", 200000, 2)


def test_platinum_needs_twelve_purchases_besides_the_spend() -> None:
    eleven = [purchase(f"o-{n}", 230000, at(2025, 1, 15 + n)) for n in range(11)]
    account = given(*eleven)
    assert account.tier == "gold"
    (change,) = of_type(decide(account, purchase("o-12", 100, at(2025, 2, 1)), RULES), TierChanged)
    assert (change.from_tier, change.to_tier, change.reason) == ("gold", "platinum", "promotion")
    assert (change.qualifying_spend_minor, change.purchase_count) == (11 * 230000 + 100, 12)


@pytest.mark.parametrize(("refunded", "tier"), [(0, "silver"), (10000, "silver"), (10001, "regular")])
def test_refunded_spend_does_not_qualify(refunded: int, tier: str) -> None:
    commands = [purchase("o-1", 150000)] + ([refund("r-1", "o-1", refunded)] if refunded else [])
    account, _, _ = apply(given(*commands), purchase("o-2", 60000, at(2025, 3, 1)))
    assert account.tier == tier


@pytest.mark.parametrize(
    ("second_at", "tier"),
    [
        (at(2025, 12, 15), "silver"),
        (at(2026, 1, 15) - MICROSECOND, "silver"),
        (at(2026, 1, 15), "regular"),  # the window is (now - 12 months, now]
        (at(2026, 2, 15), "regular"),
    ],
)
def test_purchases_older_than_the_window_do_not_count(second_at: datetime, tier: str) -> None:
    account, _, _ = apply(given(purchase("o-1", 150000)), purchase("o-2", 60000, second_at))
    assert account.tier == tier


def test_demotion_waits_for_the_evaluation_date_and_goes_one_tier_at_a_time() -> None:
    account = given(purchase("o-1", 800000), refund("r-1", "o-1", 800000, at(2025, 2, 1)))
    assert account.tier == "gold"
    assert decide(account, tick(at(2026, 1, 15) - MICROSECOND), RULES) == []
    account, events, _ = apply(account, tick(at(2026, 1, 15)))
    assert events == [
        TierChanged(
            from_tier="gold",
            to_tier="silver",
            reason="demotion",
            qualifying_spend_minor=0,
            purchase_count=0,
            next_evaluation_at=at(2027, 1, 15),
        )
    ]
    assert decide(account, tick(at(2027, 1, 15) - MICROSECOND), RULES) == []
    account, events, _ = apply(account, tick(at(2027, 1, 15)))
    assert [(e.from_tier, e.to_tier, e.reason) for e in events] == [("silver", "regular", "demotion")]
    assert account.tier == "regular"


def test_a_member_who_still_qualifies_at_the_evaluation_date_retains_the_tier() -> None:
    account = given(purchase("o-1", 800000), purchase("o-2", 800000, at(2025, 7, 15)))
    account, events, _ = apply(account, tick(at(2026, 1, 15)))
    assert events == [
        TierRetained(
            tier="gold", qualifying_spend_minor=800000, purchase_count=1, next_evaluation_at=at(2027, 1, 15)
        )
    ]
    assert (account.tier, account.next_evaluation_at) == ("gold", at(2027, 1, 15))


@pytest.mark.parametrize(
    "back", [tick(at(2026, 1, 15)), set_tier("regular", at(2025, 6, 1))], ids=["demoted", "set by hand"]
)
def test_a_member_back_at_the_entry_tier_is_not_evaluated_again(back: Command) -> None:
    account = given(purchase("o-1", 200000), refund("r-1", "o-1", 200000, at(2025, 2, 1)), back)
    # A due date left in the past would have the scheduler tick this member on every pass.
    assert (account.tier, account.next_evaluation_at, account.next_due()) == ("regular", None, None)


def test_an_operator_sets_a_tier_by_hand_with_a_reason() -> None:
    account = given(purchase("o-1", 10000))
    command = set_tier("gold", at(2025, 3, 1), reason="compensation for a lost parcel", actor="key-7")
    account, events, _ = apply(account, command)
    assert events == [
        TierChanged(
            from_tier="regular",
            to_tier="gold",
            reason="manual",
            qualifying_spend_minor=10000,
            purchase_count=1,
            next_evaluation_at=at(2026, 3, 1),
            note="compensation for a lost parcel",
            actor="key-7",
        )
    ]
    assert decide(account, set_tier("gold", at(2025, 4, 1)), RULES) == []


def test_an_unknown_tier_is_rejected() -> None:
    with pytest.raises(UnknownTier):
        decide(given(purchase("o-1", 10000)), set_tier("diamond"), RULES)


def test_the_tier_of_an_unknown_member_cannot_be_set() -> None:
    with pytest.raises(UnknownMember):
        decide(Account.new(MEMBER), set_tier("gold"), RULES)


def test_a_tick_before_the_evaluation_date_changes_nothing() -> None:
    account = given(purchase("o-1", 800000))
    assert decide(account, tick(at(2025, 7, 15)), RULES) == []
