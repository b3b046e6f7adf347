"""`loyalty verify`: walk the events topic and check every stream's sequence and hash chain.

`ChainCheck` is pure: it is fed the records in log order and keeps, per stream, only the last
sequence and hash, so memory grows with members, not with events. Hashes are recomputed over the
JSON document exactly as stored, never over the pydantic model: the model upcasts older schema
versions, and the hash covers the document as it was written. `walk` is the Kafka edge.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import psycopg
from kafka import TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from schemas.canonical import GENESIS_HASH, event_hash
from services.audit.balances import BalanceCheck, Difference, differences, read_models
from services.audit.balances import render as balance_lines
from services.kafka_offsets import committed_reader, end_offsets
from services.projector.settings import ProjectorSettings

log = logging.getLogger(__name__)

ENVELOPE = (
    "event_id", "type", "schema_version", "member_id", "sequence", "occurred_at", "recorded_at",
    "command_id", "correlation_id", "rules_version", "prev_hash", "hash", "data",
)  # fmt: skip
LISTED = 20
PROGRESS_EVERY = 50_000


@dataclass(frozen=True)
class Break:
    """Where a stream's chain breaks; `sequence` is None when the record names none.

    `offset` is the record where the break shows: for missing sequences, the one after the hole.
    """

    member_id: str
    sequence: int | None
    offset: int
    partition: int
    reason: str


@dataclass(frozen=True)
class Report:
    events: int
    streams: int
    breaks: int  # every break found, several per stream possibly
    # The first of each stream, by (partition, offset): the log has no order across partitions,
    # and this one makes the report the same on every run.
    first_breaks: list[Break]

    @property
    def intact(self) -> bool:
        return self.breaks == 0


@dataclass(slots=True)
class _Gap:
    """Sequences skipped over: missing, unless they turn up later (then out of order)."""

    first: int
    last: int
    hash: str  # of the event before `first`: what a late `first` must chain from
    next_prev_hash: str  # `prev_hash` of the event after `last`: what the late `last` must hash to
    at: Break  # the event after the hole, where the gap showed
    disordered: bool = False  # filled other than from the low end: the closing link is unknown

    def missing(self) -> Break:
        span = str(self.first) if self.first == self.last else f"{self.first}..{self.last}"
        later = " or out of order" if self.disordered else ""
        reason = f"sequence {span} missing{later} (sequence {self.at.sequence} follows {self.first - 1})"
        return Break(self.at.member_id, self.first, self.at.offset, self.at.partition, reason)


@dataclass(slots=True)
class _Stream:
    partition: int
    sequence: int = 0
    hash: str = GENESIS_HASH
    gap: _Gap | None = None


class ChainCheck:
    """Checks records fed in log order: each partition's in offset order, partitions interleaved freely.

    A hole is held open until the end: if its sequences turn up later they were out of order, and
    their links are still checked; otherwise they are reported missing. After a break the stream
    goes on from the event as stored, so one altered event is one break, not a cascade.
    """

    def __init__(self) -> None:
        self.events = 0
        self.breaks = 0
        self._streams: dict[str, _Stream] = {}
        self._first: dict[str, Break] = {}

    def feed(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        self.events += 1
        document = _document(value)
        why = document if isinstance(document, str) else _unchainable(document)
        if isinstance(document, str) or why:
            self._break(_unchained(key, document, partition, offset, why))
            return
        at = Break(document["member_id"], document["sequence"], offset, partition, "")
        stream = self._streams.get(at.member_id)
        if stream is None:
            stream = self._streams[at.member_id] = _Stream(partition)
        reasons = _envelope(key, document, stream.partition, partition)
        reasons += _own_hash(document)
        reasons += self._follow(stream, at, document)
        if reasons:
            self._break(replace(at, reason="; ".join(reasons)))

    def finish(self) -> Report:
        for stream in self._streams.values():
            if stream.gap is not None:
                self._break(stream.gap.missing())
                stream.gap = None
        first = sorted(self._first.values(), key=lambda b: (b.partition, b.offset))
        return Report(self.events, len(self._streams), self.breaks, first)

    def _follow(self, stream: _Stream, at: Break, document: dict[str, Any]) -> list[str]:
        """Advance the stream by this event, or say why it does not follow."""
        sequence, prev_hash, own = at.sequence or 0, document["prev_hash"], document["hash"]
        if sequence == stream.sequence + 1:
            linked = prev_hash == stream.hash
            stream.sequence, stream.hash = sequence, own
            return [] if linked else [_unlinked(sequence)]
        if sequence > stream.sequence + 1:
            if stream.gap is not None:  # an earlier hole never filled
                self._break(stream.gap.missing())
            stream.gap = _Gap(stream.sequence + 1, sequence - 1, stream.hash, prev_hash, at)
            stream.sequence, stream.hash = sequence, own
            return []
        gap = stream.gap
        if gap is not None and gap.first <= sequence <= gap.last:
            return [
                f"out of order: sequence {sequence} after {stream.sequence}",
                *self._fill(stream, gap, at, document),
            ]
        if sequence == stream.sequence:
            copy = " (a copy)" if own == stream.hash else ", a different event"
            return [f"repeated: sequence {sequence} again{copy}"]
        return [f"sequence {sequence} after {stream.sequence}: repeated or out of order"]

    def _fill(self, stream: _Stream, gap: _Gap, at: Break, document: dict[str, Any]) -> list[str]:
        """A late event of a hole: check what links can still be checked, and shrink the hole."""
        reasons = []
        if at.sequence == gap.first and not gap.disordered:
            if document["prev_hash"] != gap.hash:
                reasons.append(_unlinked(gap.first))
            gap.first, gap.hash = gap.first + 1, document["hash"]
        elif at.sequence == gap.last:
            gap.last, gap.disordered = gap.last - 1, True
        else:
            gap.disordered = True
        if gap.first > gap.last:
            if not gap.disordered and gap.hash != gap.next_prev_hash:
                reasons.append(f"prev_hash of sequence {gap.last + 1} is not the hash of {gap.last}")
            stream.gap = None
        return reasons

    def _break(self, found: Break) -> None:
        self.breaks += 1
        known = self._first.get(found.member_id)
        if known is None or (found.partition, found.offset) < (known.partition, known.offset):
            self._first[found.member_id] = found


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")  # NaN would hash as null in the canonical form


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # one for all: json.loads builds one per call


def _document(value: bytes | None) -> dict[str, Any] | str:
    """The JSON object as stored (UTF-8, as the contract says), or why there is none."""
    if value is None:
        return "no value"
    try:
        document = _DECODER.decode(value.decode())
    except (ValueError, RecursionError):
        return "not JSON"
    return document if isinstance(document, dict) else "not a JSON object"


def _unchained(
    key: bytes | None, document: dict[str, Any] | str, partition: int, offset: int, why: str
) -> Break:
    """A record that cannot take a place in a chain: filed under its member, else its key."""
    fields = document if isinstance(document, dict) else {}
    member_id, sequence = fields.get("member_id"), fields.get("sequence")
    who = member_id if isinstance(member_id, str) and member_id else _decoded(key)
    return Break(who, sequence if type(sequence) is int else None, offset, partition, why)


def _envelope(key: bytes | None, document: dict[str, Any], home: int, partition: int) -> list[str]:
    """What is wrong around the chain: missing fields, the record's key, the member's partition."""
    reasons = [f"missing {name}" for name in ENVELOPE if name not in document]
    if key != document["member_id"].encode():
        reasons.append(f"record key {_decoded(key)!r} is not the member_id")
    if partition != home:
        reasons.append(f"on partition {partition}, the member's earlier events on {home}")
    return reasons


def _own_hash(document: dict[str, Any]) -> list[str]:
    try:
        if event_hash(document) == document["hash"]:
            return []
    except TypeError as error:  # e.g. an integer beyond 64 bits: no canonical form
        return [f"no canonical form: {error}"]
    return ["hash does not match the event as stored (altered)"]


def _unchainable(document: dict[str, Any]) -> str:
    """Why the record cannot take a place in a chain; empty when it can."""
    member_id, sequence = document.get("member_id"), document.get("sequence")
    if not isinstance(member_id, str) or not member_id:
        return "no member_id"
    if type(sequence) is not int or sequence < 1:
        return "sequence is not a positive integer"
    missing = [name for name in ("prev_hash", "hash") if not isinstance(document.get(name), str)]
    return f"no {' or '.join(missing)}" if missing else ""


def _unlinked(sequence: int) -> str:
    if sequence == 1:
        return "prev_hash of sequence 1 is not the genesis hash"
    return f"prev_hash is not the hash of sequence {sequence - 1}"


def _decoded(key: bytes | None) -> str:
    return "?" if key is None else key.decode("utf-8", "replace")


class VerifyError(Exception):
    """The log could not be read to its end: no verdict."""


def walk(
    bootstrap: str, topic: str, check: ChainCheck, balances: BalanceCheck | None = None, stall_s: float = 60.0
) -> None:
    """Feed `check` (and `balances`) every committed record of `topic` below the end offsets taken
    at the start.

    Records appended meanwhile are left out, so the verdict is about one fixed prefix of the log.
    """
    consumer = committed_reader(
        bootstrap,
        "loyalty-verify",
        allow_auto_create_topics=False,  # a mistyped topic must not appear, empty and "intact"
        max_poll_records=10_000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        if not consumer.partitions_for_topic(topic):
            raise VerifyError(f"topic {topic} does not exist")
        ends = end_offsets(consumer, topic, timeout_ms=10_000)
        partitions = [TopicPartition(topic, partition) for partition in sorted(ends)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        pending = {tp for tp in partitions if ends[tp.partition] > 0}
        moved, reported = time.monotonic(), 0
        while pending:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset >= ends[tp.partition]:
                        break
                    check.feed(record.key, record.value, record.partition, record.offset)
                    if balances is not None:
                        balances.feed(record.key, record.value, record.partition, record.offset)
            done = {
                tp for tp in pending if (consumer.position(tp, timeout_ms=1000) or 0) >= ends[tp.partition]
            }
            if done or check.events > reported:
                moved = time.monotonic()
            elif time.monotonic() - moved > stall_s:
                raise VerifyError(
                    f"no progress for {stall_s:.0f} s on partitions {sorted(tp.partition for tp in pending)}"
                )
            if done:
                consumer.pause(*done)
                pending -= done
            if check.events // PROGRESS_EVERY > reported // PROGRESS_EVERY:
                log.info("verifying", extra={"events": check.events, "topic": topic})
            reported = check.events
    finally:
        consumer.close()


def render(report: Report, topic: str, listed: int = LISTED) -> list[str]:
    """The report as the auditor reads it: counts, the first break of each stream, the verdict."""
    lines = [f"{report.events} events in {report.streams} streams (members and $program) on {topic}"]
    if report.intact:
        return [*lines, "chain intact"]
    streams = len(report.first_breaks)
    lines.append(f"{_many(report.breaks, 'break')} in {_many(streams, 'stream')}; the first of each:")
    for found in report.first_breaks[:listed]:
        lines.append(
            f"  member {found.member_id} sequence {_number(found.sequence)}"
            f" (partition {found.partition}, offset {found.offset}): {found.reason}"
        )
    if streams > listed:
        lines.append(f"  ... and {streams - listed} more streams with breaks")
    first = report.first_breaks[0]
    return [
        *lines,
        f"first break: member {first.member_id} sequence {_number(first.sequence)}: {first.reason}",
    ]


def _many(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _number(sequence: int | None) -> str:
    return "?" if sequence is None else str(sequence)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic", help="the topic to verify (default: LOYALTY_TOPIC_EVENTS), e.g. a copy of it"
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every chain is intact, every balance adds up and the read models agree with the
    log; 1 otherwise; 2 when the log or the read models could not be read."""
    try:
        settings = ProjectorSettings()
    except ValidationError as error:
        print(f"loyalty verify: {error}", file=sys.stderr)
        return 2
    topic = args.topic or settings.topic_events
    # The read models are compared only with a database configured: the default is a local one.
    configured = "database_url" in settings.model_fields_set
    check, started = ChainCheck(), time.monotonic()
    try:
        # Read before the log's ends are taken, so that the projector's positions are within them.
        projection = read_models(settings.database_url, settings.read_schema, topic) if configured else None
        balances = BalanceCheck(projection.positions if projection is not None else None)
        walk(settings.kafka_bootstrap, topic, check, balances)
    except (KafkaError, VerifyError, psycopg.Error) as error:
        print(f"loyalty verify: {error}", file=sys.stderr)
        return 2
    report, balance_report = check.finish(), balances.finish()
    compared: list[Difference] | str = (
        differences(balance_report.at_positions, projection.members)
        if projection is not None
        else f"no projection of {topic} in schema {settings.read_schema}"
        if configured
        else "LOYALTY_DATABASE_URL is not set"
    )
    seconds = time.monotonic() - started
    log.info(
        "verified", extra={"events": report.events, "seconds": round(seconds, 2), "breaks": report.breaks}
    )
    chain = render(report, topic)
    # The chain's verdict stays the last line.
    print("\n".join([*chain[:-1], *balance_lines(balance_report, compared), chain[-1]]))
    differs = isinstance(compared, list) and bool(compared)
    return 0 if report.intact and not balance_report.unbalanced and not differs else 1
