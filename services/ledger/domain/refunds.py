"""How many of a purchase's points a refund takes back.

Only points the purchase still holds can be taken back: those earned, less those already
reversed and those that left its lot by expiry. Spent points are still held (taking them back
makes a debt); expired ones are gone for good, and a refund never reverses them a second time.

- A refund that names its items reverses what those items earned, category bonuses included:
  their share of the purchase's bonus-weighted spend.
- A refund without items reverses the share of the held points that its amount is of the amount
  not yet refunded.
- The refund that completes the purchase takes everything still held, so that partial refunds
  add up to exactly what was earned.

When some of the purchase's points expired, a refund naming items reverses what they earned in
the proportion of the purchase's points still alive.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from schemas.money import to_minor
from services.ledger.domain.account import Purchase
from services.ledger.domain.commands import RefundPurchase


def points_to_reverse(purchase: Purchase, refund: RefundPurchase, lapsed: int) -> int:
    """`lapsed`: points of the purchase's lot past their expiry that no event has expired yet."""
    held = purchase.points_earned - purchase.points_reversed
    alive = max(0, held - purchase.points_expired - lapsed)
    unrefunded = purchase.amount_minor - purchase.refunded_minor
    if alive == 0 or refund.amount_minor >= unrefunded:
        return alive
    if not refund.items:
        return alive * refund.amount_minor // unrefunded
    bonuses = {category: Decimal(factor) for category, factor in purchase.bonuses}
    returned = sum(
        (to_minor(item.amount) * bonuses.get(item.category, Decimal(1)) for item in refund.items), Decimal(0)
    )
    earned_by_items = purchase.points_earned * returned / _weight(purchase, bonuses)
    in_force = earned_by_items * alive / held
    return min(alive, int(in_force.quantize(Decimal(1), rounding=ROUND_FLOOR)))


def _weight(purchase: Purchase, bonuses: dict[str, Decimal]) -> Decimal:
    """The purchase's spend weighted by its bonuses, as earning counted it: items at their bonus,
    spend no item covers at the base (earning scales items down to the amount paid; the shares
    are the same)."""
    covered = sum(spend for _, spend in purchase.category_spend)
    extra = sum(
        (spend * (bonuses.get(category, Decimal(1)) - 1) for category, spend in purchase.category_spend),
        Decimal(0),
    )
    return max(purchase.amount_minor, covered) + extra
