"""The read models do not depend on how the log is cut into polls and transactions.

The live projector applies whatever a poll brings; a replay folds many polls into one
transaction. Both must give the same rows as the whole log applied at once.
"""

from __future__ import annotations

import time
import zlib

import psycopg
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from services.migrations import migrate, schema_options
from services.projector.checksums import table_checksums
from services.projector.projector import OpenBatch, apply_batch
from tests.conftest import Isolated
from tests.integration.test_projector_exactly_once import crafted_log

TOPIC = "boundaries"
Poll = dict[TopicPartition, list[ConsumerRecord]]


def records() -> list[ConsumerRecord]:
    """The crafted log as a topic of three partitions would deliver it, offsets included."""
    offsets = [0, 0, 0]
    delivered = []
    for event in crafted_log(40):
        partition = zlib.crc32(event.member_id.encode()) % 3
        value = event.to_bytes()
        delivered.append(
            ConsumerRecord(
                TOPIC, partition, None, offsets[partition], 0, 0, None, value, [], None, -1, len(value), -1
            )
        )
        offsets[partition] += 1
    return delivered


def polls(delivered: list[ConsumerRecord], size: int) -> list[Poll]:
    cut = []
    for chunk in (delivered[n : n + size] for n in range(0, len(delivered), size)):
        poll: Poll = {}
        for record in chunk:
            poll.setdefault(TopicPartition(TOPIC, record.partition), []).append(record)
        cut.append(poll)
    return cut


def project(url: str, schema: str, transactions: list[list[Poll]]) -> dict[str, tuple[int, str]]:
    migrate(url, schema)
    with psycopg.connect(url, options=schema_options(schema)) as conn:
        for polled in transactions:
            with conn.transaction():
                batch = OpenBatch(conn, TOPIC)
                for poll in polled:
                    batch.add(poll)
                batch.write(time.monotonic())
        return table_checksums(conn)


def test_any_cut_of_the_log_gives_the_same_read_models(isolated: Isolated) -> None:
    url = isolated.env["LOYALTY_DATABASE_URL"]
    delivered = records()
    whole = project(url, "cut_whole", [polls(delivered, len(delivered))])
    assert whole["member_events"][0] == len(delivered)
    assert whole["member_lots"][0] > 0 and whole["tier_history"][0] > 0

    small = polls(delivered, 7)
    assert project(url, "cut_polls_one_transaction", [small]) == whole
    assert project(url, "cut_polls_by_threes", [small[n : n + 3] for n in range(0, len(small), 3)]) == whole
    assert project(url, "cut_record_by_record", [[poll] for poll in polls(delivered, 1)]) == whole

    with psycopg.connect(url, options=schema_options("cut_per_poll")) as conn:
        migrate(url, "cut_per_poll")
        for poll in polls(delivered, 13):
            apply_batch(conn, TOPIC, poll, time.monotonic())
        assert table_checksums(conn) == whole
