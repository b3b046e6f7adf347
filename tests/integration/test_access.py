"""Access control: every /v1 route needs a key with its scope; keys are made, used and revoked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from schemas.rules import ProgramRules
from services import cli
from services.access import store
from services.access.keys import SCOPES, Scope
from services.ledger.api import create_app as create_ledger_app
from services.ledger.processor import Processor
from services.migrations import migrate, schema_options
from services.projector.api import create_app as create_read_app
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import purchase


def required_scope(dependant: Dependant) -> str | None:
    for dependency in dependant.dependencies:
        scope = getattr(dependency.call, "scope", None) or required_scope(dependency)
        if scope:
            return str(scope)
    return None


def v1_routes(app: FastAPI) -> list[tuple[str, str, str | None]]:
    return [
        (method, route.path, required_scope(route.dependant))
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/")
        for method in sorted(route.methods)
    ]


def make_key(isolated: Isolated, *scopes: Scope) -> str:
    url = isolated.env["LOYALTY_DATABASE_URL"]
    migrate(url, store.PRIVATE_SCHEMA, "services.access")
    with psycopg.connect(url, options=schema_options(store.PRIVATE_SCHEMA)) as conn:
        return store.create(conn, f"test {'+'.join(scopes)}", scopes).token


@pytest.fixture
def apps(isolated: Isolated) -> Iterator[list[TestClient]]:
    with (
        TestClient(create_ledger_app(isolated.ledger(command_timeout_s=0.5))) as ledger,
        TestClient(create_read_app(isolated.projector())) as read,
    ):
        yield [ledger, read]


def test_every_route_needs_a_key_with_its_scope(apps: list[TestClient], isolated: Isolated) -> None:
    holding = {scope: make_key(isolated, scope) for scope in SCOPES}
    all_but = {scope: make_key(isolated, *(other for other in SCOPES if other != scope)) for scope in SCOPES}
    checked = 0
    for client in apps:
        routes = v1_routes(client.app)  # type: ignore[arg-type]
        assert routes
        for method, path, scope in routes:
            assert scope in SCOPES, f"{method} {path} has no scope: every /v1 route must name one"
            url = re.sub(r"\{[^}]+\}", "m-1", path)
            body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None

            def call(
                token: str | None,
                client: TestClient = client,
                method: str = method,
                url: str = url,
                body: Any = body,
            ) -> Any:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return client.request(method, url, json=body, headers=headers)

            missing = call(None)
            assert missing.status_code == 401, (method, path, missing.text)
            assert missing.headers["content-type"] == "application/problem+json"
            assert call("lk_nobody_secret").status_code == 401, (method, path)
            forbidden = call(all_but[scope])
            assert forbidden.status_code == 403, (method, path, forbidden.text)
            assert forbidden.json()["type"].endswith("/forbidden")
            allowed = call(holding[scope])
            assert allowed.status_code < 500 and allowed.status_code not in (401, 403), (
                method,
                path,
                allowed.text,
            )
            checked += 1
    assert checked >= 15


def test_keys_made_by_the_cli_work_until_revoked(
    apps: list[TestClient],
    isolated: Isolated,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    isolated.export(monkeypatch)
    assert cli.main(["keys", "create", "--name", "crm", "--scope", "read"]) == 0
    out = capsys.readouterr().out
    key_id = re.search(r"key id: (\S+)", out).group(1)  # type: ignore[union-attr]
    token = re.search(r"token:  (\S+)", out).group(1)  # type: ignore[union-attr]
    _, read = apps
    auth = {"Authorization": f"Bearer {token}"}
    assert read.get("/v1/segments/active/members", headers=auth).status_code == 200
    assert read.get("/v1/members/m-1/history", headers=auth).status_code == 403
    assert cli.main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "crm" in listed and token not in listed
    with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
        stored = conn.execute("SELECT secret_hash FROM loyalty_private.api_keys WHERE key_id = %s", (key_id,))
        assert token.split("_", 2)[2] not in str(stored.fetchone())
    assert cli.main(["keys", "revoke", key_id]) == 0
    with TestClient(create_read_app(isolated.projector())) as fresh:  # no key cached yet
        assert fresh.get("/v1/segments/active/members", headers=auth).status_code == 401


def test_the_actor_of_an_admin_command_is_the_key_id(isolated: Isolated, running: Running) -> None:
    token = make_key(isolated, "commands", "admin")
    key_id = token.split("_")[1]
    running.start(Processor(isolated.ledger(), ProgramRules()).run)
    with TestClient(
        create_ledger_app(isolated.ledger()), headers={"Authorization": f"Bearer {token}"}
    ) as ledger:
        assert ledger.post("/v1/purchases", json=purchase("m-a", "o-1", "100.00")).status_code == 201
        body = {
            "adjustment_id": "a-1",
            "member_id": "m-a",
            "points": 5,
            "reason": "goodwill",
            "actor": "mallory",
        }
        rejected = ledger.post("/v1/adjustments", json=body)
        assert rejected.status_code == 422, "the actor is never taken from the request"
        del body["actor"]
        outcome = ledger.post("/v1/adjustments", json=body).json()
        tier = ledger.put("/v1/members/m-a/tier", json={"tier": "gold", "reason": "vip"}).json()
    actors = [
        event["data"]["actor"] for event in outcome["events"] + tier["events"] if "actor" in event["data"]
    ]
    assert actors == [key_id, key_id]
