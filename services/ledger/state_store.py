"""Accounts of the partitions this processor owns, restored from the compacted changelog."""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, TopicPartition

from services.ledger.domain.account import Account, account_from_json
from services.ledger.settings import LedgerSettings

log = logging.getLogger(__name__)


class StateStore:
    def __init__(self, settings: LedgerSettings) -> None:
        self._settings = settings
        self._accounts: dict[int, dict[str, Account]] = {}

    def get(self, partition: int, member_id: str) -> Account:
        return self._accounts[partition].get(member_id) or Account.new(member_id)

    def put(self, partition: int, account: Account) -> None:
        self._accounts[partition][account.member_id] = account

    def owned(self) -> set[int]:
        return set(self._accounts)

    def drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._accounts.pop(partition, None)

    def restore(self, partitions: set[int]) -> None:
        """Read each changelog partition from its start to its last stable offset."""
        partitions = partitions - self.owned()
        if not partitions:
            return
        started = time.monotonic()
        topic = self._settings.topic_state
        tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer = KafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id="loyalty-state-restore",
        )
        try:
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            restored: dict[int, dict[str, Account]] = {tp.partition: {} for tp in tps}
            while any(consumer.position(tp) < end[tp] for tp in tps):
                for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                    accounts = restored[tp.partition]
                    for record in records:
                        if record.value is None:
                            accounts.pop(record.key.decode(), None)
                        else:
                            account = account_from_json(record.value)
                            accounts[account.member_id] = account
        finally:
            consumer.close()
        self._accounts.update(restored)
        log.info(
            "state restored",
            extra={
                "partitions": sorted(partitions),
                "members": sum(len(restored[p]) for p in partitions),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
