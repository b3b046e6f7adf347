"""Reading and writing test topics with plain kafka-python clients."""

from __future__ import annotations

import json
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

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
