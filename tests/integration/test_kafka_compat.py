"""kafka-python's clients with the project's fixes (services.kafka_compat), on a real broker."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, MessageSizeTooLargeError

from services.kafka_compat import TransactionRecords, install_fixes
from tests.conftest import Isolated


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()


class Wakeups:
    """Counts the wakeups of the producer's I/O thread from here on."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.count = 0
        wakeup = producer._sender.wakeup

        def counted() -> None:
            self.count += 1
            wakeup()

        producer._sender.wakeup = counted


def transactional_clients(
    bootstrap: str, topic: str, **producer_options: Any
) -> tuple[KafkaProducer, TransactionRecords, Wakeups, KafkaConsumer]:
    """A transactional producer (its records through TransactionRecords, its wakeups counted) and a
    consumer of committed records only."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=topic, linger_ms=1, **producer_options
    )
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    return producer, TransactionRecords(producer), Wakeups(producer), consumer


def read_for(consumer: KafkaConsumer, tp: TopicPartition, seconds: float) -> int:
    read, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        read += len(consumer.poll(timeout_ms=100).get(tp, []))
    return read


def test_a_partition_paused_in_the_middle_of_a_read_is_read_again_once_resumed(isolated: Isolated) -> None:
    """Its fetched records were next in line when it was paused, and another partition's were
    read to the end meanwhile: kafka-python alone never reads the first partition again."""
    install_fixes()
    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    create_topic(bootstrap, topic, partitions=2)
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


def test_a_transactions_records_sent_past_the_producers_checks_arrive_whole_in_order_and_only_committed(
    isolated: Isolated,
) -> None:
    """Transactions of many batches per partition, most filled while earlier ones are still
    queued and none flushed but by the commit, with an aborted one between them: every committed
    record arrives, in order, none of the aborted; a record over the size limit is refused."""
    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    create_topic(bootstrap, topic, partitions=2)
    producer, records, wakeups, consumer = transactional_clients(
        bootstrap, topic, batch_size=16 * 1024, max_request_size=100_000
    )
    try:
        producer.init_transactions()
        for transaction in range(4):
            records.begin()
            for n in range(2000):
                value = f"{transaction}-{n}".encode() + b"." * 500
                records.send(topic, n % 2, b"key", value, [("n", str(n).encode())])
            if transaction == 1:
                with pytest.raises(MessageSizeTooLargeError):
                    records.send(topic, 0, b"key", b"." * 200_000)
                producer.abort_transaction()
            else:
                producer.flush(timeout=20)  # raises, rather than a commit that waits for good
                producer.commit_transaction()
        assert wakeups.count < 4 * 2000 / 10, "woken for new batches (about 30 records each), not records"
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        values: dict[int, list[str]] = {0: [], 1: []}
        deadline = time.monotonic() + 20
        while sum(map(len, values.values())) < 6000 and time.monotonic() < deadline:
            for tp, polled in consumer.poll(timeout_ms=500).items():
                for r in polled:
                    number = r.value.split(b".")[0].decode()
                    assert r.key == b"key" and r.headers == [("n", number.split("-")[1].encode())]
                    values[tp.partition].append(number)
        for partition in (0, 1):
            expected = [f"{t}-{n}" for t in (0, 2, 3) for n in range(partition, 2000, 2)]
            assert values[partition] == expected
    finally:
        consumer.close()
        producer.close()


def test_a_transactions_first_record_to_each_partition_leaves_the_io_thread_asleep(
    isolated: Isolated,
) -> None:
    """Records to six partitions, then the commit: the I/O thread is not woken for any of them,
    and all twelve arrive. (`send` wakes it for each partition's first record, and the thread, woken,
    adds the partitions seen so far to the transaction: an AddPartitionsToTxn request each, 1.58
    a transaction in the processor at 200 commands/s.) A record sent outside a transaction is
    refused, the second time too."""
    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    create_topic(bootstrap, topic, partitions=6)
    producer, records, wakeups, consumer = transactional_clients(bootstrap, topic)
    try:
        producer.init_transactions()
        for transaction in range(2):  # the first learns the topic's metadata
            records.begin()
            wakeups.count = 0
            for partition in range(6):
                records.send(topic, partition, b"key", b"%d" % transaction)
            woken = wakeups.count
            producer.flush(timeout=10)
            producer.commit_transaction()
        assert woken == 0
        consumer.assign([TopicPartition(topic, partition) for partition in range(6)])
        consumer.seek_to_beginning()
        assert read_all(consumer, 12, seconds=15) == 12
        outside = TransactionRecords(producer)  # no transaction begun: refused, and not taken as added
        for _ in range(2):
            with pytest.raises(KafkaError):
                outside.send(topic, 5, b"key", b"outside")
    finally:
        consumer.close()
        producer.close()


def test_waiting_for_the_broker_never_formats_a_socket(
    isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python asks its selector for each socket it waits on, and a socket not registered
    (nearly every one) used to be formatted into the KeyError, twice, at four system calls a wait."""
    install_fixes()
    formatted = 0
    unformatted = socket.socket.__repr__

    def counted(self: socket.socket) -> str:
        nonlocal formatted
        formatted += 1
        return unformatted(self)

    bootstrap, topic = isolated.env["LOYALTY_KAFKA_BOOTSTRAP"], isolated.env["LOYALTY_TOPIC_COMMANDS"]
    create_topic(bootstrap, topic, partitions=1)
    monkeypatch.setattr(socket.socket, "__repr__", counted)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    try:
        for index in range(20):
            producer.send(topic, b"%d" % index).get(timeout=10)
        assert read_all(consumer, 20, seconds=15) == 20
        assert formatted == 0  # closing a client formats one, once
    finally:
        consumer.close()
        producer.close()


def read_all(consumer: KafkaConsumer, expected: int, seconds: float) -> int:
    read, deadline = 0, time.monotonic() + seconds
    while read < expected and time.monotonic() < deadline:
        read += sum(len(records) for records in consumer.poll(timeout_ms=200).values())
    return read
