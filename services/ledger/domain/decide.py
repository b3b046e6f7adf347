"""decide(account, command, rules) -> event data: the ledger's only decision function."""

from __future__ import annotations

from functools import singledispatch

from schemas.events import EventData, PointsEarned, PurchaseRecorded
from services.ledger.domain.account import Account
from services.ledger.domain.commands import Command, RecordPurchase
from services.ledger.domain.rules import Rules


def decide(account: Account, command: Command, rules: Rules) -> list[EventData]:
    """The complete list of what happens, or a LedgerError; an empty list for a duplicate."""
    return _decide(command, account, rules)


@singledispatch
def _decide(command: Command, account: Account, rules: Rules) -> list[EventData]:
    raise TypeError(f"no decision for {type(command).__name__}")


@_decide.register
def _purchase(command: RecordPurchase, account: Account, rules: Rules) -> list[EventData]:
    if command.purchase_id in account.purchases:
        return []
    recorded = PurchaseRecorded(
        purchase_id=command.purchase_id,
        amount_minor=command.amount_minor,
        currency=command.currency,
        store_id=command.store_id,
        channel=command.channel,
        items=command.items,
    )
    # Floor per purchase: 129.90 CNY earns 129 points.
    points = command.amount_minor * rules.points_per_cny // 100
    if points == 0:
        return [recorded]
    return [recorded, PointsEarned(purchase_id=command.purchase_id, points=points, rule="base")]
