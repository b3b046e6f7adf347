"""The golden log (every event type, older schema versions included) projects to its committed snapshot.

The log in tests/fixtures/ is frozen: history written today must stay readable, and project to the
same read models, forever. After an intended change to the read models, run with
LOYALTY_UPDATE_GOLDEN=1: the run still compares with the snapshot as committed, and when they differ
it rewrites the file and fails. Review the diff, then run the test again without the variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services import cli
from services.projector.checksums import READ_MODEL_TABLES
from tests.conftest import Isolated, Running
from tests.integration.projection import projected

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOLDEN_LOG = FIXTURES / "golden-log.jsonl"
SNAPSHOT = FIXTURES / "golden-snapshot.json"


def snapshot(url: str) -> dict[str, list[str]]:
    """Every read-model row as text, in a fixed order; the archived events by their hash only."""
    tables: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        for table in READ_MODEL_TABLES:
            columns = sql.SQL("t")
            if table == "member_events":
                columns = sql.SQL(
                    "(t.member_id, t.sequence, t.type, t.occurred_at, t.recorded_at, t.available, t.pending, "
                    "t.lifetime_earned, t.redeemed, t.expired, t.reversed, t.amount_minor, t.reference, "
                    "t.event->>'hash', t.adjusted, t.debt)"
                )
            query = sql.SQL("SELECT {}::text AS r FROM {} t ORDER BY r").format(
                columns, sql.Identifier(table)
            )
            tables[table] = [row[0] for row in conn.execute(query)]
    return tables


def test_the_golden_log_projects_to_the_committed_snapshot(
    isolated: Isolated, running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = [json.loads(line) for line in GOLDEN_LOG.read_text().splitlines()]
    assert {document["schema_version"] for document in raw if document["type"] == "PointsRedeemed"} == {1, 2}
    isolated.export(monkeypatch)
    with projected(isolated, running, raw):
        found = snapshot(isolated.env["LOYALTY_DATABASE_URL"])
        # The chain holds over the events as written, older versions included, and a replay agrees.
        assert cli.main(["verify"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "chain intact"
        assert cli.main(["replay", "--into", "golden_replay"]) == 0
    committed = json.loads(SNAPSHOT.read_text())
    differing = sorted(
        table for table in found.keys() | committed.keys() if found.get(table) != committed.get(table)
    )
    if differing and os.environ.get("LOYALTY_UPDATE_GOLDEN") == "1":
        SNAPSHOT.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        pytest.fail(f"rewrote {SNAPSHOT.name} ({', '.join(differing)} differed): review its diff, run again")
    for table in differing:  # the first fails, with pytest's diff of its rows
        assert found.get(table) == committed.get(table), (
            f"{table} differs from tests/fixtures/golden-snapshot.json"
        )
