"""The single-writer loop: consume commands, decide, commit events + state + offsets atomically.

Each poll is one Kafka transaction holding the batch's events, the changed accounts on the
compacted changelog, dead letters and re-routed records, and the consumed input offsets. The
offsets are sent with the consumer's group metadata, so a stale instance that lost its
partitions is fenced by the broker instead of committing twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from schemas.events import Event
from services.ledger.command_messages import InvalidRecord, parse_command_record, parse_inbound_record
from services.ledger.domain.account import Account, account_to_json
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import Command
from services.ledger.domain.decide import decide
from services.ledger.domain.rules import Rules
from services.ledger.partitioning import partition_for
from services.ledger.settings import LedgerSettings
from services.ledger.state_store import StateStore
from services.ledger.topics import ensure_topics

log = logging.getLogger(__name__)


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._store.drop({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._store.restore({tp.partition for tp in assigned})


class Processor:
    def __init__(self, settings: LedgerSettings, rules: Rules) -> None:
        self._settings = settings
        self._rules = rules
        self._store = StateStore(settings)
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.processor_group,
            client_id=f"{settings.transactional_id}-consumer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=settings.processor_batch_max,
            # Range assignment gives one instance the same partition number of every input topic.
            partition_assignment_strategy=[RangePartitionAssignor],
        )
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{settings.transactional_id}-producer",
            transactional_id=settings.transactional_id,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            linger_ms=5,
        )
        self._parsers = {
            settings.topic_purchases: parse_inbound_record,
            settings.topic_commands: parse_command_record,
        }

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self._settings)
        self._producer.init_transactions()
        self._consumer.subscribe(list(self._parsers), listener=_Ownership(self._store))
        log.info("processor started", extra={"transactional_id": self._settings.transactional_id})
        try:
            while not stop.is_set():
                batch = self._consumer.poll(timeout_ms=200, max_records=self._settings.processor_batch_max)
                if batch:
                    self._commit_batch(batch)
        finally:
            self._consumer.close()
            self._producer.close()
            log.info("processor stopped")

    def _commit_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        changed: dict[str, tuple[int, Account]] = {}
        self._producer.begin_transaction()
        try:
            for records in batch.values():
                for record in records:
                    self._handle(record, changed)
            for partition, account in changed.values():
                self._producer.send(
                    self._settings.topic_state,
                    key=account.member_id.encode(),
                    value=account_to_json(account),
                    partition=partition,
                )
            offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batch.items()}
            self._producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            self._producer.commit_transaction()
        except ProducerFencedError:
            log.error("fenced by a newer instance; stopping")
            raise
        except KafkaError:
            log.exception("transaction failed; the batch will be read again")
            self._producer.abort_transaction()
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            return
        for partition, account in changed.values():
            self._store.put(partition, account)
        log.debug("batch committed", extra={"records": sum(len(r) for r in batch.values())})

    def _handle(self, record: ConsumerRecord, changed: dict[str, tuple[int, Account]]) -> None:
        try:
            command = self._parsers[record.topic](record.value)
        except InvalidRecord as invalid:
            self._dead_letter(record, invalid.code, invalid.message)
            return
        partition = partition_for(command.member_id, self._partition_count(record.topic))
        if partition != record.partition:
            self._reroute(record, command.member_id, partition)
            return
        known = changed.get(command.member_id)
        account = known[1] if known else self._store.get(partition, command.member_id)
        try:
            account, events = self._decide(account, command, record)
        except Exception as error:  # a bug must not stall the partition: park the record
            log.exception("decision failed", extra={"command_id": command.command_id})
            self._dead_letter(record, "processing_error", f"{type(error).__name__}: {error}")
            return
        for event in events:
            self._producer.send(
                self._settings.topic_events,
                key=command.member_id.encode(),
                value=event.to_bytes(),
                partition=partition,
            )
        changed[command.member_id] = (partition, account)

    def _decide(
        self, account: Account, command: Command, record: ConsumerRecord
    ) -> tuple[Account, list[Event]]:
        decided = decide(account, command, self._rules)
        recorded_at = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        return seal(account, command, decided, self._rules.version, recorded_at)

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

    def _partition_count(self, topic: str) -> int:
        partitions = self._consumer.partitions_for_topic(topic)
        return len(partitions) if partitions else self._settings.partitions
