"""Exactly once under SIGKILL: a projector killed mid-run ends equal to a projection from scratch."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from services.kafka_offsets import committed_reader, end_offsets
from services.migrations import migrate
from services.projector.checksums import table_checksums
from services.projector.projector import Projector
from tests.conftest import Isolated, Running
from tests.integration.projection import publish_events
from tests.integration.serving import spawn
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of
from tests.waiting import eventually


def crafted_log(members: int) -> list:  # type: ignore[type-arg]
    log = []
    for n in range(members):
        day = 1 + n % 27
        log += log_of(
            f"x-{n}",
            make.purchase(f"o-{n}-1", 150000 + n, at(2025, 1, day)),
            make.purchase(f"o-{n}-2", 90000, at(2025, 3, day), [make.item("beauty", "900.00")]),
            make.refund(f"r-{n}", f"o-{n}-2", 30000, at(2025, 3, day + 1)),
            make.redeem(f"rd-{n}", 700, at(2025, 4, day)),
            make.cancel(f"rd-{n}", at(2025, 4, day + 1))
            if n % 3 == 0
            else make.adjust(f"a-{n}", -5, at(2025, 4, 2)),
            make.tick(at(2027, 1, 10)),
        )
    return log


def applied(url: str, topic: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM projector_checkpoints WHERE topic = %s", (topic,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_killed_projector_ends_equal_to_a_projection_from_scratch(
    isolated: Isolated, running: Running, tmp_path: Path
) -> None:
    settings = isolated.projector()
    log = crafted_log(400)
    publish_events(isolated, log)
    reader = committed_reader(settings.kafka_bootstrap, "test-ends")
    total = sum(end_offsets(reader, settings.topic_events).values())
    reader.close()
    assert total == len(log)
    url, topic = settings.database_url, settings.topic_events
    migrate(url)

    env = {
        **isolated.env,
        "LOYALTY_PROJECTOR_BATCH_MAX": "150",
        "LOYALTY_PROJECTOR_SESSION_TIMEOUT_MS": "6000",
    }
    for share in (0.3, 0.7):
        process = spawn("projector", env, tmp_path / "projector.log")
        try:
            target = share * total
            eventually(lambda: applied(url, topic) >= target, timeout_s=60, what=f"{share:.0%} applied")  # noqa: B023
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        assert applied(url, topic) < total, "killed before the end, so the restart has work to do"
        time.sleep(0.2)
    running.start(Projector(isolated.projector(projector_session_timeout_ms=6000)).run)
    eventually(lambda: applied(url, topic) == total, timeout_s=60, what="restarted projector caught up")

    expected = assert_equal_to_a_projection_from_scratch(isolated, running, total)
    assert expected["member_events"][0] == len(log)


def assert_equal_to_a_projection_from_scratch(
    isolated: Isolated, running: Running, total: int
) -> dict[str, tuple[int, str]]:
    """The test's read models equal those two fresh instances make of the same log; so do the
    skip counts, where an event read twice shows as a duplicate. Stops the running services."""
    settings = isolated.projector()
    url, topic = settings.database_url, settings.topic_events
    with second_database(url) as fresh_url:
        migrate(fresh_url)
        for _ in range(2):
            fresh = isolated.projector(
                database_url=fresh_url, projector_group=f"{settings.projector_group}-2"
            )
            running.start(Projector(fresh).run)
        eventually(lambda: applied(fresh_url, topic) == total, timeout_s=60, what="fresh projection done")
        running.stop_all()
        with psycopg.connect(url) as tested, psycopg.connect(fresh_url) as fresh_conn:
            expected = table_checksums(fresh_conn)
            assert table_checksums(tested) == expected
            assert skips(tested, topic) == skips(fresh_conn, topic)
    return expected


def skips(conn: psycopg.Connection, topic: str) -> dict[str, int]:
    rows = conn.execute("SELECT reason, events FROM projector_skips WHERE topic = %s", (topic,)).fetchall()
    return {str(reason): int(events) for reason, events in rows}


@contextmanager
def second_database(url: str) -> Iterator[str]:
    dbname = f"{psycopg.conninfo.conninfo_to_dict(url)['dbname']}_2"
    name = sql.Identifier(dbname)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield psycopg.conninfo.make_conninfo(url, dbname=dbname)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
