"""Reading and writing test topics with plain kafka-python clients."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType, KafkaAdminClient, MemberToRemove
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import NoError

from schemas.topics import KafkaSettings
from tests.waiting import eventually


def publish(
    bootstrap: str, topic: str, key: bytes | None, value: bytes, partition: int | None = None
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=key, value=value, partition=partition).get(timeout=10)
    finally:
        producer.close()


def publish_together(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """The records in one transaction: a read_committed consumer gets all of them at once."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tests-{uuid.uuid4().hex}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.commit_transaction()
    finally:
        producer.close()


def evict_group_members(bootstrap: str, group: str) -> int:
    """Remove every member from the consumer group, as an operator's admin tool can; how many.

    A removed member's generation is over: offsets it commits with it are refused until it rejoins.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tests-evict")
    try:
        members = admin.describe_groups([group])[group]["members"]
        removed = admin.remove_group_members(
            group, [MemberToRemove(member_id=m["member_id"]) for m in members]
        )
        assert all(error is NoError for error in removed.values()), removed
        return len(removed)
    finally:
        admin.close()


@contextmanager
def topic_config(bootstrap: str, topic: str, name: str, value: str) -> Iterator[None]:
    """The topic with one config set for the block, then back at the broker's default.

    Incremental: the topic's other configs are left as they are.
    """
    resource = ConfigResourceType.TOPIC
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tests-topic-config")
    try:
        [found] = admin.describe_configs([ConfigResource(resource, topic, {name: None})]).values()
        assert name not in found[topic], f"{topic} already sets {name}; it would not be put back"
        result = admin.alter_configs([ConfigResource(resource, topic, {name: value})], incremental=True)
        assert result == {"topic": {topic: "OK"}}, result
        try:
            yield
        finally:
            deleted = {name: (AlterConfigOp.DELETE, None)}
            result = admin.alter_configs([ConfigResource(resource, topic, deleted)], incremental=True)
            assert result == {"topic": {topic: "OK"}}, result
    finally:
        admin.close()


def purchase(member_id: str, purchase_id: str, amount: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "purchase",
        "purchase_id": purchase_id,
        "member_id": member_id,
        "amount": amount,
        "currency": "CNY",
        "occurred_at": "2026-11-22T10:00:00Z",
        **extra,
    }


def send_purchase(
    settings: KafkaSettings, member_id: str, purchase_id: str, amount: str, **extra: Any
) -> None:
    """A purchase message as a commerce service publishes it: keyed by member, on the inbound topic."""
    value = json.dumps(purchase(member_id, purchase_id, amount, **extra)).encode()
    publish(settings.kafka_bootstrap, settings.topic_purchases, member_id.encode(), value)


def await_events(
    settings: KafkaSettings, member_id: str, count: int, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """The member's events, once there are at least `count` of them."""

    def enough() -> list[dict[str, Any]] | None:
        found = events_of(settings.kafka_bootstrap, settings.topic_events, member_id)
        return found if len(found) >= count else None

    return eventually(enough, timeout_s=timeout_s, what=f"{count} events of {member_id}")


def read_all(bootstrap: str, topic: str, committed: bool = True) -> list[ConsumerRecord]:
    """Every record of the topic up to its current end (its last stable offset, when committed)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        found: list[ConsumerRecord] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=500).items():
                # Not past the end: a later transaction's records may have come in part.
                found.extend(record for record in records if record.offset < end[tp])
        return sorted(found, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def events_of(bootstrap: str, topic: str, member_id: str) -> list[dict[str, Any]]:
    records = read_all(bootstrap, topic)
    events = [json.loads(r.value) for r in records if r.key == member_id.encode()]
    return sorted(events, key=lambda e: e["sequence"])
