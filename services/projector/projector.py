"""The projector loop: each poll is applied in one Postgres transaction with its checkpoint.

The consumer group only splits partitions among instances; positions live in Postgres, next to
the read models, and are where a partition resumes when it is assigned. Kafka's committed
offsets are never used, so a crash between the two stores cannot skip or repeat an event.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable

import psycopg
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from services import collector
from services.kafka_compat import NO_CLIENT_METRICS, install_fixes
from services.migrations import schema_options
from services.projector import store
from services.projector.fold import DUPLICATE, Folded, decode, fold
from services.projector.settings import ProjectorSettings

log = logging.getLogger(__name__)


class CheckpointMoved(Exception):
    def __init__(self, stored: dict[int, int]) -> None:
        super().__init__(f"checkpoints moved: {stored}")
        self.stored = stored


def apply_batch(
    conn: psycopg.Connection,
    topic: str,
    batch: dict[TopicPartition, list[ConsumerRecord]],
    started: float,
    expected: dict[int, int] | None = None,
) -> Folded:
    """One batch into the read models, in one transaction with its checkpoint (see OpenBatch.add)."""
    with conn.transaction():
        folding = OpenBatch(conn, topic)
        folding.add(batch, expected)
        folding.write(started)
    return folding.folded


class OpenBatch:
    """Polls folded into the caller's open transaction, as if they were one batch.

    Each poll's events are copied at once and dropped from memory; the rows they change (members,
    lots, days...) are written once, with the checkpoint, by `write`. The more polls one
    transaction takes, the fewer times each row is written.
    """

    def __init__(self, conn: psycopg.Connection, topic: str) -> None:
        self._conn, self._topic = conn, topic
        self.folded = Folded()
        # Last applied sequence of each member seen so far: stored, or set by this transaction.
        self._last: dict[str, int] = {}
        # Partition -> (next offset, records read).
        self._read: dict[int, tuple[int, int]] = {}

    @property
    def records(self) -> int:
        return sum(count for _, count in self._read.values())

    def add(
        self, batch: dict[TopicPartition, list[ConsumerRecord]], expected: dict[int, int] | None = None
    ) -> None:
        """Fold `batch` in. With `expected` (next offset per partition, as this writer last left
        them), a checkpoint found elsewhere raises CheckpointMoved before anything is written."""
        # Partitions are locked as polls first bring them. Each call locks in ascending order; a
        # writer that adds several polls (a replay worker) holds partitions no other writer takes.
        unlocked = [tp.partition for tp in batch if tp.partition not in self._read]
        if unlocked:
            store.lock_partitions(self._conn, self._topic, unlocked)
        if expected is not None:
            stored = store.checkpoints(self._conn, self._topic, unlocked)
            if any(stored.get(partition, 0) != expected.get(partition, 0) for partition in unlocked):
                raise CheckpointMoved(stored)
        records = [
            decode(record.value) for partition_records in batch.values() for record in partition_records
        ]
        unseen = {r.event.member_id for r in records if not isinstance(r, str)} - self._last.keys()
        applied = store.applied(self._conn, unseen)
        self._last.update({member: sequence for member, (sequence, _) in applied.items()})
        self.folded.balances.update({member: balance for member, (_, balance) in applied.items()})
        self.folded.known |= applied.keys()
        fold(records, self._last, self.folded)
        with self._conn.cursor() as cur:
            store.copy_events(cur, self.folded)
        for tp, recs in batch.items():
            self._read[tp.partition] = (
                recs[-1].offset + 1,
                self._read.get(tp.partition, (0, 0))[1] + len(recs),
            )

    def write(self, started: float) -> None:
        store.write(self._conn, self.folded, self._topic, self._read, started)


Batch = dict[TopicPartition, list[ConsumerRecord]]

# Waits between attempts to reach Postgres again after a failure; the last one repeats.
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _SeekToCheckpoint(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs inside a poll: revoked (or lost) partitions are forgotten, assigned ones resumed."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._projector.forget(list(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._projector.resume(list(assigned))


class Projector:
    def __init__(self, settings: ProjectorSettings) -> None:
        self._settings = settings
        self._conn = self._connect()
        # Next offset per assigned partition, as last written to the checkpoints.
        self._applied: dict[int, int] = {}
        # The batch being read, by partition (see _next_batch).
        self._reading: Batch = {}
        # Set when Postgres failed: the consumer may be ahead of the checkpoints until _resync.
        self._unsynced = False
        install_fixes()
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.projector_group,
            client_id="loyalty-projector",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=settings.projector_batch_max,
            # A 1 MB fetch holds ~1,500 events: larger fetches fill a batch in fewer round trips.
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=settings.projector_session_timeout_ms,
            heartbeat_interval_ms=min(3000, settings.projector_session_timeout_ms // 3),
            metadata_max_age_ms=30_000,
            **NO_CLIENT_METRICS,
        )

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self._settings.database_url, options=schema_options(self._settings.read_schema)
        )

    def forget(self, revoked: list[TopicPartition]) -> None:
        """Drop what was read of partitions another instance may own by now, unapplied."""
        for tp in revoked:
            self._reading.pop(tp, None)
            self._applied.pop(tp.partition, None)

    def resume(self, assigned: list[TopicPartition]) -> None:
        """Read assigned partitions from their checkpoints; what was read of them before is dropped.

        Called inside a poll, where an error would fail the poll: if Postgres cannot say where
        to resume, the next step retries until it can, and nothing is applied before.
        """
        self.forget(assigned)
        try:
            self.seek_to_checkpoints(assigned)
        except psycopg.OperationalError as error:
            log.warning("checkpoints unreadable; resuming once postgres is back", extra={"error": str(error)})
            self._unsynced = True

    def seek_to_checkpoints(self, assigned: list[TopicPartition]) -> None:
        with self._conn.transaction():
            found = store.checkpoints(
                self._conn, self._settings.topic_events, [tp.partition for tp in assigned]
            )
        for tp in assigned:
            if tp.partition in found:
                self._consumer.seek(tp, found[tp.partition])
            else:
                self._consumer.seek_to_beginning(tp)
            self._applied[tp.partition] = found.get(tp.partition, 0)
        log.info(
            "reading from the checkpoints", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )

    def run(self, stop: threading.Event) -> None:
        # Known topic metadata before joining: a group leader without it assigns nothing, and
        # kafka-python would only notice at the next metadata refresh.
        self._consumer.partitions_for_topic(self._settings.topic_events)
        self._consumer.subscribe([self._settings.topic_events], listener=_SeekToCheckpoint(self))
        log.info("projector started")
        try:
            while not stop.is_set():
                with collector.paused():
                    self._step(stop)
        finally:
            self._consumer.close()
            self._conn.close()
            log.info("projector stopped")

    def _step(self, stop: threading.Event) -> None:
        if self._unsynced:
            self._resync(stop)
            return
        try:
            batch = self._next_batch()
            if self._unsynced:
                return  # a rebalance could not read the checkpoints: this was read from unknown positions
            if batch:
                self.apply(batch)
            else:
                self._advance_past_markers()
        except psycopg.OperationalError as error:
            # The transaction rolled back, or committed unseen if the connection died in COMMIT:
            # the checkpoints say which, so reading resumes from them, not from the consumer.
            log.warning("postgres failed; resuming from the checkpoints", extra={"error": str(error)})
            self._unsynced = True
        except KafkaError as error:
            # The broker is away (a restart): what was read of the batch is dropped unapplied, and
            # reading resumes from the checkpoints once it answers again.
            log.warning("kafka failed; resuming from the checkpoints", extra={"error": str(error)})
            self._unsynced = True
            stop.wait(1)

    def _resync(self, stop: threading.Event) -> None:
        """Reconnect if need be, with backoff, and seek every owned partition to its checkpoint.

        Nothing is polled meanwhile, so the consumer never runs ahead of what Postgres holds.
        """
        for attempt in itertools.count():
            if stop.is_set():
                return
            try:
                if self._conn.closed:
                    self._conn = self._connect()
                self.seek_to_checkpoints(list(self._consumer.assignment()))
            except psycopg.OperationalError as error:
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                log.warning("postgres unavailable", extra={"error": str(error), "retry_in_s": delay})
                stop.wait(delay)
            else:
                self._unsynced = False
                return

    def _next_batch(self) -> Batch:
        """Records of several polls, up to the batch bound in count and in time.

        Under a backlog this makes batches large (fewer, bigger transactions); when caught up,
        the first empty poll ends the batch so that nothing waits for company. A rebalance in a
        later poll drops what was read of the partitions it revokes or seeks (see `resume`), so
        a batch holds only partitions still owned, read from where their checkpoints are.
        """
        self._reading = {}
        limit = self._settings.projector_batch_max
        self._read(200, limit)
        deadline = time.monotonic() + self._settings.projector_batch_wait_ms / 1000
        while self._reading and (count := self._count()) < limit and time.monotonic() < deadline:
            if not self._read(10, limit - count):
                break
        batch, self._reading = self._reading, {}
        return batch

    def _read(self, timeout_ms: int, max_records: int) -> int:
        """One poll into the batch being read; the number of records it brought."""
        polled: Batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        for tp, records in polled.items():
            self._reading.setdefault(tp, []).extend(records)
        return sum(len(records) for records in polled.values())

    def _count(self) -> int:
        return sum(len(records) for records in self._reading.values())

    def _advance_past_markers(self) -> None:
        """Once idle, checkpoint past the transaction markers at the end of the log.

        A Kafka transaction's commit marker takes an offset but is never delivered; without this
        the lag of every partition written transactionally would never get below 1.
        """
        ahead = {}
        for tp in self._consumer.assignment():
            position = self._consumer.position(tp, timeout_ms=100)
            if position is not None and position > self._applied.get(tp.partition, position):
                ahead[tp.partition] = position
        if ahead:
            with self._conn.transaction():
                store.advance(self._conn, self._settings.topic_events, ahead)
            self._applied.update(ahead)

    def apply(self, batch: Batch) -> None:
        started = time.monotonic()
        try:
            folded = apply_batch(self._conn, self._settings.topic_events, batch, started, self._applied)
        except CheckpointMoved as moved:
            # Another writer (a rebuilt schema switched in, or the partition's new owner) moved on:
            # this batch is dropped and reading resumes from the checkpoints as they now are.
            log.warning("checkpoints moved; resuming from them", extra={"partitions": sorted(moved.stored)})
            for tp in batch.keys() & self._consumer.assignment():  # only an owned partition can be sought
                self._consumer.seek(tp, moved.stored.get(tp.partition, 0))
                self._applied[tp.partition] = moved.stored.get(tp.partition, 0)
            return
        self._applied.update({tp.partition: records[-1].offset + 1 for tp, records in batch.items()})
        unreadable = {reason: n for reason, n in folded.skipped.items() if reason != DUPLICATE}
        if unreadable:
            log.warning("events skipped", extra={"skipped": unreadable})
        for member_id, expected, found in folded.gaps:
            log.error(
                "sequence gap in the log",
                extra={"member_id": member_id, "expected": expected, "found": found},
            )
        log.debug(
            "batch applied",
            extra={
                "records": sum(len(records) for records in batch.values()),
                "applied": folded.applied,
                "duplicates": folded.duplicates,
                "seconds": round(time.monotonic() - started, 4),
            },
        )
