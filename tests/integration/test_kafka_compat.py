"""kafka-python's consumer with the project's fixes (services.kafka_compat), on a real broker."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from services.kafka_compat import install_consumer_fixes
from services.ledger.assignment import CoPartitionedCooperative
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


def test_a_member_reads_the_partitions_it_keeps_while_the_group_waits_for_another(isolated: Isolated) -> None:
    """Cooperative rebalancing: a second member joins, the first gives up one partition and
    rejoins, and the group then waits for the second member's rejoin (here 3 s, as it is busy).
    The first goes on reading the partition it kept meanwhile; kafka-python alone read nothing
    for the 3 s."""
    install_consumer_fixes()
    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    group = f"{topic}-group"

    def member() -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=500,
            partition_assignment_strategy=[CoPartitionedCooperative()],
        )
        consumer.subscribe([topic])
        return consumer

    stop = threading.Event()
    producer = KafkaProducer(bootstrap_servers=bootstrap)

    def produce() -> None:
        while not stop.wait(0.02):
            producer.send(topic, b"tick", partition=0)

    first, second = member(), None
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    read_at: list[float] = []

    def read_first() -> None:
        for tp, records in first.poll(timeout_ms=100).items():
            if tp == tp0 and records:
                read_at.append(time.monotonic())

    def read_both() -> None:
        assert second is not None
        second.poll(timeout_ms=100)
        read_first()

    def until(done: Callable[[], bool], step: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline, f"not within 30 s: {what}"
            step()

    writer = threading.Thread(target=produce, daemon=True)
    try:
        until(lambda: first.assignment() == {tp0, tp1}, lambda: first.poll(timeout_ms=100), "first owns all")
        writer.start()
        second = member()
        # The first round: the first member gives partition 1 up.
        until(lambda: first.assignment() == {tp0}, read_both, "partition 1 given up")
        busy_from = time.monotonic()
        while time.monotonic() < busy_from + 3:  # the second round waits for the second member
            read_first()
        waited = [busy_from, *(at for at in read_at if at >= busy_from), time.monotonic()]
        until(lambda: second.assignment() == {tp1}, read_both, "partition 1 moved")
        owners = (first.assignment(), second.assignment())
    finally:
        stop.set()
        writer.join()
        producer.close()
        for consumer in (second, first):  # the other way round, the first one's close waits 30 s
            if consumer is not None:
                consumer.close()
    assert owners == ({tp0}, {tp1}), "partition 1 moved"
    longest = max(later - earlier for earlier, later in itertools.pairwise(waited))
    assert longest < 1.5, f"the first member stopped reading its partition for {longest:.1f} s"
