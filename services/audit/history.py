"""`loyalty history MEMBER`: the member's events with running balances, each explained by its rule.

It reads the events topic, the source of truth, never a read model: an auditor's answer must not
depend on the projection being audited. Three separate parts: reading the member's partition
(`read_events`), the pure explanation (`history_rows`) and the output formats (`render`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from schemas.effects import effect
from schemas.events import (
    CommandRejected,
    EarningRule,
    Event,
    EventData,
    MemberEnrolled,
    PointsAdjusted,
    PointsEarned,
    PointsExpired,
    PointsMatured,
    PointsRedeemed,
    PointsRestored,
    PointsReversed,
    ProgramRulesChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    RedemptionCancelled,
    TierChanged,
    TierRetained,
)
from schemas.money import from_minor
from schemas.topics import KafkaSettings
from services.kafka_offsets import committed_reader
from services.ledger.partitioning import partition_for

FORMATS = ("table", "json", "csv")
# Shorter column titles, so that a row fits a terminal line before its explanation.
TITLES = {
    "sequence": "seq",
    "available_change": "avail +/-",
    "pending_change": "pend +/-",
    "rules_version": "rules",
}


class HistoryError(Exception):
    """The log could not be read completely: no answer is better than a wrong balance."""


@dataclass(frozen=True, slots=True)
class Row:
    """One event as the auditor sees it: what it changed, the balances after it, and why."""

    sequence: int
    occurred_at: datetime
    recorded_at: datetime
    type: str
    available_change: int
    pending_change: int
    available: int
    pending: int
    rules_version: int
    explanation: str


# --- the pure part: events -> rows ---------------------------------------------------------


def history_rows(events: Iterable[Event], as_of: datetime | None = None) -> list[Row]:
    """The events in sequence, cut at `as_of` (business time, inclusive), with running balances.

    Point changes come from `schemas.effects`, as the ledger's and the projector's do, so this
    explains the very numbers the ledger decided on and the read API serves.
    """
    available = pending = 0
    found = []
    for event in sorted(events, key=lambda event: event.sequence):
        if as_of is not None and event.occurred_at > as_of:
            continue
        change = effect(event.data).points
        available += change.available
        pending += change.pending
        found.append(
            Row(
                sequence=event.sequence,
                occurred_at=event.occurred_at,
                recorded_at=event.recorded_at,
                type=event.type,
                available_change=change.available,
                pending_change=change.pending,
                available=available,
                pending=pending,
                rules_version=event.rules_version,
                explanation=explain(event.data),
            )
        )
    return found


def explain(data: EventData) -> str:
    """The rule behind a change in points, or what happened for an event that changes none."""
    match data:
        case PointsEarned():
            pending = f"; pending until {_instant(data.matures_at)}" if data.matures_at else ""
            return f"purchase {data.purchase_id}: {earning(data.rule)}{pending}{_repaid(data.debt_repaid)}"
        case PointsMatured():
            return f"pending period over{_repaid(data.debt_repaid)}"
        case PointsReversed():
            debt = f"; debt added {data.debt_added}" if data.debt_added else ""
            return (
                f"refund {data.refund_id} of purchase {data.purchase_id}: "
                f"points earned on what was returned reversed, none that expired{debt}"
            )
        case PointsRedeemed():
            return f"redemption {data.redemption_id}: oldest lots first"
        case RedemptionCancelled():
            return f"redemption {data.redemption_id} cancelled: points back to their lots"
        case PointsRestored():
            back = f"redemption {data.redemption_id} cancelled: points back to their lots"
            return back + _repaid(data.debt_repaid)
        case PointsExpired():
            return f"lots expired: {', '.join(item.lot_id for item in data.lots)}"
        case PointsAdjusted():
            return (
                f"adjustment {data.adjustment_id} by {data.actor}: {data.reason}{_repaid(data.debt_repaid)}"
            )
    return describe(data)


def earning(rule: EarningRule) -> str:
    """`1 point/CNY, silver x1.2, beauty items x2, floor`: the factors of the earning, in order."""
    bonuses = "".join(f", {category} items x{factor}" for category, factor in rule.category_bonuses.items())
    return f"{rule.points_per_cny} point/CNY, {rule.tier} x{rule.tier_multiplier}{bonuses}, {rule.rounding}"


def describe(data: EventData) -> str:
    match data:
        case MemberEnrolled():
            return f"enrolled via {data.via}, tier {data.tier}"
        case PurchaseRecorded():
            return f"purchase {data.purchase_id}: {from_minor(data.amount_minor)} {data.currency}"
        case PurchaseRefunded():
            total = from_minor(data.refunded_total_minor)
            items = "".join(f"; {item.sku} ({item.category}) {item.amount}" for item in data.items)
            return (
                f"refund {data.refund_id} of purchase {data.purchase_id}: "
                f"{from_minor(data.amount_minor)} CNY ({total} refunded in all){items}"
            )
        case TierChanged() if data.reason == "manual":
            return f"tier {data.from_tier} -> {data.to_tier}, manual by {data.actor}: {data.note}"
        case TierChanged():
            return (
                f"tier {data.from_tier} -> {data.to_tier}, {data.reason}: "
                f"{_window(data.qualifying_spend_minor, data.purchase_count)}"
            )
        case TierRetained():
            return f"tier {data.tier} retained: {_window(data.qualifying_spend_minor, data.purchase_count)}"
        case ProgramRulesChanged():
            return f"program rules version {data.version} recorded"
        case CommandRejected():
            return f"{data.command} rejected: {data.code}"
    return ""


def _repaid(points: int) -> str:
    return f"; debt repaid {points}" if points else ""


def _window(spend_minor: int, purchases: int) -> str:
    return f"{from_minor(spend_minor)} CNY qualifying spend in {purchases} purchase(s)"


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def first_break(events: list[Event]) -> int | None:
    """The first sequence missing or repeated in 1..n: the balance is then not to be trusted."""
    found = sorted(event.sequence for event in events)
    return next((expected for expected, seen in enumerate(found, start=1) if seen != expected), None)


# --- formatting ------------------------------------------------------------------------------


def render(found: list[Row], output: str) -> str:
    documents = [_document(row) for row in found]
    if output == "json":
        return json.dumps(documents, indent=2, ensure_ascii=False) + "\n"
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        writer.writerows(documents)
        return buffer.getvalue()
    return table(documents)


def table(documents: list[dict[str, Any]]) -> str:
    """Aligned columns, numbers to the right, the explanation last so that it may run long."""
    names = [field.name for field in fields(Row)]
    headers = [TITLES.get(name, name) for name in names]
    cells = [headers, *([_cell(name, document[name]) for name in names] for document in documents)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(headers) - 1)]
    numeric = [name not in ("occurred_at", "recorded_at", "type") for name in names]

    def line(values: list[str]) -> str:
        padded = [
            value.rjust(width) if numeric[column] else value.ljust(width)
            for column, (value, width) in enumerate(zip(values, widths, strict=False))
        ]
        return "  ".join([*padded, values[-1]]).rstrip()

    rule = "  ".join("-" * width for width in [*widths, len(headers[-1])])
    return "\n".join([line(headers), rule, *(line(values) for values in cells[1:])]) + "\n"


def summary(member_id: str, found: list[Row], as_of: datetime | None) -> str:
    """The balance the table explains, under it."""
    cut = f" as of {_instant(as_of)}" if as_of else ""
    available, pending = (found[-1].available, found[-1].pending) if found else (0, 0)
    return f"\n{member_id}{cut}: {len(found)} event(s), available {available}, pending {pending}\n"


def _cell(name: str, value: Any) -> str:
    if name in ("available_change", "pending_change"):
        return f"{value:+d}" if value else ""
    return str(value)


def _document(row: Row) -> dict[str, Any]:
    document = asdict(row)
    document["occurred_at"] = _instant(row.occurred_at)
    document["recorded_at"] = _instant(row.recorded_at)
    return document


# --- Kafka I/O ---------------------------------------------------------------------------------


def read_events(settings: KafkaSettings, member_id: str) -> list[Event]:
    """The member's committed events: only its partition, up to the end offset taken at the start.

    The end is fixed first so that the read terminates while the ledger keeps appending; a
    record that does not parse stops the read, because skipping it would misstate the balance.
    """
    consumer = committed_reader(settings.kafka_bootstrap, "loyalty-history")
    try:
        partitions = consumer.partitions_for_topic(settings.topic_events)
        if not partitions:
            raise HistoryError(f"topic {settings.topic_events} not found")
        tp = TopicPartition(settings.topic_events, partition_for(member_id, len(partitions)))
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        key = member_id.encode()
        events = []
        while consumer.position(tp) < end:
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                if record.offset >= end or record.key != key:
                    continue
                try:
                    events.append(Event.from_bytes(record.value))
                except ValidationError as error:
                    raise HistoryError(
                        f"event at {tp.topic}/{tp.partition}@{record.offset}: {error}"
                    ) from error
        return events
    finally:
        consumer.close()


# --- the command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("member", metavar="MEMBER", help="the member id")
    parser.add_argument(
        "--as-of",
        type=_as_of,
        metavar="T",
        help="only events that occurred at or before T (ISO 8601; without an offset, UTC)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def run(args: argparse.Namespace) -> int:
    """Print the member's history; 1 for a member with no events, 2 when the log cannot be read."""
    try:
        events = read_events(KafkaSettings(), args.member)
    except (HistoryError, KafkaError) as error:
        print(f"loyalty history: cannot read the log: {error}", file=sys.stderr)
        return 2
    if not events:
        print(f"loyalty history: no events for member {args.member!r}", file=sys.stderr)
        return 1
    if (broken := first_break(events)) is not None:
        print(
            f"loyalty history: warning: the log of {args.member!r} breaks at sequence {broken}; "
            "run `loyalty verify`",
            file=sys.stderr,
        )
    found = history_rows(events, args.as_of)
    sys.stdout.write(render(found, args.format))
    if args.format == "table":
        sys.stdout.write(summary(args.member, found, args.as_of))
    return 0


def _as_of(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {value!r}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
