"""`loyalty replay`: rebuilds equal to the live read models, differences caught, an atomic switch."""

from __future__ import annotations

import re

import psycopg
import pytest

from services import cli
from services.audit.replay import fingerprint
from services.projector.checksums import table_checksums
from tests.conftest import Isolated, Running
from tests.integration.projection import caught_up, projected, publish_events
from tests.integration.test_projector_exactly_once import crafted_log
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of
from tests.waiting import eventually


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["replay", *args])
    return code, capsys.readouterr().out


def printed_fingerprint(out: str) -> str:
    found = re.search(r"^fingerprint ([0-9a-f]{64})$", out, re.MULTILINE)
    assert found, out
    return found.group(1)


def indexes(conn: psycopg.Connection, schema: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT indexname, replace(indexdef, %s, '') FROM pg_indexes WHERE schemaname = %s ORDER BY 1",
        (f" {schema}.", schema),
    ).fetchall()
    assert len(rows) > 10
    return rows


def test_replays_are_deterministic_equal_to_live_and_catch_differences(
    isolated: Isolated, running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated.export(monkeypatch)
    url = isolated.env["LOYALTY_DATABASE_URL"]
    with projected(isolated, running, crafted_log(60)):
        with psycopg.connect(url) as conn:
            live = fingerprint(table_checksums(conn))
        first, out = replay(capsys, "--into", "replay_one")
        assert first == 0, out
        assert "replay_one: identical to public" in out
        with psycopg.connect(url) as conn:
            kinds = conn.execute(
                "SELECT DISTINCT relpersistence FROM pg_class "
                "WHERE relnamespace = 'replay_one'::regnamespace AND relkind = 'r'"
            ).fetchall()
        assert kinds == [("u",)], "a rebuild only compared skips the write-ahead log"
        second, again = replay(capsys, "--into", "replay_two")
        assert second == 0, again
        assert printed_fingerprint(out) == printed_fingerprint(again) == live
        assert replay(capsys, "--into", "replay_one")[0] == 2, "an existing schema is never overwritten"

        with psycopg.connect(url) as conn:
            conn.execute("UPDATE members SET available = available + 1 WHERE member_id = 'x-7'")
        code, out = replay(capsys, "--into", "replay_three")
        assert code == 1
        assert re.search(r"^members .* DIFFERS from public", out, re.MULTILINE), out
        assert "replay_three: DIFFERENT from public" in out


def test_switch_serves_the_rebuilt_schema_and_the_projector_follows(
    isolated: Isolated, running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated.export(monkeypatch)
    url = isolated.env["LOYALTY_DATABASE_URL"]
    with projected(isolated, running, crafted_log(20)) as read:
        before = read.get("/v1/members/x-3").json()["balance"]
        code, out = replay(capsys, "--switch")
        assert code == 0, out
        assert "switched: public serves the rebuilt read models" in out
        with psycopg.connect(url) as conn:
            schemas = [row[0] for row in conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1")]
            retired = next(name for name in schemas if name.startswith("public_retired_"))
            assert indexes(conn, "public") == indexes(conn, retired), "the indexes dropped are back"
            unlogged = conn.execute(
                "SELECT relname FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relpersistence <> 'p'"
            ).fetchall()
            assert unlogged == [], "a switched-in rebuild is written to the write-ahead log"
        assert read.get("/v1/members/x-3").json()["balance"] == before

        publish_events(isolated, log_of("late-1", make.purchase("o-1", 12300, at(2026, 1, 2))))
        eventually(lambda: read.get("/v1/members/late-1").status_code == 200, what="new events projected")
        eventually(lambda: caught_up(read), what="caught up after the switch")
        assert read.get("/v1/members/late-1").json()["balance"]["available"] == 123
