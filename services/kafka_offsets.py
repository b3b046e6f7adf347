"""Group-less read_committed reading: end offsets for readiness and lag, and followers of a topic."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, TopicPartition

from services.kafka_compat import NO_CLIENT_METRICS, install_fixes


def committed_reader(bootstrap: str, client_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer outside any group that sees committed transactions only; it assigns and seeks itself."""
    install_fixes()
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id=client_id,
        isolation_level="read_committed",
        enable_auto_commit=False,
        request_timeout_ms=5000,
        **NO_CLIENT_METRICS,
        **overrides,
    )


def end_offsets(consumer: KafkaConsumer, topic: str, timeout_ms: int = 3000) -> dict[int, int]:
    """Last stable offset per partition; raises KafkaError when the cluster does not answer in time."""
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
    if not tps:
        return {}
    return {tp.partition: offset for tp, offset in consumer.end_offsets(tps, timeout_ms=timeout_ms).items()}
