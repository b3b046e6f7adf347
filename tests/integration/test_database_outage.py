"""Both APIs and their key store when Postgres drops their connections, as a restart does: each
request meeting a dropped connection answers 503 with Retry-After, never 500, and the next ones
are served on new connections."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict

from services.ledger.api import create_app as create_ledger_app
from services.projector.api import create_app as create_read_app
from tests.conftest import Isolated
from tests.integration.test_access import make_key


def drop_connections(isolated: Isolated) -> int:
    """End every server process of the test's database but this one: what a restart does to them."""
    url = isolated.env["LOYALTY_DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (conninfo_to_dict(url)["dbname"],),
        ).fetchone()
    return int(row[0]) if row else 0


def test_dropped_database_connections_answer_503_and_then_the_apis_serve_again(isolated: Isolated) -> None:
    with (
        TestClient(create_ledger_app(isolated.ledger())) as ledger,
        TestClient(create_read_app(isolated.projector())) as read,
    ):
        calls = [(read, "/v1/members/m-unknown", "read"), (ledger, "/v1/commands/c-unknown", "commands")]
        for client, path, scope in calls:  # a stored key is looked up in Postgres: the pools are in use
            auth = {"Authorization": f"Bearer {make_key(isolated, scope)}"}
            assert client.get(path, headers=auth).status_code == 404
        fresh = [(client, path, make_key(isolated, scope)) for client, path, scope in calls]
        assert drop_connections(isolated) > 0
        for client, path, key in fresh:  # keys not cached yet: the key store is asked too
            answers = []
            while not answers or answers[-1].status_code != 404:
                assert len(answers) < 10, [a.status_code for a in answers]
                answers.append(client.get(path, headers={"Authorization": f"Bearer {key}"}))
            assert len(answers) > 1, "no request met a dropped connection"
            for answer in answers[:-1]:
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "1"
                assert answer.json()["type"].endswith("/database_unavailable")
