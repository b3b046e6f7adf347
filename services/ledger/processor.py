"""The single-writer loop: consume commands, decide, commit events + state + offsets atomically.

Each poll is one Kafka transaction holding the batch's events, the records of the accounts it
changed on the compacted changelog (with how far each input partition was consumed), replies
to the API, dead letters and re-routed records, and the consumed input offsets. The offsets are
sent with the consumer's group metadata, so a stale instance that lost its partitions is fenced
by the broker instead of committing twice.

A newly assigned partition is paused until its state is restored (`restore.Restore`, in this
loop, between polls); a transaction that fails leaves every partition to be restored again, so
that nothing decided in it survives in memory.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    RecordListTooLargeError,
)
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import ConsumerGroupMetadata, OffsetAndMetadata

from schemas.events import CommandRejected, Event, EventData
from schemas.rules import ProgramRules
from services import collector
from services.kafka_compat import (
    NO_CLIENT_METRICS,
    TransactionRecords,
    close_producer,
    install_fixes,
    start_sending_offsets,
)
from services.ledger.command_messages import (
    CommandReply,
    InvalidRecord,
    ReplyStatus,
    Tick,
    parse_command_record,
    parse_inbound_record,
)
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal_with_bytes
from services.ledger.domain.commands import AdvanceClock, Command, RecordRules
from services.ledger.domain.decide import decide, original_command
from services.ledger.domain.errors import IdempotencyKeyReused, LedgerError, UnknownMember
from services.ledger.instance import claim_instance
from services.ledger.ownership import announcement
from services.ledger.partitioning import partition_for
from services.ledger.restore import Restore
from services.ledger.settings import LedgerSettings
from services.ledger.state_records import Change, input_key
from services.ledger.state_store import StateStore
from services.ledger.topics import ensure_topics

log = logging.getLogger(__name__)

# The program's own stream: where ProgramRulesChanged is recorded. Not a valid member id.
PROGRAM_STREAM = "$program"
# Errors of one record the broker refuses to take: its input is set aside, not retried.
RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordError,
)


# How often the cycle collector walks what came since its last walk, and how often everything
# the processor holds (services.collector.FullCollections).
FULL_COLLECTION_EVERY_S = 60.0
ALL_OBJECTS_EVERY_S = 3600.0
# How long an idle turn of the loop reads accounts into the cache ahead of use (StateStore.warm):
# short, as a command arriving meanwhile waits for it.
WARM_SLICE_S = 0.005
# The same before a restored partition's input is read: the commands of partitions already
# serving wait for it too, but there are none right after a start, when every partition warms.
WARM_UP_SLICE_S = 0.05
# How long a start waits for the partitions of topics just created to show in the metadata.
TOPICS_SETTLE_S = 10.0
# The fewest records a poll asks for, however slow the last batch was.
MIN_BATCH = 100
# Waits before a new producer is tried again while the broker is away: doubling up to the last.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


class _Unprocessable(Exception):
    """An input record that cannot be decided or written: set aside when it is read again."""

    def __init__(self, where: tuple[str, int, int], code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.where, self.code, self.message = where, code, message


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs where the group's heartbeats are sent: it only notes the change, the loop does the work."""

    def __init__(self, processor: Processor) -> None:
        self._processor = processor

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._processor.revoked({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._processor.assigned({tp.partition for tp in assigned})


class _Batch:
    """What one transaction changes: accounts by member, with their partition."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.changed: dict[str, tuple[int, Account]] = {}

    def account(self, partition: int, member_id: str) -> Account:
        known = self.changed.get(member_id)
        return known[1] if known else self._store.get(partition, member_id)

    def due(self, partition: int, now: datetime) -> list[str]:
        members = dict.fromkeys(self._store.due(partition, now))
        members.update((member, None) for member, (p, _) in self.changed.items() if p == partition)
        return [
            m for m in members if (due := self.account(partition, m).next_due()) is not None and due <= now
        ]


def transaction_records(settings: LedgerSettings, transactional_id: str) -> TransactionRecords:
    """The processor's transactional producer, its records sent through TransactionRecords."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{transactional_id}-producer",
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        linger_ms=1,
        batch_size=256 * 1024,
        # A new transaction that starts while the last one's markers are being written gets
        # CONCURRENT_TRANSACTIONS and is retried after this backoff (default 100 ms).
        retry_backoff_ms=5,
        **NO_CLIENT_METRICS,
    )
    return TransactionRecords(producer)


class Processor:
    def __init__(self, settings: LedgerSettings, rules: ProgramRules) -> None:
        settings, self._instance_lock = claim_instance(settings)
        self._settings = settings
        self._rules = rules
        self.store = StateStore(settings)
        self.partitions = settings.partitions
        self.rules_unchecked = False
        install_fixes()
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.processor_group,
            client_id=f"{settings.transactional_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=settings.processor_batch_max,
            session_timeout_ms=settings.processor_session_timeout_ms,
            heartbeat_interval_ms=min(3000, settings.processor_session_timeout_ms // 3),
            # Range assignment gives one instance the same partition number of every input topic.
            partition_assignment_strategy=[RangePartitionAssignor],
            metadata_max_age_ms=30_000,
            **NO_CLIENT_METRICS,
        )
        self._records = self._new_records()
        self._parsers = {
            settings.topic_purchases: parse_inbound_record,
            settings.topic_commands: parse_command_record,
        }
        self._restore = Restore(settings, self.store, self._committed_offsets)
        # Restored partitions whose accounts are read into memory before their input is read:
        # the committed input offsets to resume from, and until when at most (monotonic).
        self._warming: dict[int, tuple[dict[str, int] | None, float]] = {}
        # Restored partitions whose ownership is still to be announced (services.ledger.ownership).
        self._unannounced: set[int] = set()
        # Consecutive failed transactions, and the records to set aside when read again.
        self._failures = 0
        # What this transaction has sent, each with the input record it was sent for, if any.
        self._sent: list[tuple[FutureRecordMetadata, tuple[str, int, int] | None]] = []
        self._current: tuple[str, int, int] | None = None
        self._unprocessable: dict[tuple[str, int, int], tuple[str, str]] = {}
        # Records a poll asks for: about what is decided within processor_batch_time_ms.
        self._fits = min(settings.processor_batch_max, MIN_BATCH)
        # Members a tick that spans transactions has reached so far, by the tick's record.
        self._ticked: dict[tuple[str, int, int], set[str]] = {}
        self._stop = threading.Event()  # `run`'s, so that waits for the broker end on a stop
        self._began = 0.0  # when the last transaction began (monotonic)
        self._interval_s = settings.processor_transaction_interval_ms / 1000

    def _new_records(self) -> TransactionRecords:
        return transaction_records(self._settings, self._settings.transactional_id)

    @property
    def _producer(self) -> KafkaProducer:
        return self._records.producer

    @property
    def ready(self) -> bool:
        """Owns partitions and has restored and warmed every one of them."""
        return bool(self.store.owned()) and not self._restore.pending and not self._warming

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        try:
            self._consumer.subscribe(list(self._parsers), listener=_Rebalances(self))
            ensure_topics(self._settings)
            self.partitions = self._partition_count()
            self._producer.init_transactions()
            log.info("processor started", extra={"transactional_id": self._settings.transactional_id})
            collector.freeze_survivors()
            with collector.FullCollections(FULL_COLLECTION_EVERY_S, ALL_OBJECTS_EVERY_S) as full_collections:
                while not stop.is_set():
                    with collector.paused():
                        self._step()
                    full_collections.collect_if_due()
        finally:
            self._restore.close()
            self._consumer.close()
            close_producer(self._producer, timeout_s=5)
            self.store.close(self.store.owned() | self.store.parked())
            if self._instance_lock is not None:
                self._instance_lock.close()
            log.info("processor stopped")

    def _partition_count(self) -> int:
        """The partition count of every co-partitioned topic, which must be the same.

        Known topic metadata before joining also matters: a group leader without it assigns
        nothing, and kafka-python would only notice at the next metadata refresh.
        """
        s = self._settings
        topics = [*self._parsers, s.topic_events, s.topic_state, s.topic_replies, s.topic_status]
        deadline = time.monotonic() + TOPICS_SETTLE_S
        while True:
            counts = {topic: len(self._consumer.partitions_for_topic(topic) or ()) for topic in topics}
            # A topic created a moment ago, here or by another instance, can show in the
            # metadata before its partitions do: that is not a mismatch yet.
            if all(counts.values()) or time.monotonic() > deadline or self._stop.wait(0.1):
                break
            self._consumer.topics()  # fetches every topic's metadata afresh
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"co-partitioned topics must have the same partition count, not {counts}")
        return counts[s.topic_purchases] or s.partitions

    def revoked(self, partitions: set[int]) -> None:
        self.store.park(partitions)
        self._restore.remove(partitions)
        self._warming = {p: warming for p, warming in self._warming.items() if p not in partitions}
        self._unannounced -= partitions
        self._ticked = {where: done for where, done in self._ticked.items() if where[1] not in partitions}
        self.rules_unchecked = False

    def assigned(self, partitions: set[int]) -> None:
        self.store.close(self.store.parked() - partitions)
        self.store.park(partitions)
        self._consumer.pause(*self._inputs(partitions))
        self._restore.add(partitions)
        log.info("partitions assigned", extra={"partitions": sorted(partitions)})

    def _inputs(self, partitions: set[int]) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for topic in self._parsers for p in sorted(partitions)]

    def _committed_offsets(self, partition: int) -> dict[str, int] | None:
        """The group's committed offsets of the partition's inputs, once stable; None if not yet."""
        found = {}
        try:
            for tp in self._inputs({partition}):
                offset = self._consumer.committed(tp, timeout_ms=1000)
                if offset is not None:
                    found[tp.topic] = offset
        except KafkaError as error:  # an earlier owner's transaction still open, or no coordinator
            log.info("committed offsets not known yet", extra={"partition": partition, "error": str(error)})
            return None
        return found

    def _step(self) -> None:
        if self._restore.pending:
            try:
                restored = self._restore.step(budget_s=0.5)
            except KafkaError as error:  # the broker is away: restore afresh once it is back
                log.warning("restore interrupted; starting it again", extra={"error": str(error)})
                self._restore.close()
                self._restore_again()
                self._stop.wait(1)
                return
            until = time.monotonic() + self._settings.processor_warm_s
            self._warming.update((partition, (offsets, until)) for partition, offsets in restored.items())
        if self._warming:
            self._warm_up()
        waiting, warming = self._restore.pending or self._warming, self.store.warming()
        # Paced only when nothing is being restored or read ahead, which polls between slices of it.
        if not (waiting or warming) and self._stop.wait(self._began + self._interval_s - time.monotonic()):
            return
        batch = self._consumer.poll(timeout_ms=0 if waiting or warming else 200, max_records=self._fits)
        if batch or self.rules_unchecked or self._unannounced:
            self._commit(batch)
        elif warming and not self.store.warm(WARM_SLICE_S):
            log.info("accounts read ahead", extra={"cached": self.store.cached()})

    def _warm_up(self) -> None:
        """Read the restored partitions' accounts into memory, then read their input: each once
        every account is cached, or once its `processor_warm_s` is up (the rest are read while
        idle). A restored partition is announced, and so ready, only then."""
        if any(time.monotonic() < until for _, until in self._warming.values()):
            self.store.warm(WARM_UP_SLICE_S)
        now = time.monotonic()
        for partition, (offsets, until) in list(self._warming.items()):
            if self.store.warming(partition) and now < until:
                continue
            del self._warming[partition]
            self._resume(partition, offsets)
            log.info(
                "partition resumed", extra={"partition": partition, "cached": self.store.cached(partition)}
            )
            if not self._warming:  # the accounts read are kept: no full collection walks them again
                collector.freeze_survivors(generation=1)

    def _resume(self, partition: int, offsets: dict[str, int] | None) -> None:
        """The partition's state is restored: read its inputs from the committed offsets."""
        tps = self._inputs({partition})
        for tp in tps:
            if offsets and tp.topic in offsets:
                self._consumer.seek(tp, offsets[tp.topic])
            else:  # none committed yet: from the start, not from where a failed batch left the consumer
                self._consumer.seek_to_beginning(tp)
        self._consumer.resume(*tps)
        self._unannounced.add(partition)
        if partition == partition_for(PROGRAM_STREAM, self.partitions):
            self.rules_unchecked = True

    def _commit(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        started = time.perf_counter()
        self._began = time.monotonic()
        group = self._consumer.group_metadata()
        if group.generation_id < 0:
            self._read_again(records)
            return
        owned = self.store.owned()
        records = {tp: rs for tp, rs in records.items() if tp.partition in owned}
        batch = _Batch(self.store)
        self._sent = []
        try:
            self._records.begin()
            consumed = {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in records.items()}
            if self.rules_unchecked:
                self._record_rules(batch)
                self._fence({partition_for(PROGRAM_STREAM, self.partitions)}, consumed)
            announced = self._announce(group)
            self._fence(announced, consumed)
            # The offsets go while the batch is decided; sent again if the batch ends early.
            planned = dict(consumed)
            offsets = start_sending_offsets(self._producer, planned, group) if planned else None
            rewind, handled = self._handle_all(records, batch, consumed)
            state = self._state_changes(batch, consumed)
            written = {
                partition: [
                    self._send(self._settings.topic_state, partition, key, value) for key, value in changes
                ][-1]
                for partition, changes in state.items()
            }
            decided = time.perf_counter()
            if offsets is not None:
                offsets.wait()
            if consumed != planned:
                start_sending_offsets(self._producer, consumed, group).wait()
            offsets_sent = time.perf_counter()
            self._check_sent()
            self._producer.commit_transaction()
        except _Unprocessable as bad:
            log.exception("record set aside", extra={"code": bad.code, "where": list(bad.where)})
            self._unprocessable[bad.where] = (bad.code, bad.message)
            self._start_over()
            return
        except KafkaError as error:
            if _fenced(error):
                log.error("fenced by a newer instance; stopping")
                if isinstance(error, ProducerFencedError):
                    raise
                raise ProducerFencedError(str(error)) from error
            log.exception("transaction failed; restoring the state and reading the batch again")
            self._start_over()
            self._failures += 1
            time.sleep(min(0.05 * 2**self._failures, 5.0))
            return
        self._failures = 0
        for tp, position in rewind.items():  # a tick to finish in the next transaction
            self._consumer.seek(tp, position.offset)
        self.rules_unchecked = False
        self._unannounced -= announced
        committed = time.perf_counter()
        for partition, changes in state.items():
            accounts = [account for p, account in batch.changed.values() if p == partition]
            self.store.committed(partition, changes, accounts, written[partition].get().offset + 1)
        log.debug(
            "batch committed",
            extra={
                "records": handled,
                "members": len(batch.changed),
                "decide_ms": round((decided - started) * 1000, 2),
                "offsets_ms": round((offsets_sent - decided) * 1000, 2),
                "commit_ms": round((committed - offsets_sent) * 1000, 2),
                "store_ms": round((time.perf_counter() - committed) * 1000, 2),
            },
        )

    def _fence(self, partitions: set[int], consumed: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Send the partitions' offsets even when nothing was read from them: the group then
        fences the transaction, and a stale instance cannot commit it."""
        for tp in self._inputs(partitions):
            consumed.setdefault(tp, OffsetAndMetadata(self._consumer.position(tp), "", -1))

    def _read_again(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Out of the group (a heartbeat learned that it was dropped): commit nothing, and read
        the batch again once the next poll has rejoined.

        The group fences a transaction's offsets by the generation sent with them, but takes
        them unchecked when they carry none (generation -1, as after the member was dropped),
        even while other members own the partitions. A zombie woken from a pause past its
        session timeout would then commit again what its partitions' new owner decided.
        """
        log.warning("not a member of the group; batch left to be read again after rejoining")
        assigned = self._consumer.assignment()
        for tp, polled in records.items():
            if tp in assigned:  # else revoked meanwhile: its next owner reads it from the offsets
                self._consumer.seek(tp, polled[0].offset)

    def _announce(self, group: ConsumerGroupMetadata) -> set[int]:
        """Tell the ledger API that this member owns and has restored these partitions."""
        value = announcement(group.member_id, group.generation_id, self._settings.transactional_id)
        for partition in self._unannounced:
            self._send(self._settings.topic_status, partition, str(partition), value)
        return set(self._unannounced)

    def _state_changes(
        self, batch: _Batch, consumed: dict[TopicPartition, OffsetAndMetadata]
    ) -> dict[int, list[Change]]:
        """The changelog records of the batch: what changed in each account, and how far it read."""
        state: dict[int, list[Change]] = {}
        for partition, account in batch.changed.values():
            before = self.store.get(partition, account.member_id)
            state.setdefault(partition, []).extend(self.store.changes(partition, before, account))
        for tp, position in consumed.items():
            state.setdefault(tp.partition, []).append((input_key(tp.topic), str(position.offset).encode()))
        return state

    def _check_sent(self) -> None:
        """Everything sent is written, or raise before the commit is asked for.

        kafka-python 3.0.12 does not fail a commit after the broker refused one of the
        transaction's records: the commit waits for the next metadata refresh (minutes). Flushing
        first shows the refusal; a record refused for reasons of its own sets its input aside.
        """
        self._producer.flush(timeout=self._settings.transaction_timeout_ms / 2000)
        for future, where in self._sent:
            error = future.exception if future.is_done and future.failed() else None
            if error is None:
                continue
            if where is not None and isinstance(error, RECORD_ERRORS):
                raise _Unprocessable(where, "unwritable", str(error)) from error
            raise error if isinstance(error, KafkaError) else KafkaError(str(error))
        if not all(future.is_done for future, _ in self._sent):
            raise KafkaTimeoutError("the transaction's records were not written in time")

    def _start_over(self) -> None:
        """Drop the transaction with its producer, and restore every owned partition.

        A new producer with the same transactional id aborts whatever the old one left open; the
        old one is not trusted after a failure (kafka-python's transaction state does not always
        recover). The commit itself may have failed after the broker took it, so neither the
        cache nor the position is trusted either: the restore reads the changelog and the
        committed offsets again. While the broker is away (a restart), the new producer is tried
        again with backoff until it can start transactions, or the processor is stopped.
        """
        for attempt in itertools.count():
            close_producer(self._producer, timeout_s=1)  # closing twice is harmless
            try:
                self._records = self._new_records()
                self._producer.init_transactions()
                break
            except KafkaError as error:
                delay = min(RETRY_FIRST_S * 2**attempt, RETRY_MAX_S)
                log.warning(
                    "transactions cannot start; retrying", extra={"error": str(error), "retry_in_s": delay}
                )
                if self._stop.wait(delay):
                    return  # stopping: `run` closes what is left
        self._restore_again()

    def _restore_again(self) -> None:
        """Forget every owned partition's state in memory and restore it from the changelog."""
        partitions = self.store.owned() | self._restore.pending
        self.revoked(partitions)
        self.assigned(partitions)

    def _record_rules(self, batch: _Batch) -> None:
        """Record the rules in force in the program's stream when they differ from the last recorded."""
        partition = partition_for(PROGRAM_STREAM, self.partitions)
        account = batch.account(partition, PROGRAM_STREAM)
        now = datetime.now(UTC)
        command = RecordRules(
            command_id=f"rules:{self._rules.version}:{self._rules.fingerprint()}",
            correlation_id="rules",
            member_id=PROGRAM_STREAM,
            occurred_at=now,
        )
        decided = decide(account, command, self._rules)  # a LedgerError here is a configuration error
        self._append(batch, partition, account, command, decided, now)

    def _handle_all(
        self,
        records: dict[TopicPartition, list[ConsumerRecord]],
        batch: _Batch,
        consumed: dict[TopicPartition, OffsetAndMetadata],
    ) -> tuple[dict[TopicPartition, OffsetAndMetadata], int]:
        """Decide the batch's records, API commands first: where to read again, and how many.

        A batch stops taking records after `processor_batch_time_ms`: the transaction, and with
        it every command waiting for its answer, stays short even while a backlog is read.
        """
        budget_s = self._settings.processor_batch_time_ms / 1000
        started = time.perf_counter()
        rewind: dict[TopicPartition, OffsetAndMetadata] = {}
        handled = 0
        for tp, partition_records in sorted(
            records.items(), key=lambda item: item[0].topic != self._settings.topic_commands
        ):
            for record in partition_records:
                if (handled and time.perf_counter() - started > budget_s) or not self._handle(record, batch):
                    consumed[tp] = rewind[tp] = OffsetAndMetadata(record.offset, "", -1)
                    break
                handled += 1
        # Poll about what fits in the time next time: records read again are fetched again.
        rate = handled / max(time.perf_counter() - started, 1e-3)
        self._fits = min(self._settings.processor_batch_max, max(MIN_BATCH, int(rate * budget_s)))
        return rewind, handled

    def _handle(self, record: ConsumerRecord, batch: _Batch) -> bool:
        """Decide one input record; False when a tick reached only some of its members (read it again).

        A record that cannot be decided or written (a bug, a record too large to produce) is
        raised as `_Unprocessable`: the transaction is rolled back, and when the record is read
        again it is set aside on the dead-letter topic instead.
        """
        where = self._current = (record.topic, record.partition, record.offset)
        if where in self._unprocessable:
            self._set_aside(record, batch, *self._unprocessable.pop(where))
            return True
        try:
            return self._decide(record, batch)
        except MessageSizeTooLargeError as error:
            raise _Unprocessable(where, "record_too_large", str(error)) from error
        except KafkaError:
            raise
        except Exception as error:
            raise _Unprocessable(where, "processing_error", f"{type(error).__name__}: {error}") from error
        finally:
            self._current = None

    def _decide(self, record: ConsumerRecord, batch: _Batch) -> bool:
        try:
            command = self._parsers[record.topic](record.value, _timestamp(record))
        except InvalidRecord as invalid:
            self._dead_letter(record, invalid.code, invalid.message)
            return True
        if isinstance(command, Tick):
            return self._tick(record, command, batch)
        partition = partition_for(command.member_id, self.partitions)
        if partition != record.partition:
            self._reroute(record, command.member_id, partition)
            return True
        account = batch.account(partition, command.member_id)
        replying = record.topic == self._settings.topic_commands
        try:
            original = original_command(account, command)
        except IdempotencyKeyReused as error:  # the caller's mistake, not the member's: nothing is recorded
            self._reply(partition, account, command, "rejected", code=error.code, detail=error.detail)
            return True
        if original is not None:
            if replying:
                self._reply(partition, account, command, "duplicate", original_command_id=original)
            return True
        try:
            decided = decide(account, command, self._rules)
        except UnknownMember as error:  # no stream is opened for someone who is not a member
            if replying:
                self._reply(partition, account, command, "rejected", code=error.code, detail=error.detail)
            return True
        except LedgerError as error:
            decided = [CommandRejected(command=type(command).__name__, code=error.code, detail=error.detail)]
        account, events, documents = self._append(
            batch, partition, account, command, decided, _timestamp(record)
        )
        if replying:
            rejected = next((e.data for e in events if isinstance(e.data, CommandRejected)), None)
            self._reply(
                partition,
                account,
                command,
                "rejected" if rejected else "applied",
                documents=documents,
                code=rejected.code if rejected else None,
                detail=rejected.detail if rejected else None,
            )
        return True

    def _set_aside(self, record: ConsumerRecord, batch: _Batch, code: str, message: str) -> None:
        """Dead-letter a record that could not be decided; an API caller is told so."""
        self._dead_letter(record, code, message)
        if record.topic != self._settings.topic_commands:
            return
        try:
            command = parse_command_record(record.value, _timestamp(record))
        except InvalidRecord:
            return
        if isinstance(command, Tick):
            return
        partition = partition_for(command.member_id, self.partitions)
        account = batch.account(partition, command.member_id)
        detail = "the ledger could not decide this command; it was set aside for review"
        self._reply(partition, account, command, "rejected", code=code, detail=detail)

    def _tick(self, record: ConsumerRecord, tick: Tick, batch: _Batch) -> bool:
        """Advance the clock of the members due, at most a batch of them per transaction.

        A member whose tick cannot be decided is skipped (and logged): its clock moves at a
        later tick, and the others' do not wait for it.
        """
        where = (record.topic, record.partition, record.offset)
        done = self._ticked.setdefault(where, set())
        due = [member for member in batch.due(record.partition, tick.now) if member not in done]
        now_due = due[: self._settings.processor_batch_max]
        done.update(now_due)
        for member_id in now_due:
            account = batch.account(record.partition, member_id)
            command = AdvanceClock(
                command_id=tick.command_id,
                correlation_id=tick.correlation_id,
                member_id=member_id,
                occurred_at=tick.now,
            )
            try:
                sealed = seal_with_bytes(
                    account,
                    command,
                    decide(account, command, self._rules),
                    self._rules.version,
                    _timestamp(record),
                )
            except Exception:
                log.exception("tick skipped a member", extra={"partition": record.partition})
                continue
            self._write(batch, record.partition, *sealed)
        if len(due) > len(now_due):
            return False
        del self._ticked[where]
        return True

    def _append(
        self,
        batch: _Batch,
        partition: int,
        account: Account,
        command: Command,
        decided: list[EventData],
        recorded_at: datetime,
    ) -> tuple[Account, list[Event], list[bytes]]:
        """The account after the events, the events, and each as the bytes written to the log."""
        sealed = seal_with_bytes(account, command, decided, self._rules.version, recorded_at)
        self._write(batch, partition, *sealed)
        return sealed

    def _write(
        self, batch: _Batch, partition: int, account: Account, events: list[Event], raw: list[bytes]
    ) -> None:
        for value in raw:
            self._send(self._settings.topic_events, partition, account.member_id, value)
        if events:
            batch.changed[account.member_id] = (partition, account)

    def _reply(
        self,
        partition: int,
        account: Account,
        command: Command,
        status: ReplyStatus,
        documents: list[bytes] | None = None,
        **details: str | None,
    ) -> None:
        """`documents`: the command's events as written to the log, put in the reply as they are
        rather than serialised again."""
        reply = CommandReply(
            command_id=command.command_id,
            member_id=command.member_id,
            status=status,
            events=[],
            sequence=account.sequence,
            available=account.available,
            pending=account.pending_points,
            tier=account.tier,
            **details,
        ).model_dump(mode="json", exclude={"events"})
        reply["events"] = [orjson.Fragment(document) for document in documents or ()]
        self._send(self._settings.topic_replies, partition, command.member_id, orjson.dumps(reply))

    def _send(self, topic: str, partition: int, key: str, value: bytes | None) -> FutureRecordMetadata:
        return self._produce(topic, partition, key.encode(), value)

    def _produce(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> FutureRecordMetadata:
        future = self._records.send(topic, partition, key, value, headers)
        self._sent.append((future, self._current))
        return future

    def _dead_letter(self, record: ConsumerRecord, code: str, message: str) -> None:
        headers = [
            *(record.headers or []),
            ("error.code", code.encode()),
            ("error.message", message[:1000].encode()),
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
        ]
        self._produce(self._settings.topic_dlq, None, record.key, record.value, headers)
        log.warning(
            "record dead-lettered",
            extra={
                "code": code,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            },
        )

    def _reroute(self, record: ConsumerRecord, member_id: str, partition: int) -> None:
        """A publisher keyed the record differently: move it to the member's partition.

        The broker stamps it again as it is appended there (the inputs are LogAppendTime), so
        it reached the log, for its date's checks, when it was moved: no header a publisher could
        write carries the first time instead.
        """
        self._produce(record.topic, partition, member_id.encode(), record.value, record.headers)


def _fenced(error: KafkaError) -> bool:
    """kafka-python reports a fence from `send` as a plain KafkaError with the cause as its argument."""
    return isinstance(error, ProducerFencedError) or any(
        isinstance(a, ProducerFencedError) for a in error.args
    )


def _timestamp(record: ConsumerRecord) -> datetime:
    """The input record's timestamp: a retried decision records the same time."""
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)
