"""Commands: what a caller asks the ledger to do, with time and ids already fixed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.inbound import PurchaseItem


@dataclass(frozen=True, kw_only=True)
class Command:
    command_id: str
    correlation_id: str
    member_id: str
    occurred_at: datetime


@dataclass(frozen=True, kw_only=True)
class RecordPurchase(Command):
    purchase_id: str
    amount_minor: int
    currency: str
    store_id: str | None = None
    channel: str | None = None
    items: tuple[PurchaseItem, ...] = ()
