"""Which processor owns each partition and has restored it: what makes the ledger API ready.

A processor that has restored a partition writes an announcement for it (its group member id
and generation) to the compacted status topic, keyed and partitioned by the partition number,
in a transaction fenced by the group like any other. The ledger API is ready when the group
assigns every input partition to a member and each partition's latest announcement is that
member's: a partition still being restored, or given to another member by a rebalance, is not
ready until its new owner announces it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from services.kafka_offsets import committed_reader
from services.ledger.settings import LedgerSettings


def announcement(member_id: str, generation: int, instance: str) -> bytes:
    return orjson.dumps({"member_id": member_id, "generation": generation, "instance": instance})


class Ownership:
    """Reads the group's assignment and the processors' announcements (one instance per API)."""

    def __init__(self, settings: LedgerSettings) -> None:
        self._settings = settings
        self._admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, client_id="loyalty-ledger-api-ownership"
        )
        self._reader = committed_reader(settings.kafka_bootstrap, "loyalty-ledger-api-ownership")
        self._lock = threading.Lock()  # probes run on a thread pool; a Kafka client is not thread-safe

    def close(self) -> None:
        self._admin.close()
        self._reader.close()

    def unready(self) -> list[int]:
        """The input partitions that no processor owns and has restored; raises KafkaError."""
        with self._lock:
            partitions = sorted(self._reader.partitions_for_topic(self._settings.topic_commands) or ())
            owners = self._owners()
            announced = self._announced()
        return [p for p in partitions if owners.get(p) is None or announced.get(p) != owners[p]]

    def _owners(self) -> dict[int, str]:
        """Input partition -> member id of the group member it is assigned to (both inputs alike)."""
        group = self._settings.processor_group
        description: dict[str, Any] = self._admin.describe_groups([group])[group]
        if description["group_state"] != "Stable":
            return {}
        owners: dict[int, str] = {}
        for member in description["members"]:
            assignment = member["member_assignment"] or {}
            for topic in assignment.get("assigned_partitions", ()):
                if topic["topic"] == self._settings.topic_commands:
                    owners.update(dict.fromkeys(topic["partitions"], member["member_id"]))
        return owners

    def _announced(self) -> dict[int, str]:
        """Partition -> member id of its latest announcement."""
        topic = self._settings.topic_status
        tps = [TopicPartition(topic, p) for p in sorted(self._reader.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        self._reader.assign(tps)
        self._reader.seek_to_beginning(*tps)
        end = self._reader.end_offsets(tps)
        found: dict[int, str] = {}
        deadline = time.monotonic() + 3
        while any(self._reader.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise KafkaTimeoutError("the processors' announcements could not be read in time")
            for records in self._reader.poll(timeout_ms=500).values():
                for record in records:
                    found[int(record.key)] = orjson.loads(record.value)["member_id"]
        return found
