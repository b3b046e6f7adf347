"""Fixes for kafka-python 3.0.12: its group membership, paused partitions, closing a producer
the broker cannot reach, sending a transaction's offsets without blocking, the cost of sending a
transaction's records one by one, the cost of its own metrics, and the cost of each wait for a
socket.

Group membership (installed by every group consumer we run):

A metadata change after an assignment (routinely: the first join happens before the
coordinator's metadata snapshot has the subscribed topic) makes `ConsumerCoordinator.need_rejoin()`
true without setting `rejoin_needed`. The rebalance revokes every partition (marked pending
revocation, so none is fetched) and sends JoinGroup. If that join outlasts the poll's timeout, the
join itself, when the consumer leads the group, updates the assignment snapshot, `need_rejoin()`
turns false, and the next polls never collect the finished join: the consumer keeps a group
membership but fetches nothing, silently, until the session times out. The Java client fixed the
same hole by requesting the rejoin when it detects the change (KAFKA-9815); this does the same, so
the flag stays set until the join completes.

Paused partitions (installed with it): the fetcher keeps the records of a partition paused while
they were next in line, and gives them back once the partition is resumed, but only when no
other partition's records hold that line. Records read to the end still hold it, so after such
a resume the partition's parked records never come back, and the fetcher never asks for that
partition again while they are parked: its input stops, silently, for good. The processor
pauses a partition's input while it restores it, and a rebalance that leaves it in place pauses
it mid-read, while the other partitions go on; a zombie test stalled on it. This frees the line
once its records are read to the end, as it is freed when they are parked.

Waiting for a socket (installed with them, for every client): each time one of its I/O threads
waits for a socket to become readable or writable, kafka-python registers the socket with its
selector, and takes it out again once the wait is over. It asks the selector first whether the
socket is already registered, and since it seldom is, the selector answers with a KeyError whose
message formats the socket, twice, each time asking the kernel for both of its addresses (four
system calls): 11 µs a wait, 7-10%
of a producer's I/O thread (in the processor and in a bare transactional loop alike) and 5% of
the ledger API's threads. This looks the socket up without that message.

A transaction's records (the processor's, through `TransactionRecords`): `send` checks, for
every record, what holds for all of a transaction's records to one partition (the producer's
state, the topic's metadata, the partition added to the transaction), and wakes the producer's
I/O thread whenever the partition's queue holds more than one batch, which it does through most
of a large transaction: a system call, and the interpreter's lock handed to that thread, on
nearly every record. That was 30% of the processor's main thread; the checks, 6 of the 16 µs
that `send` took a record after that. So each record is appended to its partition's batches,
the I/O thread woken only when a batch is created after one filled up (flushing before the
commit wakes it too, as do the offsets' round trips). The first record to each partition in a
transaction adds the partition to the transaction as `send` does, but without waking the thread:
woken by each, it added a transaction's partitions a few at a time, 1.58 AddPartitionsToTxn
requests a transaction at 200 purchases/s against 1.25 now. Each record's size is still checked
against the producer's `max_request_size`, and its partition against the topic's metadata.
"""

from __future__ import annotations

import selectors
from typing import Any, Protocol

from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.errors import KafkaTimeoutError
from kafka.net.selector import NetworkSelector, Task, log_trace
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import ConsumerGroupMetadata, OffsetAndMetadata

# Every client of the services is made with these. kafka-python's own sensors, which nothing here
# reads, were 12% of the ledger API's thread that sends the commands.
NO_CLIENT_METRICS: dict[str, Any] = {"metrics_enabled": False}

_need_rejoin = ConsumerCoordinator.need_rejoin
_fetched_records = Fetcher.fetched_records
_register_event = NetworkSelector.register_event


def _need_rejoin_until_joined(self: ConsumerCoordinator) -> bool:
    needed = bool(_need_rejoin(self))
    if needed:
        self.request_rejoin()
    return needed


def _fetched_records_giving_back_parked(self: Fetcher, *args: Any, **kwargs: Any) -> Any:
    in_line = self._next_partition_records
    if in_line is not None and not in_line:  # read to the end: as good as none
        self._next_partition_records = None
    return _fetched_records(self, *args, **kwargs)


def _register_event_looked_up_quietly(self: NetworkSelector, fileobj: Any, event: int, task: Any) -> None:
    """`register_event` for a socket the selector does not hold yet, looked up in the standard
    selectors' own index; anything else (a socket already held, closed, a closed selector) as
    `register_event` does it."""
    registered = getattr(self._selector, "_fd_to_key", None)
    try:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if registered is None or fd < 0 or fd in registered or self._selector.get_map() is None:
        _register_event(self, fileobj, event, task)
        return
    log_trace("net.register_event: %s, %s, %s", fileobj, event, task)
    task = task if isinstance(task, Task) else Task(task)
    self._selector.register(fileobj, event, (task, None) if event == selectors.EVENT_READ else (None, task))


def install_fixes() -> None:
    """Install the fixes (idempotent); called before a client is created."""
    if ConsumerCoordinator.need_rejoin is not _need_rejoin_until_joined:
        ConsumerCoordinator.need_rejoin = _need_rejoin_until_joined
    if Fetcher.fetched_records is not _fetched_records_giving_back_parked:
        Fetcher.fetched_records = _fetched_records_giving_back_parked
    if NetworkSelector.register_event is not _register_event_looked_up_quietly:
        NetworkSelector.register_event = _register_event_looked_up_quietly


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close the producer, dropping within `timeout_s` what it could not send.

    kafka-python 3.0.12's `KafkaProducer.close(timeout)` flushes first, and when the flush times
    out (records pending while the broker is away) it raises KafkaTimeoutError before the forced
    close that the Java client, and its own code after the flush, would do: the producer stays
    open, its I/O thread retrying records no one waits for, and a caller that only meant to drop
    it ends with the exception. This forces the close as that code does past its timeout.
    """
    try:
        producer.close(timeout=timeout_s)
    except KafkaTimeoutError:
        producer._sender.force_close()  # fails the pending records and ends the I/O thread
        producer._sender.join(timeout_s)
        producer.close(timeout=0)


class TransactionRecords:
    """Sends a transaction's records (see above); those without a partition as `send` does.

    `begin` starts each transaction; the producer's other transactional calls are made on it.
    """

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer
        self._accumulator = producer._accumulator
        self._added: dict[tuple[str, int], TopicPartition] = {}

    def begin(self) -> None:
        self.producer.begin_transaction()
        self._added = {}

    def send(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> FutureRecordMetadata:
        producer, headers = self.producer, headers or []
        if partition is None:
            return producer.send(topic, key=key, value=value, headers=headers)
        tp = self._added.get((topic, partition))
        first = tp is None
        if first:
            known = producer._metadata.partitions_for_topic(topic)
            if known is None:  # the topic's metadata is not known yet: `send` waits for it
                future = producer.send(topic, key=key, value=value, headers=headers, partition=partition)
                if not (future.is_done and future.failed()):  # else the partition was not added
                    self._added[topic, partition] = TopicPartition(topic, partition)
                return future
            if partition not in known:
                raise ValueError(f"Unrecognized partition {partition} for topic {topic}")
        producer._ensure_valid_record_size(producer._estimate_size_in_bytes(key, value, headers))
        if first:  # added once its size is known to pass
            tp = TopicPartition(topic, partition)
            producer._transaction_manager.maybe_add_partition_to_transaction(tp)  # raises outside one
            self._added[topic, partition] = tp
        future, _, created, _ = self._accumulator.append(tp, None, key, value, headers)
        if created and not first:  # the batch before it is full
            producer._sender.wakeup()
        return future


class OffsetsSent(Protocol):
    def wait(self, timeout_ms: int | None = None) -> bool: ...


def start_sending_offsets(
    producer: KafkaProducer, offsets: dict[TopicPartition, OffsetAndMetadata], group: ConsumerGroupMetadata
) -> OffsetsSent:
    """`send_offsets_to_transaction` without waiting for it: `wait()` on the result before committing.

    kafka-python 3.0.12 blocks in it for two round trips (AddOffsetsToTxn, then TxnOffsetCommit),
    which under a 200 commands/s load took a median 21 ms per transaction while the processor
    sat idle. Started as the transaction begins, they run while its records are decided; the
    public call is that same request and a wait.
    """
    result: OffsetsSent = producer._transaction_manager.send_offsets_to_transaction(offsets, group)
    producer._sender.wakeup()
    return result
