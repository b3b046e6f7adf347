"""A member's account as the processor holds it, and how events change it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pydantic import TypeAdapter

from schemas.canonical import GENESIS_HASH
from schemas.events import Event, PointsEarned, PurchaseRecorded


@dataclass(frozen=True)
class Account:
    member_id: str
    sequence: int = 0
    last_hash: str = GENESIS_HASH
    available: int = 0
    lifetime_earned: int = 0
    # purchase_id -> amount in minor units: idempotency memory, and the base for refunds.
    purchases: dict[str, int] = field(default_factory=dict)

    @classmethod
    def new(cls, member_id: str) -> Account:
        return cls(member_id=member_id)


def evolve(account: Account, event: Event) -> Account:
    """The account after one of its events. Never fails: events are facts."""
    account = replace(account, sequence=event.sequence, last_hash=event.hash)
    data = event.data
    if isinstance(data, PurchaseRecorded):
        return replace(account, purchases={**account.purchases, data.purchase_id: data.amount_minor})
    if isinstance(data, PointsEarned):
        return replace(
            account,
            available=account.available + data.points,
            lifetime_earned=account.lifetime_earned + data.points,
        )
    return account


_codec: TypeAdapter[Account] = TypeAdapter(Account)


def account_to_json(account: Account) -> bytes:
    return _codec.dump_json(account)


def account_from_json(raw: bytes | str) -> Account:
    return _codec.validate_json(raw)
