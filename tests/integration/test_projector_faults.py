"""The projector through rebalances, Postgres failures and a second writer, on real Kafka and Postgres.

Each ends with read models equal to a projection of the same log from scratch: nothing lost,
nothing applied twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from kafka import TopicPartition
from psycopg import sql

from services.migrations import migrate
from services.projector.projector import Batch, Projector, apply_batch
from services.projector.settings import ProjectorSettings
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import read_all
from tests.integration.projection import publish_events
from tests.integration.test_projector_exactly_once import (
    applied,
    assert_equal_to_a_projection_from_scratch,
    crafted_log,
)
from tests.waiting import eventually


class ReadsAcrossARebalance(Projector):
    """A projector whose first batch goes on reading until a rebalance gives some of its partitions
    to another instance, and is applied only once that instance has applied them: a long pause
    between two polls of a batch (a stalled host, a slow network), on the test's own clock."""

    def __init__(self, settings: ProjectorSettings, applied_elsewhere: Callable[[set[int]], bool]) -> None:
        super().__init__(settings)
        self.reading = threading.Event()
        self.read_before_rebalance: set[int] = set()
        self.given_away: set[int] = set()
        self._applied_elsewhere = applied_elsewhere

    def _read(self, timeout_ms: int, max_records: int) -> int:
        if self.reading.is_set() or not self._reading:
            return super()._read(timeout_ms, max_records)
        self.reading.set()  # the test starts the other instance
        owned = self._owned()
        read = super()._read

        def rebalanced() -> bool:
            self.read_before_rebalance |= {tp.partition for tp in self._reading}
            read(100, max_records)
            return self._owned() < owned

        eventually(rebalanced, timeout_s=60, what="a rebalance in the middle of the batch")
        self.given_away = owned - self._owned()
        eventually(
            lambda: self._applied_elsewhere(self.given_away), timeout_s=60, what="the new owner applied"
        )
        return self._count()

    def _owned(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}


def test_a_rebalance_in_the_middle_of_a_batch_neither_crashes_nor_applies_twice(
    isolated: Isolated, running: Running
) -> None:
    settings = isolated.projector(projector_session_timeout_ms=6000)
    url, topic = settings.database_url, settings.topic_events
    log = crafted_log(100)
    publish_events(isolated, log)
    migrate(url)

    slow = ReadsAcrossARebalance(settings, lambda partitions: set(checkpoints(url, topic)) >= partitions)
    running.start(slow.run)
    assert slow.reading.wait(timeout=60), "the first batch has records"
    running.start(Projector(settings).run)
    eventually(lambda: caught_up(running, url, topic, len(log)), timeout_s=60, what="both caught up")

    assert slow.given_away and slow.given_away <= slow.read_before_rebalance, (
        "the batch had read partitions the rebalance gave away, and the new owner applied them first"
    )
    assert_equal_to_a_projection_from_scratch(isolated, running, len(log))


@pytest.mark.parametrize(
    ("interrupt", "refused_for_s"),
    [("pg_terminate_backend", 2.0), ("pg_cancel_backend", 0.0)],
    ids=["connection-killed-and-refused-a-while", "statement-cancelled"],
)
def test_postgres_failing_in_the_middle_of_a_batch_loses_and_repeats_nothing(
    isolated: Isolated,
    running: Running,
    endpoints: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    interrupt: str,
    refused_for_s: float,
) -> None:
    settings = isolated.projector(projector_session_timeout_ms=6000)
    url, topic = settings.database_url, settings.topic_events
    log = crafted_log(120)
    half = len(log) // 2
    publish_events(isolated, log[:half])
    migrate(url)
    running.start(Projector(settings).run)
    eventually(lambda: caught_up(running, url, topic, half), timeout_s=60, what="first half applied")

    with psycopg.connect(url) as blocker:
        # The batch writes its rows, then waits for the checkpoint rows this transaction holds.
        blocker.execute("SELECT * FROM projector_checkpoints FOR UPDATE")
        publish_events(isolated, log[half:])
        writer = eventually(lambda: waiting_backend(blocker), timeout_s=30, what="a batch waiting to commit")
        with connections_refused(endpoints["LOYALTY_DATABASE_URL"], url, refused_for_s > 0):
            blocker.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(interrupt)), (writer,))
            time.sleep(refused_for_s)
    eventually(
        lambda: caught_up(running, url, topic, len(log)), timeout_s=60, what="caught up after the failure"
    )

    logged = [record.getMessage() for record in caplog.records]
    assert "postgres failed; resuming from the checkpoints" in logged
    assert ("postgres unavailable" in logged) == (refused_for_s > 0), "reconnected only once allowed to"
    assert_equal_to_a_projection_from_scratch(isolated, running, len(log))


def test_a_second_writer_moving_the_checkpoints_makes_the_projector_drop_its_batch(
    isolated: Isolated, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated.projector()
    url, topic = settings.database_url, settings.topic_events
    # One unreadable record, counted once by a clean run, twice if its batch were applied twice.
    log: list[Any] = [{"member_id": "junk", "type": "NoSuchEvent"}, *crafted_log(60)]
    publish_events(isolated, log)
    migrate(url)

    with psycopg.connect(url, autocommit=True) as other:
        # The other writer (a replay switched in, or a partition's next owner) holds every partition...
        other.execute(
            "SELECT pg_advisory_lock(hashtext(%s), p) FROM generate_series(0, %s) AS p",
            (topic, settings.partitions - 1),
        )
        running.start(Projector(settings).run)
        eventually(lambda: waiting_backend(other), timeout_s=30, what="a batch read from offset 0, waiting")
        # ...and applies the first half of each before letting go.
        apply_batch(other, topic, first_halves(read_all(settings.kafka_bootstrap, topic)), time.monotonic())
        other.execute("SELECT pg_advisory_unlock_all()")
    eventually(lambda: caught_up(running, url, topic, len(log)), timeout_s=60, what="caught up")

    assert any(record.getMessage().startswith("checkpoints moved") for record in caplog.records)
    assert_equal_to_a_projection_from_scratch(isolated, running, len(log))


def caught_up(running: Running, url: str, topic: str, total: int) -> bool:
    assert not running.errors, running.errors
    return applied(url, topic) == total


def checkpoints(url: str, topic: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT partition, next_offset FROM projector_checkpoints WHERE topic = %s", (topic,)
        ).fetchall()
    return {int(partition): int(offset) for partition, offset in rows}


def waiting_backend(conn: psycopg.Connection) -> int | None:
    """The backend of this database that waits for a lock, if one does."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else None


@contextmanager
def connections_refused(admin_url: str, url: str, refused: bool) -> Iterator[None]:
    """New connections to the test's database refused meanwhile (those open stay)."""
    name = sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(url)["dbname"]))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(name, sql.Literal(not refused))
        )
        try:
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


def first_halves(records: list[Any]) -> Batch:
    by_partition: Batch = {}
    for record in records:
        by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
    return {tp: found[: (len(found) + 1) // 2] for tp, found in by_partition.items()}
