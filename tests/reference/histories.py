"""Random hostile histories, driven through the real core and the reference model side by side.

`LedgerAgainstReference` is a hypothesis state machine: each rule sends one command (late and
early dates, dates in the future, reused ids, refunds after expiry, with and without items,
skipped ticks, redemptions and cancels, adjustments, rules changes) to the real `decide` and
`seal` (rejections sealed as `CommandRejected`, as the processor does) and to `tests.reference.model`,
and after each step the real account must agree with the model on the outcome and on every
figure, lot and tier. The sealed log is kept for the read side's checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from schemas.events import CommandRejected, Event, EventData
from schemas.inbound import PurchaseItem
from schemas.money import from_minor
from schemas.rules import CategoryBonus, ProgramRules
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import (
    AdjustPoints,
    AdvanceClock,
    CancelRedemption,
    Command,
    RecordPurchase,
    RedeemPoints,
    RefundPurchase,
    SetTier,
)
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import LedgerError
from services.ledger.domain.memory import REMEMBERED_FOR
from tests.reference import model
from tests.reference.model import ALREADY_DONE, APPLIED

START = datetime(2025, 1, 15, 9, 0, tzinfo=UTC)
TIERS = ("regular", "silver", "gold", "platinum")
# Programs a history starts with or changes to; each change gets the next version.
PROGRAMS = (
    ProgramRules(),
    ProgramRules(pending_days=14, category_bonuses=(CategoryBonus(category="beauty", multiplier="2"),)),
    ProgramRules(
        rounding="half_up",
        expiry_months=3,
        evaluation_months=2,
        refund_window_days=60,
        future_tolerance_hours=0,
    ),
    ProgramRules(
        points_per_cny="2",
        qualifying_window_months=6,
        category_bonuses=(CategoryBonus(category="shoes", multiplier="1.5"),),
    ),
)
AMOUNTS = st.one_of(st.integers(0, 30_000), st.integers(30_000, 1_500_000))
# How a purchase's date stands to its arrival: on time, late (days), early (hours), absurd.
_ON_TIME = st.just(timedelta(0))
_LATE = st.builds(lambda d, s: -timedelta(days=d, seconds=s), st.integers(1, 800), st.integers(0, 86_399))
_EARLY = st.builds(lambda h: timedelta(hours=h), st.integers(1, 48))
_ABSURD = st.just(timedelta(days=3650))
SHIFTS = st.one_of(_ON_TIME, _ON_TIME, _ON_TIME, _LATE, _LATE, _EARLY, _ABSURD)
# A refund's date: on time or a few days late, or ahead of its arrival by hours or months (a typo).
REFUND_SHIFTS = st.one_of(
    st.builds(lambda d: -timedelta(days=d), st.integers(0, 3)),
    st.builds(lambda d: -timedelta(days=d), st.integers(0, 3)),
    _EARLY,
    st.builds(lambda d: timedelta(days=d), st.integers(30, 300)),
)
PERCENTS = st.one_of(st.just(100), st.integers(1, 120))


@dataclass(frozen=True)
class Basket:
    """Items as (sku, category, amount) for a purchase of `amount`; some baskets add up to more
    than was paid (a discount) and some cover only part of it."""

    kind: int

    def items(self, amount: int) -> tuple[tuple[str, str, int], ...]:
        match self.kind:
            case 1:
                return (("sku-b", "beauty", max(1, amount // 2)),)
            case 2:
                return (("sku-b", "beauty", max(1, amount // 3)), ("sku-s", "shoes", max(1, amount // 3)))
            case 3:
                return (("sku-b", "beauty", amount + 100), ("sku-h", "home", max(1, amount // 2)))
        return ()


def purchase_items(items: tuple[tuple[str, str, int], ...]) -> tuple[PurchaseItem, ...]:
    return tuple(PurchaseItem(sku=s, category=c, quantity=1, amount=from_minor(a)) for s, c, a in items)


class Ids(TypedDict):
    command_id: str
    correlation_id: str
    member_id: str
    occurred_at: datetime


class Ledger:
    """The real core as the processor runs it for one member: decide, record refusals, seal."""

    def __init__(self, member_id: str) -> None:
        self.account = Account.new(member_id)
        self.log: list[Event] = []

    def run(self, command: Command, rules: ProgramRules, now: datetime) -> str:
        try:
            decided: list[EventData] = decide(self.account, command, rules)
            outcome = APPLIED if decided else ALREADY_DONE
        except LedgerError as error:
            decided = [CommandRejected(command=type(command).__name__, code=error.code, detail=error.detail)]
            outcome = error.code
        self.account, events = seal(self.account, command, decided, rules.version, now)
        self.log.extend(events)
        return outcome


def agree(account: Account, reference: model.Member, rules: ProgramRules) -> None:
    """Every balance figure, every lot, the tier and the remembered purchases."""
    assert account.enrolled == reference.enrolled
    real = {
        "available": account.available,
        "pending": account.pending_points,
        "lifetime_earned": account.lifetime_earned,
        "redeemed": account.redeemed,
        "expired": account.expired,
        "reversed": account.reversed,
        "adjusted": account.adjusted,
        "debt": account.debt,
    }
    assert real == figures(reference)
    lots = [(lot.lot_id.split("@")[0], lot.expires_at, lot.points, False) for lot in account.lots]
    lots += [(lot.lot_id.split("@")[0], lot.expires_at, lot.points, True) for lot in account.pending]
    assert sorted(lots) == reference.open_lots()
    if reference.enrolled:
        assert account.tier == rules.tiers[reference.tier].name
        assert account.next_evaluation_at == reference.next_evaluation
    assert set(account.purchases) == set(reference.remembered)


def figures(reference: model.Member) -> dict[str, int]:
    return {
        "available": reference.available,
        "pending": reference.pending,
        "lifetime_earned": reference.earned,
        "redeemed": reference.redeemed,
        "expired": reference.expired,
        "reversed": reference.reversed,
        "adjusted": reference.adjusted,
        "debt": reference.debt,
    }


class LedgerAgainstReference(RuleBasedStateMachine):
    member_id = "ref-1"

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(self.member_id)
        self.reference = model.Member()
        self.program = PROGRAMS[0]
        self.now = START
        self.steps = 0
        self.purchase_ids: list[str] = []
        self.redemption_ids: list[str] = []
        # Commands decided, with when: a retry is "already done" only within the horizon.
        self.applied: list[tuple[Command, datetime]] = []

    @initialize(program=st.sampled_from(PROGRAMS), amounts=st.lists(AMOUNTS, min_size=1, max_size=3))
    def start(self, program: ProgramRules, amounts: list[int]) -> None:
        """The program in force, and a first purchase or a few."""
        self.program = program
        for amount in amounts:
            self.purchase(amount, timedelta(0), Basket(len(self.purchase_ids) % 4), None, False)

    # --- the clock -------------------------------------------------------------------------

    def _ids(self, kind: str) -> Ids:
        """Each command a minute and a second later than the last: no two commands share an instant."""
        self.steps += 1
        self.now += timedelta(minutes=1, seconds=self.steps)
        command_id = f"{kind}-{self.steps}"
        return Ids(
            command_id=command_id, correlation_id=command_id, member_id=self.member_id, occurred_at=self.now
        )

    def _run(self, command: Command, expected: str) -> None:
        outcome = self.ledger.run(command, self.program, self.now)
        assert outcome == expected, (type(command).__name__, outcome, expected)
        if outcome != ALREADY_DONE:
            self.applied.append((command, self.now))

    @rule(days=st.integers(0, 120))
    def wait(self, days: int) -> None:
        """Time passes and no tick reaches the member (the scheduler skipped it)."""
        self.now += timedelta(days=days, hours=days % 7)

    @rule(days=st.integers(0, 60))
    def tick(self, days: int) -> None:
        self.now += timedelta(days=days)
        command = AdvanceClock(**self._ids("tick"))
        self.ledger.run(command, self.program, self.now)
        self.reference.tick(command.occurred_at, self.program)

    # --- inputs from shops -----------------------------------------------------------------

    @rule(
        amount=AMOUNTS,
        shift=SHIFTS,
        basket=st.builds(Basket, st.integers(0, 3)),
        reuse=st.one_of(st.none(), st.integers(0, 1000)),
        same=st.booleans(),
    )
    def purchase(self, amount: int, shift: timedelta, basket: Basket, reuse: int | None, same: bool) -> None:
        ids = self._ids("purchase")
        occurred_at = self.now + shift
        purchase_id = f"o-{self.steps}"
        if reuse is not None and self.purchase_ids:
            purchase_id = self.purchase_ids[reuse % len(self.purchase_ids)]
            known = self.reference.remembered.get(purchase_id)
            if same and known is not None:  # sent again as it was, under a new command id
                amount, occurred_at, basket_items = known.amount, known.occurred_at, known.items
                self._purchase(ids, purchase_id, amount, occurred_at, basket_items)
                return
        self._purchase(ids, purchase_id, amount, occurred_at, basket.items(amount))

    def _purchase(
        self,
        ids: Ids,
        purchase_id: str,
        amount: int,
        occurred_at: datetime,
        items: tuple[tuple[str, str, int], ...],
    ) -> None:
        command = RecordPurchase(
            **(ids | {"occurred_at": occurred_at}),
            received_at=self.now,
            purchase_id=purchase_id,
            amount_minor=amount,
            currency="CNY",
            items=purchase_items(items),
        )
        expected = self.reference.purchase(purchase_id, amount, occurred_at, self.now, items, self.program)
        self._run(command, expected)
        if purchase_id not in self.purchase_ids:
            self.purchase_ids.append(purchase_id)

    @rule(
        pick=st.integers(0, 1000),
        percent=PERCENTS,
        by_item=st.booleans(),
        shift=REFUND_SHIFTS,
        again=st.sampled_from([False, False, False, True]),
    )
    def refund(self, pick: int, percent: int, by_item: bool, shift: timedelta, again: bool) -> None:
        ids = self._ids("refund")
        occurred_at = self.now + shift
        purchase_id = self.purchase_ids[pick % len(self.purchase_ids)] if self.purchase_ids else "o-none"
        refund_id = f"rf-{self.steps}"
        if again and self.reference.refund_ids:  # a refund sent again under a new command id
            refund_id = sorted(self.reference.refund_ids)[pick % len(self.reference.refund_ids)]
        bought = self.reference.remembered.get(purchase_id)
        unrefunded = bought.amount - bought.refunded if bought else 100
        items: tuple[tuple[str, str, int], ...] = ()
        if by_item and bought is not None and bought.items:
            sku, category, value = bought.items[pick % len(bought.items)]
            items = ((sku, category, min(value, max(unrefunded, 1))),)
            amount = items[0][2]
        else:
            amount = max(1, unrefunded * percent // 100)
        command = RefundPurchase(
            **(ids | {"occurred_at": occurred_at}),
            received_at=self.now,
            refund_id=refund_id,
            purchase_id=purchase_id,
            amount_minor=amount,
            items=purchase_items(items),
        )
        expected = self.reference.refund(
            refund_id, purchase_id, amount, occurred_at, self.now, items, self.program
        )
        self._run(command, expected)

    # --- members and operators -------------------------------------------------------------

    @rule(percent=PERCENTS)
    def redeem(self, percent: int) -> None:
        ids = self._ids("redeem")
        spendable = sum(
            lot.points for lot in self.reference.lots if lot.matures_at is None and lot.expires_at > self.now
        )
        points = max(1, (spendable - self.reference.debt) * percent // 100)
        redemption_id = f"r-{self.steps}"
        command = RedeemPoints(**ids, redemption_id=redemption_id, points=points, reward="voucher")
        self._run(command, self.reference.redeem(redemption_id, points, self.now))
        self.redemption_ids.append(redemption_id)

    @precondition(lambda self: bool(self.redemption_ids))
    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        ids = self._ids("cancel")
        chosen = self.redemption_ids[pick % len(self.redemption_ids)] if self.redemption_ids else "r-none"
        command = CancelRedemption(**ids, redemption_id=chosen)
        if chosen not in self.ledger.account.redemptions and chosen in self.reference.redemptions:
            # Forgotten (README, "what is remembered"): its command is past the horizon and every
            # point it took has expired; a cancel now is unknown, as for any id never seen.
            taken = self.reference.redemptions.pop(chosen).taken
            assert all(lot.expires_at <= self.now for lot, _ in taken), "forgotten while it mattered"
            self._run(command, "unknown_redemption")
            return
        self._run(command, self.reference.cancel(chosen, self.now))

    @rule(points=st.one_of(st.integers(1, 3000), PERCENTS.map(lambda percent: -percent)))
    def adjust(self, points: int) -> None:
        ids = self._ids("adjust")
        if points < 0:  # a share of what can be spent, taken away
            spendable = sum(lot.points for lot in self.reference._spendable(self.now)) - self.reference.debt
            points = -max(1, spendable * -points // 100)
        adjustment_id = f"a-{self.steps}"
        command = AdjustPoints(
            **ids, adjustment_id=adjustment_id, points=points, reason="goodwill", actor="k"
        )
        self._run(command, self.reference.adjust(adjustment_id, points, self.now, self.program))

    @rule(tier=st.sampled_from(TIERS))
    def set_tier(self, tier: str) -> None:
        ids = self._ids("tier")
        command = SetTier(**ids, tier=tier, reason="service recovery", actor="k")
        self._run(command, self.reference.set_tier(tier, self.now, self.program))

    @precondition(lambda self: bool(self.applied))
    @rule(pick=st.integers(0, 1000))
    def retry(self, pick: int) -> None:
        """A command delivered again, with its own command id, within the horizon its outcome is
        remembered for: it was decided once."""
        recent = [command for command, at in self.applied if at > self.now - REMEMBERED_FOR]
        if not recent:
            return
        self.now += timedelta(seconds=1)
        assert self.ledger.run(recent[pick % len(recent)], self.program, self.now) == ALREADY_DONE

    @rule(program=st.sampled_from(PROGRAMS))
    def change_rules(self, program: ProgramRules) -> None:
        self.program = program.model_copy(update={"version": self.program.version + 1})

    @invariant()
    def agrees_with_the_reference(self) -> None:
        agree(self.ledger.account, self.reference, self.program)
