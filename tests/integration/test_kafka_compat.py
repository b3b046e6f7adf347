"""kafka-python's clients with the project's fixes (services.kafka_compat), on a real broker."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from services.kafka_compat import install_consumer_fixes, wake_sender_for_new_batches
from tests.conftest import Isolated


def read_for(consumer: KafkaConsumer, tp: TopicPartition, seconds: float) -> int:
    read, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        read += len(consumer.poll(timeout_ms=100).get(tp, []))
    return read


def test_a_partition_paused_in_the_middle_of_a_read_is_read_again_once_resumed(isolated: Isolated) -> None:
    """Its fetched records were next in line when it was paused, and another partition's were
    read to the end meanwhile: kafka-python alone never reads the first partition again."""
    install_consumer_fixes()
    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    paused, other = TopicPartition(topic, 0), TopicPartition(topic, 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        for _ in range(500):
            producer.send(topic, b"first", partition=paused.partition)
        producer.flush()
        consumer.assign([paused, other])
        consumer.seek(paused, 0)
        consumer.seek(other, 0)
        first: dict[TopicPartition, list[object]] = {}
        while not first:
            first = consumer.poll(timeout_ms=500, max_records=10)
        assert [len(records) for records in first.values()] == [10], "the rest stays in line"
        consumer.pause(paused)
        for _ in range(50):
            producer.send(topic, b"second", partition=other.partition)
        producer.flush()
        assert read_for(consumer, other, seconds=3) == 50
        consumer.seek(paused, 10)
        consumer.resume(paused)
        assert read_for(consumer, paused, seconds=5) == 490
    finally:
        consumer.close()
        producer.close()


def test_a_producer_woken_only_for_new_batches_delivers_transactions_of_many_batches(
    isolated: Isolated,
) -> None:
    """Each transaction fills many batches per partition, most of them while earlier ones are
    still queued, and none is flushed but by the commit: every record arrives, in order."""
    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = wake_sender_for_new_batches(
        KafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic, linger_ms=1, batch_size=16 * 1024)
    )
    wakeups = 0
    wakeup = producer._sender.wakeup

    def counted() -> None:
        nonlocal wakeups
        wakeups += 1
        wakeup()

    producer._sender.wakeup = counted
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        producer.init_transactions()
        for transaction in range(3):
            producer.begin_transaction()
            for n in range(2000):
                producer.send(topic, f"{transaction}-{n}".encode() + b"." * 500, partition=n % 2)
            producer.commit_transaction()
        assert wakeups < 3 * 2000 / 10, "woken for new batches (about 30 records each), not records"
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        values: dict[int, list[str]] = {0: [], 1: []}
        deadline = time.monotonic() + 20
        while sum(map(len, values.values())) < 6000 and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                values[tp.partition] += [r.value.split(b".")[0].decode() for r in records]
        for partition in (0, 1):
            expected = [f"{t}-{n}" for t in range(3) for n in range(partition, 2000, 2)]
            assert values[partition] == expected
    finally:
        consumer.close()
        producer.close()
