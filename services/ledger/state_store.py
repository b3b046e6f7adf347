"""Accounts of the partitions this processor owns, restored from the compacted changelog.

Besides the accounts, each partition keeps an index of when each member next has something
for a clock tick to do, so that a tick touches only the members that are due.
"""

from __future__ import annotations

import heapq
import logging
import time
from datetime import datetime

from kafka import TopicPartition

from services.kafka_offsets import committed_reader
from services.ledger.domain.account import Account, account_from_json
from services.ledger.settings import LedgerSettings

log = logging.getLogger(__name__)


class StateStore:
    def __init__(self, settings: LedgerSettings) -> None:
        self._settings = settings
        self._accounts: dict[int, dict[str, Account]] = {}
        self._due: dict[int, list[tuple[datetime, str]]] = {}

    def get(self, partition: int, member_id: str) -> Account:
        return self._accounts[partition].get(member_id) or Account.new(member_id)

    def put(self, partition: int, account: Account) -> None:
        self._accounts[partition][account.member_id] = account
        due = account.next_due()
        if due is not None:
            heapq.heappush(self._due[partition], (due, account.member_id))

    def due(self, partition: int, now: datetime) -> set[str]:
        """Members of the partition with something due at `now` (the index keeps them until put again)."""
        heap = self._due.get(partition, [])
        found = set()
        while heap and heap[0][0] <= now:
            due, member_id = heapq.heappop(heap)
            if self._accounts[partition].get(member_id, Account.new(member_id)).next_due() == due:
                found.add(member_id)
        for member_id in found:  # back in, in case the tick's transaction does not commit
            account = self._accounts[partition][member_id]
            heapq.heappush(heap, (account.next_due() or now, member_id))
        return found

    def owned(self) -> set[int]:
        return set(self._accounts)

    def drop(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._accounts.pop(partition, None)
            self._due.pop(partition, None)

    def restore(self, partitions: set[int]) -> None:
        """Read each changelog partition from its start to its last stable offset."""
        partitions = partitions - self.owned()
        if not partitions:
            return
        started = time.monotonic()
        topic = self._settings.topic_state
        tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer = committed_reader(self._settings.kafka_bootstrap, "loyalty-state-restore")
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
        for partition, accounts in restored.items():
            self._accounts[partition] = accounts
            self._due[partition] = [
                (due, member_id)
                for member_id, account in accounts.items()
                if (due := account.next_due()) is not None
            ]
            heapq.heapify(self._due[partition])
        log.info(
            "state restored",
            extra={
                "partitions": sorted(partitions),
                "members": sum(len(restored[p]) for p in partitions),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
