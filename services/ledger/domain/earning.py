"""How many points a purchase earns: spend x points per CNY x tier multiplier x category bonuses."""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from schemas.events import EarningRule
from schemas.money import to_minor
from schemas.rules import ProgramRules, Tier
from services.ledger.domain.commands import RecordPurchase


def points_for(purchase: RecordPurchase, tier: Tier, rules: ProgramRules) -> tuple[int, EarningRule]:
    """Exact decimal arithmetic, rounded once per purchase as the rules say (default: floor).

    Items in a bonus category earn their bonus; spend not covered by items earns the base. When
    the items add up to more than the amount paid (a basket discount), each item's share is
    scaled down so that the paid amount is what earns.
    """
    amount = Decimal(purchase.amount_minor)
    items = [(Decimal(to_minor(item.amount)), item.category) for item in purchase.items]
    covered = sum((value for value, _ in items), Decimal(0))
    weighted = sum((value * rules.bonus_for(category) for value, category in items), Decimal(0))
    spend = weighted * amount / covered if covered > amount else weighted + (amount - covered)
    exact = spend * Decimal(rules.points_per_cny) * Decimal(tier.multiplier) / 100
    rounding = ROUND_FLOOR if rules.rounding == "floor" else ROUND_HALF_UP
    points = int(exact.quantize(Decimal(1), rounding=rounding))
    bonuses = {
        category: str(rules.bonus_for(category)) for _, category in items if rules.bonus_for(category) != 1
    }
    rule = EarningRule(
        tier=tier.name,
        tier_multiplier=tier.multiplier,
        points_per_cny=rules.points_per_cny,
        category_bonuses=bonuses,
        rounding=rules.rounding,
    )
    return points, rule
