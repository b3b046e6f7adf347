"""Tier qualification over the rolling window of qualifying spend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.rules import ProgramRules
from services.ledger.domain.account import Account, Purchase
from services.ledger.domain.calendar import add_months


@dataclass(frozen=True)
class Window:
    spend_minor: int
    purchases: int


def window_at(purchases: dict[str, Purchase], moment: datetime, rules: ProgramRules) -> Window:
    """Qualifying spend and purchase count in (moment - window, moment]; refunded spend does not count."""
    start = add_months(moment, -rules.qualifying_window_months)
    spend, count = 0, 0
    # One pass over every remembered purchase, per purchase decided: `qualifying_minor` is written
    # out, since a property call was a third of the loop's cost.
    for p in purchases.values():
        qualifying = p.amount_minor - p.refunded_minor
        if qualifying > 0 and start < p.occurred_at <= moment:
            spend += qualifying
            count += 1
    return Window(spend_minor=spend, purchases=count)


def qualified_index(window: Window, rules: ProgramRules) -> int:
    """The highest tier the window qualifies for."""
    best = 0
    for index, tier in enumerate(rules.tiers):
        if window.spend_minor >= tier.qualifying_minor and window.purchases >= tier.min_purchases:
            best = index
    return best


def current_index(account: Account, rules: ProgramRules) -> int:
    """The account's tier in the rules in force; a tier the rules no longer have counts as the entry tier."""
    names = [tier.name for tier in rules.tiers]
    return names.index(account.tier) if account.tier in names else 0
