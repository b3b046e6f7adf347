"""A realistic backlog on the events topic, a database of its own, and the projector run over it.

Events are made as the processor makes them (decide, then seal, one account per member) without
running it: mostly purchases, some with items in categories, plus refunds, redemptions and their
cancellations, adjustments, manual tier changes and the clock ticks that fall due, so that every
read-model table gets rows. Rejected commands are recorded as CommandRejected, as the processor
does. Times spread over the last 13 months, in order.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import psycopg
from kafka import KafkaProducer
from psycopg import sql

from schemas.events import CommandRejected, Event, EventData
from schemas.inbound import PurchaseItem
from schemas.rules import ProgramRules
from services.kafka_offsets import committed_reader, end_offsets
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import (
    AdjustPoints,
    AdvanceClock,
    CancelRedemption,
    Command,
    RecordPurchase,
    RecordRules,
    RedeemPoints,
    RefundPurchase,
    SetTier,
)
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import LedgerError
from services.ledger.processor import PROGRAM_STREAM

CATEGORIES = ("beauty", "fashion", "home", "electronics", "grocery", "sports", "books", "toys")
SPAN = timedelta(days=395)


class _Ids(TypedDict):
    command_id: str
    correlation_id: str
    member_id: str
    occurred_at: datetime


def member_id(index: int) -> str:
    return f"m-{index:07d}"


class _Generator:
    def __init__(self, events: int, members: int, rules: ProgramRules, seed: int) -> None:
        self.target = events
        self.rules = rules
        self.rng = random.Random(seed)
        self.accounts = [Account.new(member_id(index)) for index in range(members)]
        self.end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        self.start = self.end - SPAN
        self.made = 0
        self.commands = 0

    def now(self) -> datetime:
        return self.start + SPAN * (self.made / self.target)

    def events(self) -> Iterator[Event]:
        program = Account.new(PROGRAM_STREAM)
        yield from self._apply(program, self._rules_command())[1]
        while self.made < self.target:
            index = self.rng.randrange(len(self.accounts))
            account, events = self._apply(self.accounts[index], self._command(self.accounts[index]))
            self.accounts[index] = account
            yield from events

    def _apply(self, account: Account, command: Command) -> tuple[Account, list[Event]]:
        self.commands += 1
        try:
            decided: list[EventData] = decide(account, command, self.rules)
        except LedgerError as error:  # as the processor records a refused command
            decided = [CommandRejected(command=type(command).__name__, code=error.code, detail=error.detail)]
        account, events = seal(account, command, decided, self.rules.version, command.occurred_at)
        self.made += len(events)
        return account, events

    def _ids(self, kind: str, account: Account, now: datetime) -> _Ids:
        command_id = f"{kind}:{self.commands}"
        return {
            "command_id": command_id,
            "correlation_id": f"corr:{command_id}",
            "member_id": account.member_id,
            "occurred_at": now,
        }

    def _rules_command(self) -> RecordRules:
        return RecordRules(
            command_id=f"rules:{self.rules.version}",
            correlation_id="rules",
            member_id=PROGRAM_STREAM,
            occurred_at=self.start,
        )

    def _command(self, account: Account) -> Command:
        now, roll = self.now(), self.rng.random()
        due = account.next_due() if account.enrolled else None
        if due is not None and due <= now:  # what the scheduler's tick would do first
            return AdvanceClock(**self._ids("tick", account, now))
        if not account.enrolled or roll < 0.72:
            return self._purchase(account, now)
        if roll < 0.80:
            refundable = [
                (pid, p) for pid, p in account.purchases.items() if p.amount_minor > p.refunded_minor
            ]
            if refundable:
                purchase_id, purchase = self.rng.choice(refundable)
                left = purchase.amount_minor - purchase.refunded_minor
                return RefundPurchase(
                    **self._ids("refund", account, now),
                    received_at=now,
                    refund_id=f"rf-{self.commands}",
                    purchase_id=purchase_id,
                    amount_minor=left if self.rng.random() < 0.6 else max(1, left // 2),
                )
        elif roll < 0.92:
            points = self.rng.choice((100, 200, 300, 500, 1000))
            if points > account.available and self.rng.random() < 0.9:
                points = account.available // 100 * 100
            if points > 0:  # one in ten asks for more than is available: rejected, as in real traffic
                return RedeemPoints(
                    **self._ids("redeem", account, now),
                    redemption_id=f"rd-{self.commands}",
                    points=points,
                    reward="voucher",
                )
        elif roll < 0.94:
            open_ = [rid for rid, r in account.redemptions.items() if not r.cancelled]
            if open_:
                return CancelRedemption(**self._ids("cancel", account, now), redemption_id=open_[-1])
        elif roll < 0.98:
            return AdjustPoints(
                **self._ids("adjust", account, now),
                adjustment_id=f"adj-{self.commands}",
                points=self.rng.choice((50, 100, 200, -50)),
                reason="goodwill",
                actor="key-ops",
            )
        else:
            tiers = [tier.name for tier in self.rules.tiers if tier.name != account.tier]
            return SetTier(
                **self._ids("set-tier", account, now),
                tier=self.rng.choice(tiers),
                reason="service recovery",
                actor="key-ops",
            )
        return self._purchase(account, now)

    def _purchase(self, account: Account, now: datetime) -> RecordPurchase:
        # Median 250 CNY, a long tail: enough for some silver and gold members, a few platinum.
        amount = max(500, min(5_000_000, int(self.rng.lognormvariate(math.log(25_000), 1.0))))
        items: tuple[PurchaseItem, ...] = ()
        if self.rng.random() < 0.6:
            count = self.rng.randint(1, 3)
            shares = [amount // count] * count
            shares[0] += amount - sum(shares)
            items = tuple(
                PurchaseItem(
                    sku=f"sku-{self.rng.randrange(500)}",
                    category=self.rng.choice(CATEGORIES),
                    quantity=1,
                    amount=f"{share // 100}.{share % 100:02d}",
                )
                for share in shares
            )
        return RecordPurchase(
            **self._ids("purchase", account, now),
            received_at=now,
            purchase_id=f"o-{self.commands}",
            amount_minor=amount,
            currency="CNY",
            channel=self.rng.choice(("store", "online", "app")),
            items=items,
        )


def generate(events: int, members: int, rules: ProgramRules | None = None, seed: int = 1) -> Iterator[Event]:
    """About `events` sealed events (the last command's events are kept whole) across `members`."""
    return _Generator(events, members, rules or ProgramRules(), seed).events()


def publish(bootstrap: str, topic: str, events: Iterable[Event]) -> int:
    """Send the events keyed by member (the processor's partitioning); return how many."""
    # Idempotence keeps each member's events in order through retries (acks=1 would silently turn
    # it off, and a retried batch could land after a later one: the projector drops such events).
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=50,
        batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    sent = 0
    try:
        for event in events:
            producer.send(topic, key=event.member_id.encode(), value=event.to_bytes())
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def load(bootstrap: str, topic: str, events: int, members: int) -> int:
    """Generate and publish a backlog, printing what it took; return the events sent."""
    print(f"generating and publishing ~{events} events for {members} members ...", flush=True)
    started = time.monotonic()
    sent = publish(bootstrap, topic, generate(events, members))
    print(f"  {sent} events on {topic} in {time.monotonic() - started:.1f} s", flush=True)
    return sent


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A database of the run's own next to the one `url` names, dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(url, dbname=name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def log_end(bootstrap: str, topic: str) -> int:
    """The sum of the topic's end offsets."""
    reader = committed_reader(bootstrap, "bench-offsets")
    try:
        return sum(end_offsets(reader, topic, timeout_ms=10_000).values())
    finally:
        reader.close()


def applied(conn: psycopg.Connection, topic: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(next_offset), 0) FROM projector_checkpoints WHERE topic = %s", (topic,)
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Checkpoint:
    """One partition's row of projector_checkpoints.

    A poll spanning several partitions counts once in each partition's `batches`, and its whole
    `apply_seconds` (measured before its writes and commit) is added to each of them.
    """

    partition: int
    next_offset: int
    batches: int
    records: int
    apply_seconds: float


@dataclass(frozen=True)
class Projection:
    seconds: float  # from the projector's launch until every record was applied
    startup: float  # from the launch until its first batch was applied
    first_batch: int  # records that batch applied
    checkpoints: list[Checkpoint]
    # From the projector's own "batch applied" lines: records, events applied, duplicates and
    # seconds (decode to commit) of each poll.
    polls: list[tuple[int, int, int, float]]

    @property
    def applied(self) -> int:
        return sum(applied for _, applied, _, _ in self.polls)

    @property
    def duplicates(self) -> int:
        return sum(duplicates for _, _, duplicates, _ in self.polls)


def project(env: dict[str, str], database_url: str, topic: str, total: int, log: Path) -> Projection:
    """Run `loyalty projector` (a process of its own) until the checkpoints reach `total`, then stop it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        with log.open("ab") as out:
            start = out.tell()
            projector = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "projector"],
                env={
                    **os.environ,
                    **env,
                    "LOYALTY_DATABASE_URL": database_url,
                    "LOYALTY_LOG_LEVEL": "DEBUG",  # a line per applied poll
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        launched = time.monotonic()
        try:
            first_at, first = None, 0
            while (done := applied(conn, topic)) < total:
                if done and first_at is None:
                    first_at, first = time.monotonic(), done
                if projector.poll() is not None:
                    raise RuntimeError(f"the projector exited ({projector.returncode}); see {log}")
                time.sleep(0.02)
            finished = time.monotonic()
        finally:
            projector.terminate()
            projector.wait(timeout=30)
        rows = conn.execute(
            "SELECT partition, next_offset, batches, records, apply_seconds FROM projector_checkpoints "
            "WHERE topic = %s ORDER BY partition",
            (topic,),
        ).fetchall()
    with log.open("rb") as lines:
        lines.seek(start)
        polls = [
            (int(line["records"]), int(line["applied"]), int(line["duplicates"]), float(line["seconds"]))
            for line in map(_json_line, lines)
            if line.get("msg") == "batch applied"
        ]
    return Projection(
        seconds=finished - launched,
        startup=(first_at or finished) - launched,
        first_batch=first,
        checkpoints=[Checkpoint(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4])) for r in rows],
        polls=polls,
    )


def _json_line(line: bytes) -> dict[str, Any]:
    try:
        found = json.loads(line)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def table_rows(database_url: str, tables: Iterable[str]) -> dict[str, int]:
    """Rows in each table: whether the backlog reached every read model."""
    counts = {}
    with psycopg.connect(database_url) as conn:
        for table in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts
