"""Invariants of one member's ledger over random sequences of commands, checked after every step."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from schemas.canonical import GENESIS_HASH
from schemas.events import Event, EventData, LotPoints
from schemas.money import from_minor
from schemas.rules import CategoryBonus, ProgramRules
from services.ledger import state_records
from services.ledger.domain.account import Account, evolve
from services.ledger.domain.chain import seal, seal_with_bytes
from services.ledger.domain.commands import Command, RefundPurchase
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import (
    InsufficientPoints,
    LedgerError,
    RefundExceedsPurchase,
    RefundWindowClosed,
    UnknownMember,
    UnknownPurchase,
    UnknownRedemption,
)
from services.ledger.domain.lots import Lot, add, oldest_first, opened
from services.ledger.domain.memory import REMEMBERED_FOR
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import MEMBER, T0
from tests.unit.legacy_state import second_layout

RULE_SETS = [
    ProgramRules(),
    ProgramRules(pending_days=14, category_bonuses=(CategoryBonus(category="beauty", multiplier="2"),)),
    ProgramRules(rounding="half_up", expiry_months=3, evaluation_months=2),
]
# Shares of what is there (refundable spend, available points), a little over 100% to be refused.
PERCENTS = st.one_of(st.just(100), st.integers(1, 120))
AMOUNTS = st.one_of(st.integers(0, 50_000), st.integers(50_000, 1_200_000))
ACTIONS = st.one_of(
    st.tuples(st.just("purchase"), AMOUNTS, st.booleans()),
    st.tuples(st.just("refund"), st.integers(0, 99), PERCENTS),
    st.tuples(st.just("redeem"), PERCENTS),
    st.tuples(st.just("cancel"), st.integers(0, 99)),
    st.tuples(st.just("adjust"), st.integers(1, 1500)),
    st.tuples(st.just("adjust"), PERCENTS.map(lambda percent: -percent)),
    st.tuples(st.just("tick"), st.integers(0, 400)),
    st.tuples(st.just("set_tier"), st.sampled_from(["regular", "silver", "gold", "platinum"])),
    st.tuples(st.just("repeat"), st.integers(0, 99)),
)
STEPS = st.lists(st.tuples(st.integers(0, 30), ACTIONS), min_size=8, max_size=50)


class Member:
    """One member's account driven as the processor drives it, with its sealed log."""

    def __init__(self, rules: ProgramRules) -> None:
        self.rules = rules
        self.account = Account.new(MEMBER)
        self.log: list[Event] = []
        self.records: dict[str, bytes | None] = {}
        self.applied: list[tuple[datetime, Command]] = []
        self.now = T0

    def accept(self, command: Command) -> list[EventData]:
        before = self.account
        decided = decide(before, command, self.rules)
        after, events, raw = seal_with_bytes(before, command, decided, self.rules.version, self.now)
        assert raw == [event.to_bytes() for event in events], "what the processor sends is the event"
        assert reduce(evolve, events, before) == after
        assert decide(after, command, self.rules) == [], "a command is decided once"
        if not isinstance(command, RefundPurchase):
            assert after.debt <= before.debt, "only a reversal puts the balance into debt"
        self.records.update(state_records.changes(before, after))
        assert state_records.assemble(MEMBER, _live(self.records)) == after, "the records say what changed"
        self.account = after
        self.log.extend(events)
        if decided:
            self.applied.append((self.now, command))
        check_account(after, self.rules)
        return decided

    def reject(self, command: Command, error: type[LedgerError]) -> None:
        with pytest.raises(error):
            decide(self.account, command, self.rules)

    def purchase(self, cid: str, amount: int, beauty: bool) -> None:
        items = [make.item("beauty", from_minor(amount // 2))] if beauty else []
        self.accept(make.purchase(f"o-{cid}", amount, self.now, items, command_id=cid))

    def refund(self, cid: str, pick: int, percent: int) -> None:
        if not self.account.purchases:
            return self.reject(make.refund(cid, "o-none", 100, self.now, cid), UnknownPurchase)
        purchase_id = sorted(self.account.purchases)[pick % len(self.account.purchases)]
        bought = self.account.purchases[purchase_id]
        refundable = bought.amount_minor - bought.refunded_minor
        command = make.refund(cid, purchase_id, max(1, refundable * percent // 100), self.now, cid)
        if self.now > bought.occurred_at + timedelta(days=self.rules.refund_window_days):
            return self.reject(command, RefundWindowClosed)
        if command.amount_minor > refundable:
            return self.reject(command, RefundExceedsPurchase)
        self.accept(command)
        after = self.account.purchases[purchase_id]
        assert bought.points_reversed <= after.points_reversed <= after.points_earned
        assert all(held.expires_at > self.now for held in self.account.lots), "nothing lapsed is taken back"

    def spendable(self) -> int:
        """The available points that are not past their expiry, recorded or not."""
        return (
            sum(held.points for held in self.account.lots if held.expires_at > self.now) - self.account.debt
        )

    def redeem(self, cid: str, percent: int) -> None:
        available = self.spendable()
        points = max(1, available * percent // 100)
        command = make.redeem(cid, points, self.now, cid)
        if not self.account.enrolled:
            return self.reject(command, UnknownMember)
        if points > available:
            return self.reject(command, InsufficientPoints)
        self.accept(command)
        assert self.account.available == available - points >= 0

    def cancel(self, cid: str, pick: int) -> None:
        if not self.account.redemptions:
            return self.reject(make.cancel("x-none", self.now, cid), UnknownRedemption)
        redemption_id = sorted(self.account.redemptions)[pick % len(self.account.redemptions)]
        redemption = self.account.redemptions[redemption_id]
        redeemed = self.account.redeemed
        decided = self.accept(make.cancel(redemption_id, self.now, cid))
        if redemption.cancelled:
            assert decided == []
        else:
            assert self.account.redeemed == redeemed - redemption.points

    def adjust(self, cid: str, points_or_percent: int) -> None:
        points = points_or_percent
        available = self.spendable()
        if points < 0:  # a share of the available points, to be taken away
            points = -max(1, available * -points // 100)
        command = make.adjust(cid, points, self.now, command_id=cid)
        if not self.account.enrolled:
            return self.reject(command, UnknownMember)
        if points < 0 and -points > available:
            return self.reject(command, InsufficientPoints)
        self.accept(command)
        if points < 0:
            assert self.account.available == available + points >= 0

    def tick(self, cid: str, days: int) -> None:
        self.now += timedelta(days=days)
        self.accept(make.tick(self.now, cid))
        assert all(held.expires_at > self.now for held in self.account.lots)
        assert all(held.matures_at > self.now for held in self.account.pending)

    def set_tier(self, cid: str, tier: str) -> None:
        command = make.set_tier(tier, self.now, command_id=cid)
        if not self.account.enrolled:
            return self.reject(command, UnknownMember)
        self.accept(command)
        assert self.account.tier == tier

    def repeat(self, cid: str, pick: int) -> None:
        """A retry within the horizon commands are remembered for decides nothing."""
        recent = [command for when, command in self.applied if self.now - when <= REMEMBERED_FOR]
        if not recent:
            return
        command = recent[pick % len(recent)]
        assert decide(self.account, command, self.rules) == []
        assert seal(self.account, command, [], self.rules.version, self.now) == (self.account, [])


def check_account(account: Account, rules: ProgramRules) -> None:
    assert account.debt >= 0
    assert account.available == sum(held.points for held in account.lots) - account.debt
    assert account.available >= 0 or account.debt > 0
    if account.debt > 0:
        assert account.lots == (), "points are owed only when there are none left"
    assert all(held.points > 0 for held in (*account.lots, *account.pending))
    assert account.lots == oldest_first(account.lots)
    assert len({held.lot_id for held in account.lots}) == len(account.lots)
    gained = account.lifetime_earned + account.adjusted
    lost = account.redeemed + account.expired + account.reversed
    assert gained - lost == account.available + account.pending_points, "points are never made or lost"
    for bought in account.purchases.values():
        assert 0 <= bought.points_reversed <= bought.points_earned
        if bought.refunded_minor == bought.amount_minor:  # what expired is never reversed
            assert bought.points_reversed + bought.points_expired >= bought.points_earned
    if account.tier == rules.tiers[0].name:
        assert account.next_evaluation_at is None, "the entry tier is never evaluated"


def check_log(log: list[Event], account: Account) -> None:
    assert [event.sequence for event in log] == list(range(1, len(log) + 1))
    hashes = [GENESIS_HASH, *(event.hash for event in log)]
    assert [event.prev_hash for event in log] == hashes[:-1]
    assert all(event.hash_is_valid() for event in log)
    assert len({event.event_id for event in log}) == len(log)
    assert reduce(evolve, log, Account.new(MEMBER)) == account
    assert state_records.assemble(MEMBER, state_records.records(account).items()) == account
    first_layout = TypeAdapter(Account).dump_json(account)  # whole-account records of earlier versions
    assert state_records.legacy_account(first_layout) == account
    assert state_records.legacy_account(second_layout(account)) == known_to_the_second_layout(account)


def known_to_the_second_layout(account: Account) -> Account:
    """What the second layout held: purchases without their lot, expiry, items or refunds, outcomes
    without their time or key."""
    purchases = {
        purchase_id: replace(
            p,
            lot_id=f"purchase:{purchase_id}",
            points_expired=0,
            category_spend=(),
            bonuses=(),
            refund_ids=(),
        )
        for purchase_id, p in account.purchases.items()
    }
    outcomes = {
        command_id: replace(o, recorded_at=None, key=None) for command_id, o in account.outcomes.items()
    }
    return replace(account, purchases=purchases, outcomes=outcomes)


def _live(records: dict[str, bytes | None]) -> list[tuple[str, bytes]]:
    return [(key, value) for key, value in sorted(records.items()) if value is not None]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.sampled_from(RULE_SETS), steps=STEPS)
def test_the_ledger_keeps_its_invariants_over_any_command_sequence(
    rules: ProgramRules, steps: list[tuple[int, tuple[object, ...]]]
) -> None:
    member = Member(rules)
    for n, (days, (kind, *args)) in enumerate(steps):
        member.now += timedelta(days=days)
        getattr(member, str(kind))(f"c-{n}", *args)
    check_log(member.log, member.account)


lots_strategy = st.lists(
    st.builds(
        Lot,
        lot_id=st.sampled_from([f"purchase:o-{n}@{n}" for n in range(8)]),
        points=st.integers(min_value=1, max_value=500),
        expires_at=st.sampled_from([datetime(2027, month, 1, tzinfo=UTC) for month in (1, 2, 3)]),
    ),
    unique_by=lambda lot: lot.lot_id,
)


@given(
    lots=lots_strategy,
    lot_id=st.sampled_from([f"purchase:o-{n}@{n}" for n in range(10)]),
    points=st.integers(min_value=-5, max_value=500),
    month=st.sampled_from((1, 2, 3)),
)
def test_opening_a_lot_is_adding_its_points(lots: list[Lot], lot_id: str, points: int, month: int) -> None:
    """The earning's fast path gives what giving the points back to their lot gives."""
    held, expires_at = oldest_first(lots), datetime(2027, month, 1, tzinfo=UTC)
    returned = LotPoints(lot_id=lot_id, points=points, expires_at=expires_at)
    assert opened(held, Lot(lot_id, points, expires_at)) == add(held, [returned])
