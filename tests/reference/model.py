"""A reference model of one member's ledger: the domain notes and the README's documented decisions,
written again as plainly as possible, to check the real code against.

It shares nothing with `services/` but the rules object (its parameters are the input, not the
logic): its own calendar, its own arithmetic in fractions, lots as mutable objects kept even when
empty, every purchase ever recorded kept in a list. It is slow on purpose; clarity is the point.

Where the notes leave something open, the model follows the code and says so (`AMBIGUITIES`).
Not modelled: campaigns and budgets, reward units, personal data, idempotency keys beyond a
command delivered twice.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

from schemas.rules import ProgramRules

# Outcomes of a command besides an error code: something happened, or it was already done.
APPLIED = "applied"
ALREADY_DONE = "already_done"

AMBIGUITIES = """
- When a purchase is forgotten (its id reusable, its refunds unknown, older purchases refused as
  purchase_too_old): the README says "past the refund and qualifying windows". The model follows
  the code's horizon: at each recorded purchase, the oldest of (arrival - qualifying window,
  arrival - refund window, the purchase's date, the pending evaluation's window start), and never
  earlier than before.
- A refund naming items after some of the purchase's points expired: the notes say only that
  expired points are never reversed. The model follows the code: the items' share of the earning,
  scaled by the share of the purchase's points still alive.
- Lots of the same expiry: "oldest first" does not order them. The model orders them by the
  instant they were opened; histories in the tests never open two lots at one instant.
- Ticks skipped past several evaluation dates: one tick evaluates one date (the code's choice);
  the next tick evaluates the next one.
- A refund takes back still-pending points of its purchase first, then its own lot, then the
  oldest lots, and only what none of them hold becomes debt (the notes: "if those points were
  already spent, the balance may go below zero").
- Months (expiry, qualifying window, evaluation dates) are counted on UTC dates, as the code does;
  the notes put "calendar days and months" in the program's time zone for metrics, segments and
  birthdays only. The two differ by a day at month ends (a lot earned at 04:00 on 31 January in
  Beijing expires on 28 February in Beijing under the zone, 1 March under UTC with 1-month expiry).
- A tier evaluation counts the window's refunds as they stand at the tick, not at the evaluation date.
- A refund may be dated before its purchase; nothing in the notes refuses it, nor does the code.
- Segments are defined on the read side only (recency from the last purchase not refunded in full).
"""


def add_months(moment: datetime, months: int) -> datetime:
    """Same day and time `months` later, the day clamped to the month's length."""
    total = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(total, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


@dataclass(eq=False)
class Lot:
    """A lot, kept after it empties: a cancelled redemption can fill it again."""

    source: str  # purchase:<id> or adjustment:<id>
    opened: int  # the model's own ordinal, to order lots of one expiry
    points: int
    expires_at: datetime
    matures_at: datetime | None = None  # while pending
    owner: Purchase | None = None


@dataclass(eq=False)
class Purchase:
    purchase_id: str
    amount: int
    occurred_at: datetime
    items: tuple[tuple[str, str, int], ...]  # (sku, category, amount)
    refunded: int = 0
    earned: int = 0
    reversed: int = 0
    expired: int = 0
    bonuses: dict[str, Fraction] = field(default_factory=dict)
    lot: Lot | None = None
    refund_ids: set[str] = field(default_factory=set)

    def weight(self, category: str) -> Fraction:
        return self.bonuses.get(category, Fraction(1))


@dataclass(eq=False)
class Redemption:
    points: int
    taken: list[tuple[Lot, int]]
    cancelled: bool = False


class Member:
    """One member, command by command. Each command returns APPLIED, ALREADY_DONE or an error code."""

    def __init__(self) -> None:
        self.enrolled = False
        self.tier = 0
        self.next_evaluation: datetime | None = None
        self.lots: list[Lot] = []
        self.debt = 0
        self.earned = self.redeemed = self.expired = self.reversed = self.adjusted = 0
        self.history: list[Purchase] = []  # every purchase recorded, forgotten or not
        self.remembered: dict[str, Purchase] = {}
        self.horizon: datetime | None = None
        self.refund_ids: set[str] = set()
        self.redemptions: dict[str, Redemption] = {}
        self.adjustment_ids: set[str] = set()
        self.opened = 0

    # --- figures ---------------------------------------------------------------------------

    @property
    def available(self) -> int:
        return sum(lot.points for lot in self.lots if lot.matures_at is None) - self.debt

    @property
    def pending(self) -> int:
        return sum(lot.points for lot in self.lots if lot.matures_at is not None)

    def open_lots(self) -> list[tuple[str, datetime, int, bool]]:
        """(source, expiry, points, pending) of every lot holding points."""
        return sorted(
            (lot.source, lot.expires_at, lot.points, lot.matures_at is not None)
            for lot in self.lots
            if lot.points > 0
        )

    def window(self, moment: datetime, rules: ProgramRules) -> tuple[int, int]:
        """Spend not refunded, and purchases with some left, dated in (moment - window, moment]."""
        start = add_months(moment, -rules.qualifying_window_months)
        kept = [
            p.amount - p.refunded
            for p in self.history
            if start < p.occurred_at <= moment and p.amount - p.refunded > 0
        ]
        return sum(kept), len(kept)

    def qualifies_for(self, moment: datetime, rules: ProgramRules) -> int:
        spend, count = self.window(moment, rules)
        return max(
            i
            for i, tier in enumerate(rules.tiers)
            if spend >= tier.qualifying_minor and count >= tier.min_purchases
        )

    def last_kept_purchase(self) -> datetime | None:
        return max((p.occurred_at for p in self.history if p.refunded < p.amount), default=None)

    # --- lots ------------------------------------------------------------------------------

    def _open(self, source: str, points: int, expires_at: datetime, owner: Purchase | None) -> Lot:
        self.opened += 1
        lot = Lot(source, self.opened, points, expires_at, owner=owner)
        self.lots.append(lot)
        return lot

    def _spendable(self, now: datetime) -> list[Lot]:
        return sorted(
            (lot for lot in self.lots if lot.matures_at is None and lot.points > 0 and lot.expires_at > now),
            key=lambda lot: (lot.expires_at, lot.opened),
        )

    def _expire(self, lot: Lot) -> None:
        self.expired += lot.points
        if lot.owner is not None and lot.owner.lot is lot:
            lot.owner.expired += lot.points
        lot.points = 0

    def _expire_due(self, now: datetime) -> None:
        """A lot at or past its expiry is never spent: it expires before anything takes points."""
        for lot in self.lots:
            if lot.matures_at is None and lot.points > 0 and lot.expires_at <= now:
                self._expire(lot)

    def _take_oldest(self, points: int, now: datetime, first: Lot | None = None) -> list[tuple[Lot, int]]:
        lots = self._spendable(now)
        if first is not None and first in lots:
            lots.remove(first)
            lots.insert(0, first)
        taken = []
        for lot in lots:
            if points == 0:
                break
            share = min(points, lot.points)
            lot.points -= share
            points -= share
            taken.append((lot, share))
        return taken

    def _credit(self, lot: Lot, points: int, now: datetime) -> None:
        """Points becoming available pay the debt first, unless their lot is already past its
        expiry: such points cannot be spent, and paying a debt is spending them."""
        repaid = min(self.debt, points) if lot.expires_at > now else 0
        self.debt -= repaid
        lot.points += points - repaid

    # --- commands --------------------------------------------------------------------------

    def purchase(
        self,
        purchase_id: str,
        amount: int,
        occurred_at: datetime,
        received_at: datetime,
        items: tuple[tuple[str, str, int], ...],
        rules: ProgramRules,
    ) -> str:
        known = self.remembered.get(purchase_id)
        if known is not None:
            same = known.amount == amount and known.occurred_at == occurred_at
            return ALREADY_DONE if same else "duplicate_purchase"
        if occurred_at > received_at + timedelta(hours=rules.future_tolerance_hours):
            return "purchase_in_future"
        if self.horizon is not None and occurred_at < self.horizon:
            return "purchase_too_old"
        self.enrolled = True
        needed = [
            add_months(received_at, -rules.qualifying_window_months),
            received_at - timedelta(days=rules.refund_window_days),
            occurred_at,
        ]
        if self.next_evaluation is not None:
            needed.append(add_months(self.next_evaluation, -rules.qualifying_window_months))
        self.horizon = max(min(needed), self.horizon or min(needed))
        forgotten = [p for p in self.remembered.values() if p.occurred_at < self.horizon]
        for gone in forgotten:  # a refund id is remembered as long as its purchase
            self.refund_ids -= gone.refund_ids
            del self.remembered[gone.purchase_id]
        bought = Purchase(purchase_id, amount, occurred_at, items)
        self.history.append(bought)
        self.remembered[purchase_id] = bought
        points = self._points(bought, rules)
        if points > 0:
            bought.earned = points
            bought.bonuses = {
                category: Fraction(rules.bonus_for(category))
                for _, category, _ in items
                if rules.bonus_for(category) != 1
            }
            self.earned += points
            expires = add_months(occurred_at, rules.expiry_months)
            lot = self._open(f"purchase:{purchase_id}", 0, expires, bought)
            bought.lot = lot
            if rules.pending_days > 0:
                lot.points = points
                lot.matures_at = occurred_at + timedelta(days=rules.pending_days)
            else:
                self._credit(lot, points, received_at)
        # Promotion: the window as it stands when the purchase is known.
        now = max(occurred_at, received_at)
        qualified = self.qualifies_for(now, rules)
        if qualified > self.tier:
            self.tier = qualified
            self.next_evaluation = add_months(now, rules.evaluation_months)
        return APPLIED

    def _points(self, bought: Purchase, rules: ProgramRules) -> int:
        """Spend weighted by category bonuses (items scaled down to the amount paid if they add up
        to more), times points per CNY and the tier's multiplier, rounded once."""
        covered = sum(amount for _, _, amount in bought.items)
        weighted = sum(
            (Fraction(amount) * Fraction(rules.bonus_for(category)) for _, category, amount in bought.items),
            Fraction(0),
        )
        if covered > bought.amount:
            spend = weighted * bought.amount / covered
        else:
            spend = weighted + bought.amount - covered
        exact = spend * Fraction(rules.points_per_cny) * Fraction(rules.tiers[self.tier].multiplier) / 100
        if rules.rounding == "floor":
            return exact.numerator // exact.denominator
        return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))

    def refund(
        self,
        refund_id: str,
        purchase_id: str,
        amount: int,
        occurred_at: datetime,
        received_at: datetime,
        items: tuple[tuple[str, str, int], ...],
        rules: ProgramRules,
    ) -> str:
        if refund_id in self.refund_ids:
            return ALREADY_DONE
        bought = self.remembered.get(purchase_id)
        if bought is None:
            return "unknown_purchase"
        if amount <= 0:
            return "invalid_amount"
        if occurred_at > received_at + timedelta(hours=rules.future_tolerance_hours):
            return "refund_in_future"  # its date would expire other lots early
        if occurred_at > bought.occurred_at + timedelta(days=rules.refund_window_days):
            return "refund_window_closed"
        unrefunded = bought.amount - bought.refunded
        if amount > unrefunded:
            return "refund_exceeds_purchase"
        self._expire_due(occurred_at)
        self.refund_ids.add(refund_id)
        bought.refund_ids.add(refund_id)
        bought.refunded += amount
        points = self._to_reverse(bought, amount, unrefunded, items)
        if points == 0:
            return APPLIED
        self.reversed += points
        bought.reversed += points
        left = points
        own = bought.lot
        if own is not None and own.matures_at is not None:
            share = min(left, own.points)
            own.points -= share
            left -= share
        taken = self._take_oldest(left, occurred_at, first=own)
        self.debt += left - sum(share for _, share in taken)
        return APPLIED

    def _to_reverse(
        self, bought: Purchase, amount: int, unrefunded: int, items: tuple[tuple[str, str, int], ...]
    ) -> int:
        held = bought.earned - bought.reversed
        alive = max(0, held - bought.expired)
        if alive == 0 or amount >= unrefunded:
            return alive
        if not items:
            return alive * amount // unrefunded
        total = sum((Fraction(a) * bought.weight(c) for _, c, a in bought.items), Fraction(0)) + max(
            0, bought.amount - sum(a for _, _, a in bought.items)
        )
        returned = sum((Fraction(a) * bought.weight(c) for _, c, a in items), Fraction(0))
        share = bought.earned * returned / total * Fraction(alive, held)
        return min(alive, share.numerator // share.denominator)

    def redeem(self, redemption_id: str, points: int, now: datetime) -> str:
        if redemption_id in self.redemptions:
            return ALREADY_DONE
        if not self.enrolled:
            return "unknown_member"
        if points <= 0:
            return "invalid_amount"
        if points > sum(lot.points for lot in self._spendable(now)) - self.debt:
            return "insufficient_points"
        self._expire_due(now)
        self.redemptions[redemption_id] = Redemption(points, self._take_oldest(points, now))
        self.redeemed += points
        return APPLIED

    def cancel(self, redemption_id: str, now: datetime) -> str:
        redemption = self.redemptions.get(redemption_id)
        if redemption is None:
            return "unknown_redemption"
        if redemption.cancelled:
            return ALREADY_DONE
        redemption.cancelled = True
        self.redeemed -= redemption.points
        for lot, points in sorted(redemption.taken, key=lambda t: (t[0].expires_at, t[0].opened)):
            if lot.expires_at > now:
                self._credit(lot, points, now)
            else:  # back to its lot, and straight on to expiry
                self.expired += points
                if lot.owner is not None and lot.owner.lot is lot:
                    lot.owner.expired += points
        return APPLIED

    def adjust(self, adjustment_id: str, points: int, now: datetime, rules: ProgramRules) -> str:
        if adjustment_id in self.adjustment_ids:
            return ALREADY_DONE
        if not self.enrolled:
            return "unknown_member"
        if points == 0:
            return "invalid_amount"
        if points < 0 and -points > sum(lot.points for lot in self._spendable(now)) - self.debt:
            return "insufficient_points"
        self.adjustment_ids.add(adjustment_id)
        self.adjusted += points
        if points > 0:
            lot = self._open(f"adjustment:{adjustment_id}", 0, add_months(now, rules.expiry_months), None)
            self._credit(lot, points, now)
        else:
            self._expire_due(now)
            self._take_oldest(-points, now)
        return APPLIED

    def set_tier(self, tier: str, now: datetime, rules: ProgramRules) -> str:
        if not self.enrolled:
            return "unknown_member"
        names = [t.name for t in rules.tiers]
        if tier not in names:
            return "unknown_tier"
        if names.index(tier) == self.tier:
            return ALREADY_DONE
        self.tier = names.index(tier)
        self.next_evaluation = add_months(now, rules.evaluation_months) if self.tier > 0 else None
        return APPLIED

    def tick(self, now: datetime, rules: ProgramRules) -> None:
        """Pending points mature (paying debt first), lots past expiry expire, and a due
        evaluation keeps the tier or demotes by one."""
        for lot in sorted(self.lots, key=lambda lot: (lot.matures_at or now, lot.opened)):
            if lot.matures_at is not None and lot.matures_at <= now:
                points, lot.points, lot.matures_at = lot.points, 0, None
                self._credit(lot, points, now)
        self._expire_due(now)
        due = self.next_evaluation
        if due is None or due > now or self.tier == 0:
            return
        following = add_months(due, rules.evaluation_months)
        if self.qualifies_for(due, rules) < self.tier:
            self.tier -= 1
            self.next_evaluation = following if self.tier > 0 else None
        else:
            self.next_evaluation = following


def recency(last_kept_purchase: datetime | None, now: datetime, rules: ProgramRules) -> str:
    """Active within `active_days` calendar days of the program's zone, silent up to `silent_days`,
    churned after; a member with no purchase kept is new."""
    if last_kept_purchase is None:
        return "new"
    zone = ZoneInfo(rules.time_zone)
    days = (_day(now, zone) - _day(last_kept_purchase, zone)).days
    if days <= rules.active_days:
        return "active"
    return "silent" if days <= rules.silent_days else "churned"


def _day(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()
