"""Members' personal data: sealed before any topic sees it, masked or decrypted on reads, crypto-shredded."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from services import cli
from services.ledger.api import create_app as create_ledger_app
from services.personal_data.crypto import MasterKey
from services.projector.api import create_app as create_read_app
from tests.conftest import Isolated
from tests.integration.kafka_io import purchase, read_all
from tests.integration.projection import caught_up
from tests.waiting import eventually

CANARY = {"name": "Canary Zhang Wei", "phone": "13912345678", "email": "canary.zhang@example.com"}
UPDATED = {"phone": "13787654321", "email": "canary.second@example.org"}


def answered(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


def enrol(ledger: TestClient, member_id: str, profile: dict[str, str]) -> dict[str, Any]:
    return answered(ledger.post("/v1/members", json={"member_id": member_id, "profile": profile}), 201)


def test_no_personal_value_appears_in_clear_in_any_topic_table_or_log(
    system: tuple[TestClient, TestClient], isolated: Isolated, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ledger, read = system
    enrol(ledger, "p-1", {**CANARY, "birthday": "1990-05-17"})
    answered(ledger.post("/v1/purchases", json=purchase("p-1", "o-1", "88.00")), 201)
    changed = answered(ledger.patch("/v1/members/p-1/profile", json=UPDATED), 201)

    profile = answered(read.get("/v1/members/p-1/profile", params={"min_position": changed["position"]}), 200)
    assert profile == {**CANARY, **UPDATED, "birthday": "1990-05-17", "member_id": "p-1", "erased": False}
    shown = answered(read.get("/v1/members/p-1"), 200)["profile"]
    assert shown == {
        "erased": False,
        "name": "C***************",
        "phone": "137****4321",
        "email": "c***@example.org",
        "birthday": "****-**-**",
    }

    secrets_ = [*CANARY.values(), *UPDATED.values(), "1990-05-17"]
    settings = isolated.ledger()
    for topic in settings.topic_configs():
        for record in read_all(settings.kafka_bootstrap, topic, committed=False):
            blob = b"".join(
                [record.key or b"", record.value or b"", *(value or b"" for _, value in record.headers or [])]
            )
            for secret in secrets_:
                assert secret.encode() not in blob, f"{secret!r} in clear on {topic}"
    with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchall()
            text = "\n".join(row[0] for row in rows)
            for secret in secrets_:
                assert secret not in text, f"{secret!r} in clear in {schema}.{table}"
    for secret in secrets_:
        assert secret not in caplog.text, f"{secret!r} in the logs"
    assert any(
        r.getMessage() == "profile read" and getattr(r, "member_id", "") == "p-1" for r in caplog.records
    )


def test_erasure_shreds_the_profile_and_keeps_points_chain_and_replay(
    system: tuple[TestClient, TestClient],
    isolated: Isolated,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, read = system
    enrol(ledger, "p-2", CANARY)
    bought = answered(ledger.post("/v1/purchases", json=purchase("p-2", "o-1", "250.00")), 201)
    before = answered(read.get("/v1/members/p-2/balance", params={"min_position": bought["position"]}), 200)

    erased = answered(ledger.delete("/v1/members/p-2/personal-data"), 201)
    assert [event["type"] for event in erased["events"]] == ["PersonalDataErased"]
    assert erased["events"][0]["data"]["actor"] == "bootstrap-admin"
    assert answered(ledger.delete("/v1/members/p-2/personal-data"), 200)["status"] == "duplicate"
    with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
        assert (
            conn.execute("SELECT 1 FROM loyalty_private.member_keys WHERE member_id = 'p-2'").fetchone()
            is None
        )

    position = {"min_position": erased["position"]}
    assert answered(read.get("/v1/members/p-2/profile", params=position), 200) == {
        "member_id": "p-2",
        "erased": True,
        "name": None,
        "phone": None,
        "email": None,
        "birthday": None,
    }
    assert answered(read.get("/v1/members/p-2"), 200)["profile"]["erased"] is True
    after = answered(read.get("/v1/members/p-2/balance"), 200)
    assert {**after, "position": None} == {**before, "position": None}
    assert ledger.patch("/v1/members/p-2/profile", json={"name": "Back"}).status_code == 409
    assert ledger.post("/v1/members", json={"member_id": "p-2", "profile": CANARY}).status_code == 409
    with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
        assert (
            conn.execute("SELECT 1 FROM loyalty_private.member_keys WHERE member_id = 'p-2'").fetchone()
            is None
        )

    isolated.export(monkeypatch)
    eventually(lambda: caught_up(read), what="caught up")
    assert cli.main(["verify"]) == 0
    assert cli.main(["replay", "--into", "after_erasure"]) == 0
    assert "after_erasure: identical to public" in capsys.readouterr().out
    with psycopg.connect(isolated.env["LOYALTY_DATABASE_URL"]) as conn:
        row = conn.execute("SELECT fields, erased FROM after_erasure.member_profiles WHERE member_id = 'p-2'")
        assert row.fetchone() == ({}, True)


def test_enrolment_is_validated_idempotent_and_exclusive(system: tuple[TestClient, TestClient]) -> None:
    ledger, _ = system
    for bad in [
        {"name": "A", "phone": "call me"},
        {"name": "A", "email": "not-an-email"},
        {"name": "A", "birthday": "2999-01-01"},
        {"name": "A", "birthday": "1990-02-30"},
        {"name": ""},
        {"name": "A", "nickname": "typo"},
    ]:
        problem = ledger.post("/v1/members", json={"member_id": "p-3", "profile": bad})
        assert problem.status_code == 422, bad
        assert problem.headers["content-type"] == "application/problem+json"
    first = enrol(ledger, "p-3", {"name": "Li Lei", "phone": "13800000000"})
    again = answered(
        ledger.post(
            "/v1/members", json={"member_id": "p-3", "profile": {"name": "Li Lei", "phone": "13800000000"}}
        ),
        200,
    )
    assert again["command_id"] == first["command_id"]
    assert again["status"] == "duplicate"
    other = ledger.post("/v1/members", json={"member_id": "p-3", "profile": {"name": "Han Meimei"}})
    assert other.status_code == 409
    assert other.json()["type"].endswith("/member_exists")
    assert ledger.patch("/v1/members/p-3/profile", json={}).status_code == 422
    # A member a purchase enrolled gets the profile as an update.
    answered(ledger.post("/v1/purchases", json=purchase("p-4", "o-1", "10.00")), 201)
    assert [e["type"] for e in enrol(ledger, "p-4", {"name": "Wang"})["events"]] == ["ProfileUpdated"]


def test_rotating_the_master_key_rewraps_every_data_key(
    system: tuple[TestClient, TestClient], isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, _ = system
    enrolled = enrol(ledger, "p-5", {"name": "Rotating Ruth", "email": "ruth@example.com"})
    old, new = isolated.env["LOYALTY_MASTER_KEY"], MasterKey.generate("mk-next").text()
    isolated.export(monkeypatch)
    monkeypatch.setenv("LOYALTY_MASTER_KEY", new)
    monkeypatch.setenv("LOYALTY_PREVIOUS_MASTER_KEYS", old)
    rotated = isolated.ledger(master_key=new, previous_master_keys=old)
    with TestClient(create_ledger_app(rotated), headers=isolated.headers) as during:  # before the rewrap
        answered(during.patch("/v1/members/p-5/profile", json={"phone": "13500000000"}), 201)
        again = during.post(
            "/v1/members",
            json={"member_id": "p-5", "profile": {"name": "Rotating Ruth", "email": "ruth@example.com"}},
        )
        assert answered(again, 200)["status"] == "duplicate"
    assert cli.main(["datakeys", "rewrap"]) == 0
    with TestClient(
        create_read_app(isolated.projector(master_key=new, previous_master_keys=None)),
        headers=isolated.headers,
    ) as read:
        profile = read.get("/v1/members/p-5/profile", params={"min_position": enrolled["position"]})
        assert answered(profile, 200)["email"] == "ruth@example.com"


def test_erasure_of_a_member_not_yet_enrolled_leaves_nothing_behind(
    system: tuple[TestClient, TestClient],
) -> None:
    ledger, read = system
    assert ledger.delete("/v1/members/p-6/personal-data").status_code == 404
    answered(ledger.post("/v1/purchases", json=purchase("p-6", "o-1", "10.00")), 201)
    enrol(ledger, "p-6", {"name": "Later"})
    erased = answered(ledger.delete("/v1/members/p-6/personal-data"), 201)
    assert [event["type"] for event in erased["events"]] == ["PersonalDataErased"]
    # A forged position cannot make the profile route wait, or say anything, without the right key.
    forged = read.get(
        "/v1/members/p-6/profile", params={"min_position": "OTk5OnAtNg"}, headers={"Authorization": ""}
    )
    assert forged.status_code == 401
