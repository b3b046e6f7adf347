"""End offsets of a topic, bounded in time: the basis of readiness and lag on both sides."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition


def offsets_consumer(bootstrap: str, client_id: str) -> KafkaConsumer:
    """A group-less read_committed consumer that only asks for offsets."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id=client_id,
        isolation_level="read_committed",
        enable_auto_commit=False,
        request_timeout_ms=5000,
    )


def end_offsets(consumer: KafkaConsumer, topic: str, timeout_ms: int = 3000) -> dict[int, int]:
    """Last stable offset per partition; raises KafkaError when the cluster does not answer in time."""
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
    if not tps:
        return {}
    return {tp.partition: offset for tp, offset in consumer.end_offsets(tps, timeout_ms=timeout_ms).items()}
