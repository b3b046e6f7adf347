"""The single-writer loop: consume commands, decide, commit events + state + offsets atomically.

Each poll is one Kafka transaction holding the batch's events, the changed accounts on the
compacted changelog, replies to the API, dead letters and re-routed records, and the consumed
input offsets. The offsets are sent with the consumer's group metadata, so a stale instance
that lost its partitions is fenced by the broker instead of committing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from schemas.events import CommandRejected, Event, EventData
from schemas.rules import ProgramRules
from services import collector
from services.kafka_compat import keep_rejoin_requested
from services.ledger.command_messages import (
    CommandReply,
    InvalidRecord,
    ReplyStatus,
    Tick,
    parse_command_record,
    parse_inbound_record,
)
from services.ledger.domain.account import Account, account_to_json
from services.ledger.domain.chain import seal_with_bytes
from services.ledger.domain.commands import AdvanceClock, Command, RecordRules
from services.ledger.domain.decide import decide, original_command
from services.ledger.domain.errors import LedgerError, UnknownMember
from services.ledger.partitioning import partition_for
from services.ledger.settings import LedgerSettings
from services.ledger.state_store import StateStore
from services.ledger.topics import ensure_topics

log = logging.getLogger(__name__)

# The program's own stream: where ProgramRulesChanged is recorded. Not a valid member id.
PROGRAM_STREAM = "$program"


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self._processor = processor

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._processor.store.drop({tp.partition for tp in revoked})
        self._processor.rules_unchecked = False

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned}
        self._processor.store.restore(partitions)
        collector.freeze_survivors()
        self._processor.rules_unchecked = (
            partition_for(PROGRAM_STREAM, self._processor.partitions) in partitions
        )


class _Batch:
    """What one transaction changes: accounts by member, with their partition."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.changed: dict[str, tuple[int, Account]] = {}

    def account(self, partition: int, member_id: str) -> Account:
        known = self.changed.get(member_id)
        return known[1] if known else self._store.get(partition, member_id)

    def due(self, partition: int, now: datetime) -> list[str]:
        members = self._store.due(partition, now) | {
            member for member, (p, account) in self.changed.items() if p == partition
        }
        return sorted(
            m for m in members if (due := self.account(partition, m).next_due()) is not None and due <= now
        )


class Processor:
    def __init__(self, settings: LedgerSettings, rules: ProgramRules) -> None:
        self._settings = settings
        self._rules = rules
        self.store = StateStore(settings)
        self.partitions = settings.partitions
        self.rules_unchecked = False
        keep_rejoin_requested()
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
        )
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{settings.transactional_id}-producer",
            transactional_id=settings.transactional_id,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            linger_ms=1,
            batch_size=256 * 1024,
            # A new transaction that starts while the last one's markers are being written gets
            # CONCURRENT_TRANSACTIONS and is retried after this backoff (default 100 ms).
            retry_backoff_ms=5,
        )
        self._parsers = {
            settings.topic_purchases: parse_inbound_record,
            settings.topic_commands: parse_command_record,
        }

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self._settings)
        # Known topic metadata before joining: a group leader without it assigns nothing, and
        # kafka-python would only notice at the next metadata refresh.
        counts = {len(self._consumer.partitions_for_topic(topic) or ()) for topic in self._parsers}
        if len(counts) != 1:
            raise RuntimeError(f"the input topics must have the same partition count, not {sorted(counts)}")
        self.partitions = counts.pop() or self._settings.partitions
        self._producer.init_transactions()
        self._consumer.subscribe(list(self._parsers), listener=_Ownership(self))
        log.info("processor started", extra={"transactional_id": self._settings.transactional_id})
        try:
            while not stop.is_set():
                with collector.paused():
                    self._step()
        finally:
            self._consumer.close()
            self._producer.close()
            log.info("processor stopped")

    def _step(self) -> None:
        batch = self._consumer.poll(timeout_ms=200, max_records=self._settings.processor_batch_max)
        if batch or self.rules_unchecked:
            self._commit(batch)

    def _commit(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        started = time.perf_counter()
        batch = _Batch(self.store)
        self._producer.begin_transaction()
        try:
            if self.rules_unchecked:
                self._record_rules(batch)
            for partition_records in records.values():
                for record in partition_records:
                    self._handle(record, batch)
            for partition, account in batch.changed.values():
                self._send(self._settings.topic_state, partition, account.member_id, account_to_json(account))
            decided = time.perf_counter()
            if records:
                offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in records.items()}
                self._producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            offsets_sent = time.perf_counter()
            self._producer.commit_transaction()
        except ProducerFencedError:
            log.error("fenced by a newer instance; stopping")
            raise
        except KafkaError:
            log.exception("transaction failed; the batch will be read again")
            self._producer.abort_transaction()
            for tp, partition_records in records.items():
                self._consumer.seek(tp, partition_records[0].offset)
            return
        self.rules_unchecked = False
        for partition, account in batch.changed.values():
            self.store.put(partition, account)
        log.debug(
            "batch committed",
            extra={
                "records": sum(len(rs) for rs in records.values()),
                "members": len(batch.changed),
                "decide_ms": round((decided - started) * 1000, 2),
                "offsets_ms": round((offsets_sent - decided) * 1000, 2),
                "commit_ms": round((time.perf_counter() - offsets_sent) * 1000, 2),
            },
        )

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

    def _handle(self, record: ConsumerRecord, batch: _Batch) -> None:
        try:
            command = self._parsers[record.topic](record.value)
        except InvalidRecord as invalid:
            self._dead_letter(record, invalid.code, invalid.message)
            return
        if isinstance(command, Tick):
            self._tick(record, command, batch)
            return
        partition = partition_for(command.member_id, self.partitions)
        if partition != record.partition:
            self._reroute(record, command.member_id, partition)
            return
        account = batch.account(partition, command.member_id)
        replying = record.topic == self._settings.topic_commands
        original = original_command(account, command)
        if original is not None:
            if replying:
                self._reply(partition, account, command, "duplicate", original_command_id=original)
            return
        try:
            decided = decide(account, command, self._rules)
        except UnknownMember as error:  # no stream is opened for someone who is not a member
            if replying:
                self._reply(partition, account, command, "rejected", code=error.code, detail=error.detail)
            return
        except LedgerError as error:
            decided = [CommandRejected(command=type(command).__name__, code=error.code, detail=error.detail)]
        except Exception as error:  # a bug must not stall the partition: park the record
            log.exception("decision failed", extra={"command_id": command.command_id})
            self._dead_letter(record, "processing_error", f"{type(error).__name__}: {error}")
            if replying:
                self._reply(
                    partition,
                    account,
                    command,
                    "rejected",
                    code="processing_error",
                    detail="the ledger could not decide this command; it was set aside for review",
                )
            return
        account, events = self._append(batch, partition, account, command, decided, _timestamp(record))
        if replying:
            rejected = next((e.data for e in events if isinstance(e.data, CommandRejected)), None)
            self._reply(
                partition,
                account,
                command,
                "rejected" if rejected else "applied",
                events=events,
                code=rejected.code if rejected else None,
                detail=rejected.detail if rejected else None,
            )

    def _tick(self, record: ConsumerRecord, tick: Tick, batch: _Batch) -> None:
        for member_id in batch.due(record.partition, tick.now):
            account = batch.account(record.partition, member_id)
            command = AdvanceClock(
                command_id=tick.command_id,
                correlation_id=tick.correlation_id,
                member_id=member_id,
                occurred_at=tick.now,
            )
            self._append(
                batch,
                record.partition,
                account,
                command,
                decide(account, command, self._rules),
                _timestamp(record),
            )

    def _append(
        self,
        batch: _Batch,
        partition: int,
        account: Account,
        command: Command,
        decided: list[EventData],
        recorded_at: datetime,
    ) -> tuple[Account, list[Event]]:
        account, events, raw = seal_with_bytes(account, command, decided, self._rules.version, recorded_at)
        for value in raw:
            self._send(self._settings.topic_events, partition, account.member_id, value)
        if events:
            batch.changed[account.member_id] = (partition, account)
        return account, events

    def _reply(
        self,
        partition: int,
        account: Account,
        command: Command,
        status: ReplyStatus,
        events: list[Event] | None = None,
        **details: str | None,
    ) -> None:
        reply = CommandReply(
            command_id=command.command_id,
            member_id=command.member_id,
            status=status,
            events=[event.document() for event in events or ()],
            sequence=account.sequence,
            available=account.available,
            pending=account.pending_points,
            tier=account.tier,
            **details,
        )
        self._send(
            self._settings.topic_replies, partition, command.member_id, reply.model_dump_json().encode()
        )

    def _send(self, topic: str, partition: int, key: str, value: bytes) -> None:
        self._producer.send(topic, key=key.encode(), value=value, partition=partition)

    def _dead_letter(self, record: ConsumerRecord, code: str, message: str) -> None:
        headers = [
            *(record.headers or []),
            ("error.code", code.encode()),
            ("error.message", message[:1000].encode()),
            ("source.topic", record.topic.encode()),
            ("source.partition", str(record.partition).encode()),
            ("source.offset", str(record.offset).encode()),
        ]
        self._producer.send(self._settings.topic_dlq, key=record.key, value=record.value, headers=headers)
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
        """A publisher keyed the record differently: move it to the member's partition."""
        self._producer.send(
            record.topic,
            key=member_id.encode(),
            value=record.value,
            headers=record.headers or [],
            partition=partition,
            timestamp_ms=record.timestamp,
        )


def _timestamp(record: ConsumerRecord) -> datetime:
    """The input record's timestamp: a retried decision records the same time."""
    return datetime.fromtimestamp(record.timestamp / 1000, UTC)
