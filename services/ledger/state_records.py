"""A member's account as keyed changelog records, so that a write costs what changed.

Each account is a small summary plus one record per purchase still remembered, per open lot,
per pending lot, per remembered business id and per remembered command outcome. A command
writes the summary and the few items it touched; an item that goes (a lot used up, a purchase
forgotten, an outcome pushed out) is written as a tombstone. No record grows with the member's
history, and compaction keeps one record per live key.

Keys are `{member_id}/{kind}/{item}`: member ids cannot hold '/', so one member's records form a
contiguous key range. Keys that start with '/' are the processor's own (the input checkpoints).
A record whose key has no '/' is a whole account in the layout written before this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from itertools import compress, filterfalse
from operator import is_not
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter

from schemas.events import LotPoints
from services.ledger.domain.account import Account, Purchase, Redemption
from services.ledger.domain.lots import Lot, PendingLot, by_maturity, oldest_first
from services.ledger.domain.memory import Outcome

Change = tuple[str, bytes | None]

SUMMARY, PURCHASE, LOT, PENDING, REFUND, REDEMPTION, ADJUSTMENT, OUTCOME = "spqlfrao"
# Marks an account restored from a whole-account record: its next write is complete (below).
LEGACY = "legacy"
INPUT_PREFIX = "/input/"

_SUMMARY_FIELDS = (
    "sequence",
    "last_hash",
    "enrolled",
    "has_profile",
    "erased",
    "tier",
    "next_evaluation_at",
    "debt",
    "lifetime_earned",
    "redeemed",
    "expired",
    "reversed",
    "adjusted",
    "rules_version",
    "rules_fingerprint",
    "forgotten_before",
)
_INSTANTS = ("next_evaluation_at", "forgotten_before")


def key(member_id: str, kind: str, item: str = "") -> str:
    return f"{member_id}/{kind}/{item}"


def member_range(member_id: str) -> tuple[str, str]:
    """The [low, high) key range of one member's records ('0' is the character after '/')."""
    return f"{member_id}/", f"{member_id}0"


def input_key(topic: str) -> str:
    """Where a transaction records how far it consumed the input topic's partition."""
    return f"{INPUT_PREFIX}{topic}"


def due_of(record_key: str, value: bytes | None) -> tuple[str, int | None] | None:
    """(member, next due instant in epoch microseconds) for a summary record, None for others."""
    member_id, kind, _ = record_key.split("/", 2)
    if kind != SUMMARY:
        return None
    if value is None:
        return member_id, None
    return member_id, orjson.loads(value)["due"]


def records(account: Account) -> dict[str, bytes]:
    """Every record of the account."""
    return {k: v for k, v in changes(Account.new(account.member_id), account) if v is not None}


def changes(before: Account, after: Account, complete: bool = False) -> list[Change]:
    """The records that turn `before` into `after`: what differs, and tombstones for what went.

    `complete` writes every record of `after`, changed or not (an account whose records are not
    all on the changelog yet: one restored from a whole-account record).
    """
    m = after.member_id
    found: list[Change] = []
    if complete or _summary(before) != _summary(after):
        found.append((key(m, SUMMARY), _summary_bytes(after)))
    found += _diff(m, PURCHASE, before.purchases, after.purchases, _purchase, complete)
    found += _diff(m, LOT, _by_id(before.lots), _by_id(after.lots), _lot, complete)
    found += _diff(m, PENDING, _by_id(before.pending), _by_id(after.pending), _pending, complete)
    found += _diff(m, REFUND, before.refunds, after.refunds, orjson.dumps, complete)
    found += _diff(m, REDEMPTION, before.redemptions, after.redemptions, _redemption, complete)
    found += _diff(m, ADJUSTMENT, before.adjustments, after.adjustments, orjson.dumps, complete)
    found += _diff(m, OUTCOME, before.outcomes, after.outcomes, _outcome, complete)
    return found


V = TypeVar("V")


def _diff(
    member_id: str,
    kind: str,
    before: Mapping[str, V],
    after: Mapping[str, V],
    encode: Callable[[V], bytes],
    complete: bool,
) -> list[Change]:
    if before is after and not complete:
        return []
    if complete:
        changed: Iterable[str] = after
    else:
        # An account's maps are copied with every event, their unchanged values shared: which
        # values are not the same objects is found in C, then only those are compared.
        items = list(after)
        moved = compress(items, map(is_not, map(before.get, items), after.values()))
        changed = [item for item in moved if before.get(item) != after[item]]
    found: list[Change] = [(key(member_id, kind, item), encode(after[item])) for item in changed]
    found += [(key(member_id, kind, item), None) for item in filterfalse(after.__contains__, before)]
    return found


def _by_id(lots: tuple[Any, ...]) -> dict[str, Any]:
    return {lot.lot_id: lot for lot in lots}


def _summary(account: Account) -> tuple[Any, ...]:
    return tuple(getattr(account, name) for name in _SUMMARY_FIELDS)


def _summary_bytes(account: Account) -> bytes:
    fields = {name: getattr(account, name) for name in _SUMMARY_FIELDS}
    due = account.next_due()
    fields["due"] = None if due is None else _micros(due)
    return orjson.dumps(fields)


def _micros(instant: datetime) -> int:
    return round(instant.timestamp() * 1_000_000)


def _purchase(p: Purchase) -> bytes:
    return orjson.dumps(
        (
            p.command_id,
            p.amount_minor,
            p.occurred_at,
            p.refunded_minor,
            p.points_earned,
            p.points_reversed,
            p.lot_id,
            p.points_expired,
            p.category_spend,
            p.bonuses,
            p.refund_ids,
        )
    )


def _lot(lot: Lot) -> bytes:
    return orjson.dumps((lot.points, lot.expires_at))


def _pending(lot: PendingLot) -> bytes:
    return orjson.dumps((lot.points, lot.expires_at, lot.matures_at))


def _redemption(r: Redemption) -> bytes:
    return orjson.dumps(
        (r.command_id, r.points, [(t.lot_id, t.points, t.expires_at) for t in r.from_lots], r.cancelled)
    )


def _outcome(o: Outcome) -> bytes:
    return orjson.dumps((o.first_sequence, o.last_sequence, o.rejected, o.recorded_at, o.key))


def assemble(member_id: str, rows: Iterable[tuple[str, bytes]]) -> Account:
    """The account its records describe; a member without records is a new account."""
    fields: dict[str, Any] = {}
    purchases, refunds, redemptions, adjustments = {}, {}, {}, {}
    lots, pending, outcomes = [], [], []
    for record_key, value in rows:
        _, kind, item = record_key.split("/", 2)
        decoded = orjson.loads(value)
        if kind == SUMMARY:
            fields = decoded
        elif kind == PURCHASE:
            purchases[item] = _decode_purchase(item, decoded)
        elif kind == LOT:
            lots.append(Lot(item, decoded[0], _instant(decoded[1])))
        elif kind == PENDING:
            pending.append(PendingLot(item, decoded[0], _instant(decoded[1]), _instant(decoded[2])))
        elif kind == REFUND:
            refunds[item] = decoded
        elif kind == REDEMPTION:
            redemptions[item] = _decode_redemption(decoded)
        elif kind == ADJUSTMENT:
            adjustments[item] = decoded
        elif kind == OUTCOME:
            outcomes.append((item, _decode_outcome(decoded)))
    if not fields:
        return Account.new(member_id)
    outcomes.sort(key=lambda found: found[1].last_sequence)  # the order they are forgotten in
    return Account(
        member_id=member_id,
        lots=oldest_first(lots),
        pending=by_maturity(pending),
        purchases=purchases,
        refunds=refunds,
        redemptions=redemptions,
        adjustments=adjustments,
        outcomes=dict(outcomes),
        **_summary_fields(fields),
    )


def _decode_outcome(fields: list[Any]) -> Outcome:
    """Records written before outcomes had a time and a key hold only the first three fields."""
    first, last, rejected, *later = fields
    if not later:
        return Outcome(first, last, rejected)
    recorded_at, idempotency_key = later
    when = None if recorded_at is None else _instant(recorded_at)
    return Outcome(first, last, rejected, when, idempotency_key)


def _decode_purchase(purchase_id: str, fields: list[Any]) -> Purchase:
    """Records written before purchases knew their lot name it as it was then, and know nothing
    of expiry or items (a refund of such a purchase takes its share in proportion); those written
    before purchases knew their refunds name none."""
    command_id, amount, occurred, refunded, earned, reversed_ = fields[:6]
    if len(fields) == 6:
        return Purchase(
            command_id, amount, _instant(occurred), refunded, earned, reversed_, f"purchase:{purchase_id}"
        )
    lot_id, expired, spend, bonuses, *refund_ids = fields[6:]
    return Purchase(
        command_id,
        amount,
        _instant(occurred),
        refunded,
        earned,
        reversed_,
        lot_id,
        expired,
        tuple((category, minor) for category, minor in spend),
        tuple((category, factor) for category, factor in bonuses),
        tuple(refund_ids[0]) if refund_ids else (),
    )


def _decode_redemption(fields: list[Any]) -> Redemption:
    command_id, points, taken, cancelled = fields
    from_lots = tuple(
        LotPoints(lot_id=lot_id, points=n, expires_at=_instant(expires)) for lot_id, n, expires in taken
    )
    return Redemption(command_id, points, from_lots, cancelled)


def _summary_fields(decoded: dict[str, Any]) -> dict[str, Any]:
    fields = {name: decoded[name] for name in _SUMMARY_FIELDS}
    for name in _INSTANTS:
        fields[name] = None if fields[name] is None else _instant(fields[name])
    return fields


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


# Whole-account records, written by earlier versions: read, never written.
_first_layout: TypeAdapter[Account] = TypeAdapter(Account)


def legacy_account(raw: bytes) -> Account:
    """A whole-account record: pydantic's form of the dataclass, or the second layout ('format': 2)."""
    d = orjson.loads(raw)
    if d.get("format") != 2:
        return _first_layout.validate_json(raw)
    return Account(
        member_id=d["member_id"],
        lots=oldest_first(Lot(lot_id, n, _instant(expires)) for lot_id, n, expires in d["lots"]),
        pending=by_maturity(
            PendingLot(lot_id, n, _instant(e), _instant(m)) for lot_id, n, e, m in d["pending"]
        ),
        purchases={
            purchase_id: _decode_purchase(purchase_id, fields)
            for purchase_id, fields in d["purchases"].items()
        },
        refunds=d["refunds"],
        redemptions={
            redemption_id: _decode_redemption(fields) for redemption_id, fields in d["redemptions"].items()
        },
        adjustments=d["adjustments"],
        outcomes={
            command_id: Outcome(first, last, rejected)
            for command_id, (first, last, rejected) in d["outcomes"].items()
        },
        **_summary_fields(d),
    )
