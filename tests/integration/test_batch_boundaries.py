"""The read models do not depend on how the log is cut into polls and transactions.

The live projector applies whatever a poll brings; a replay folds many polls into one
transaction. Both must give the same rows as the whole log applied at once.
"""

from __future__ import annotations

import json
import time
import zlib

import psycopg
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from schemas.events import Event
from services.migrations import migrate, schema_options
from services.projector.checksums import table_checksums
from services.projector.projector import OpenBatch, apply_batch
from tests.conftest import Isolated
from tests.integration.test_projector_exactly_once import crafted_log
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import RULES, at, log_of

TOPIC = "boundaries"
Poll = dict[TopicPartition, list[ConsumerRecord]]


def reused_ids() -> list[Event]:
    """Purchase ids that come back once the ledger has forgotten them: a refund of the first
    purchase, then the id's lot credited again, once still open and once used up before."""
    return log_of(
        "reuse-open",
        make.purchase("p-1", 100000, at(2025, 1, 10)),
        make.tick(at(2025, 1, 20)),
        make.refund("r-1", "p-1", 10000, at(2025, 2, 1)),
        make.purchase("p-2", 5000, at(2026, 3, 15)),
        make.purchase("p-1", 20000, at(2026, 4, 1), command_id="purchase:p-1:again"),
        make.refund("r-2", "p-1", 5000, at(2026, 4, 5)),
        make.tick(at(2026, 4, 20)),
    ) + log_of(
        "reuse-spent",
        make.purchase("q-1", 100000, at(2025, 1, 10)),
        make.tick(at(2025, 1, 20)),
        make.redeem("rd-1", 1000, at(2025, 2, 1)),
        make.purchase("q-2", 5000, at(2026, 3, 15)),
        make.purchase("q-1", 30000, at(2026, 4, 1), command_id="purchase:q-1:again"),
        make.tick(at(2026, 4, 20)),
    )


def pending_points() -> list[Event]:
    """Points held back for a week: reversed in part while pending, then matured and spent."""
    rules = RULES.model_copy(update={"pending_days": 7})
    return log_of(
        "pending",
        make.purchase("s-1", 80000, at(2025, 5, 1)),
        make.refund("sr-1", "s-1", 20000, at(2025, 5, 3)),
        make.purchase("s-2", 30000, at(2025, 5, 4)),
        make.tick(at(2025, 5, 9)),
        make.redeem("srd-1", 500, at(2025, 5, 20)),
        make.tick(at(2025, 5, 20)),
        rules=rules,
    )


def records() -> list[ConsumerRecord]:
    """The crafted log as a topic of three partitions would deliver it, offsets included."""
    offsets = [0, 0, 0]
    delivered = []
    for event in crafted_log(40) + reused_ids() + pending_points():
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
    twice = [poll for poll in small for _ in range(2)]
    assert project(url, "cut_polls_delivered_twice", [twice]) == whole

    with psycopg.connect(url, options=schema_options("cut_per_poll")) as conn:
        migrate(url, "cut_per_poll")
        for poll in polls(delivered, 13):
            apply_batch(conn, TOPIC, poll, time.monotonic())
        assert table_checksums(conn) == whole


def test_a_refund_stays_with_its_purchase_when_the_id_comes_back_in_the_same_transaction(
    isolated: Isolated,
) -> None:
    url = isolated.env["LOYALTY_DATABASE_URL"]
    member = [record for record in records() if json.loads(record.value)["member_id"] == "reuse-open"]
    one_by_one = project(url, "refund_one_by_one", [[poll] for poll in polls(member, 1)])
    # The first purchase of p-1 in one transaction; its refund and p-1's return in the next.
    split = project(url, "refund_split", [polls(member[:3], 3), polls(member[3:], len(member))])
    assert split == one_by_one
