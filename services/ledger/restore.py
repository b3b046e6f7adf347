"""Bringing the local copies of newly assigned changelog partitions up to date, a slice at a time.

Restoring runs in the processor's main loop, between polls, never in a rebalance callback: the
callbacks run where the group's heartbeats are sent, and a long restore there lost the member
its place in the group, again and again. Between slices the loop polls, which keeps the
membership and serves the partitions already restored.

Offsets first. For each partition the restore first fetches the group's committed input offsets
as stable offsets (a read_committed consumer asks with `require_stable`, so the fetch waits
while an earlier owner's transaction that sent offsets is still open). Every transaction also
writes, to the changelog, how far it consumed each input partition (`/input/{topic}`). The
restore reads the changelog until those checkpoints reach the committed offsets: it never hands
over state older than the offsets the partition will resume from, even when the old owner's
transaction committed after the new owner was given its partitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from services.kafka_offsets import committed_reader
from services.ledger import state_records
from services.ledger.settings import LedgerSettings
from services.ledger.state_records import Change
from services.ledger.state_store import StateStore

log = logging.getLogger(__name__)

# The input offsets a partition resumes from, by topic (absent: nothing committed yet).
CommittedOffsets = Callable[[int], dict[str, int] | None]


@dataclass
class _Progress:
    started: float
    committed: dict[str, int] | None = None
    end: int = 0
    behind_since: float | None = None
    applied: int = 0
    changed: bool = False
    from_scratch: bool = False


class Restore:
    def __init__(self, settings: LedgerSettings, store: StateStore, committed: CommittedOffsets) -> None:
        self._settings = settings
        self._store = store
        self._committed = committed
        self._topic = settings.topic_state
        self._pending: dict[int, _Progress] = {}
        self._consumer: KafkaConsumer | None = None
        # How long to wait for the changelog to show a transaction whose offsets are committed.
        self._checkpoint_wait_s = settings.transaction_timeout_ms / 1000

    @property
    def pending(self) -> set[int]:
        return set(self._pending)

    def add(self, partitions: set[int]) -> None:
        for partition in partitions - set(self._pending):
            self._pending[partition] = _Progress(started=time.monotonic())

    def remove(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._pending.pop(partition, None)
        self._assign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def step(self, budget_s: float) -> dict[int, dict[str, int] | None]:
        """Restore for up to `budget_s`; the partitions finished, with the input offsets to resume from."""
        deadline = time.monotonic() + budget_s
        for partition, progress in self._pending.items():
            if progress.committed is None:
                self._start(partition, progress)  # not yet when the offsets are not stable: next step
        consumer = self._reader()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=100, max_records=20_000)
            for tp, records in batch.items():
                self._apply(tp.partition, records)
            if not batch:
                break
        return self._finished(consumer)

    def _start(self, partition: int, progress: _Progress) -> None:
        committed = self._committed(partition)
        if committed is None:
            return
        progress.committed = committed
        consumer = self._reader()
        tp = TopicPartition(self._topic, partition)
        start = consumer.beginning_offsets([tp])[tp]
        progress.end = consumer.end_offsets([tp])[tp]
        local = self._store.local(partition)
        retention = int(self._settings.topic_configs()[self._topic]["delete.retention.ms"])
        if local.stale(retention) or not start <= local.position <= progress.end:
            log.warning(
                "local state rebuilt from the changelog",
                extra={
                    "partition": partition,
                    "position": local.position,
                    "start": start,
                    "end": progress.end,
                },
            )
            local.wipe()
            progress.changed = True
        progress.from_scratch = local.position <= start < progress.end
        self._assign()
        consumer.seek(tp, max(local.position, start))

    def _reader(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = committed_reader(
                self._settings.kafka_bootstrap,
                f"{self._settings.transactional_id}-restore",
                max_partition_fetch_bytes=8 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
            )
        return self._consumer

    def _assign(self) -> None:
        if self._consumer is None:
            return
        tps = [
            TopicPartition(self._topic, p)
            for p, progress in self._pending.items()
            if progress.committed is not None
        ]
        if set(tps) != self._consumer.assignment():
            positions = {tp: self._consumer.position(tp) for tp in self._consumer.assignment() if tp in tps}
            self._consumer.assign(tps)
            for tp, position in positions.items():
                self._consumer.seek(tp, position)

    def _apply(self, partition: int, records: list[ConsumerRecord]) -> None:
        progress = self._pending.get(partition)
        if progress is None or not records:
            return
        local = self._store.local(partition)
        changes: list[Change] = []
        for record in records:
            key = record.key.decode()
            if "/" in key:
                changes.append((key, record.value))
            elif record.value is not None:  # a whole account, as earlier versions wrote it
                local.apply(changes, record.offset)  # what came before it, so that it replaces that
                changes = [(held, None) for held, _ in local.member(key)]
                changes += state_records.records(state_records.legacy_account(record.value)).items()
                changes.append((state_records.key(key, state_records.LEGACY), b"1"))
        local.apply(changes, records[-1].offset + 1)
        progress.applied += len(records)
        progress.changed = True

    def _finished(self, consumer: KafkaConsumer) -> dict[int, dict[str, int] | None]:
        done: dict[int, dict[str, int] | None] = {}
        for partition, progress in list(self._pending.items()):
            if progress.committed is None:
                continue
            tp = TopicPartition(self._topic, partition)
            if consumer.position(tp) < progress.end:
                continue
            if not self._caught_up(partition, progress):
                progress.end = consumer.end_offsets([tp])[tp]  # its markers may still be on their way
                continue
            del self._pending[partition]
            self._store.restored(partition, progress.changed)
            done[partition] = progress.committed
            log.info(
                "partition restored",
                extra={
                    "partition": partition,
                    "records": progress.applied,
                    "from_scratch": progress.from_scratch,
                    "seconds": round(time.monotonic() - progress.started, 3),
                },
            )
        self._assign()
        return done

    def _caught_up(self, partition: int, progress: _Progress) -> bool:
        """Whether the changelog shows every transaction whose input offsets are committed."""
        assert progress.committed is not None
        checkpoints = self._store.local(partition).input_offsets()
        behind = {
            topic: offset
            for topic, offset in progress.committed.items()
            if checkpoints.get(topic, -1) < offset
        }
        if not behind:
            return True
        now = time.monotonic()
        progress.behind_since = progress.behind_since or now
        if now - progress.behind_since < self._checkpoint_wait_s:
            return False
        # Offsets moved by other means (a reset by an operator, a changelog of an earlier version
        # without checkpoints): the state is what the changelog holds.
        log.warning(
            "committed input offsets ahead of the changelog; resuming from them",
            extra={"partition": partition, "topics": sorted(behind)},
        )
        return True
