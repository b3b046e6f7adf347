"""The walking skeleton end to end: purchases in, events in the log, balances out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from schemas.canonical import GENESIS_HASH, event_hash
from services.ledger.partitioning import partition_for
from tests.conftest import Isolated
from tests.integration.kafka_io import events_of, publish, purchase, read_all, send_purchase
from tests.waiting import eventually


def balance_of(read: TestClient, member_id: str, available: int) -> dict[str, int] | None:
    response = read.get(f"/v1/members/{member_id}/balance")
    if response.status_code == 200 and response.json()["available"] == available:
        return response.json()  # type: ignore[no-any-return]
    return None


def test_http_purchase_becomes_a_balance(system: tuple[TestClient, TestClient]) -> None:
    ledger, read = system
    response = ledger.post("/v1/purchases", json=purchase("m-42", "ord-1001", "129.90"))
    assert response.status_code == 201, response.text
    outcome = response.json()
    assert outcome["status"] == "applied"
    assert [e["type"] for e in outcome["events"]] == ["MemberEnrolled", "PurchaseRecorded", "PointsEarned"]
    assert outcome["balance"] == {"available": 129, "pending": 0}
    assert outcome["tier"] == "regular"
    assert ledger.get(f"/v1/commands/{outcome['command_id']}").json()["status"] == "applied"
    balance = eventually(lambda: balance_of(read, "m-42", 129), what="balance of 129")
    assert balance["lifetime_earned"] == 129


def test_kafka_purchase_becomes_a_balance(system: tuple[TestClient, TestClient], isolated: Isolated) -> None:
    _, read = system
    settings = isolated.ledger()
    send_purchase(settings, "m-7", "ord-1", "99.99")
    eventually(lambda: balance_of(read, "m-7", 99), what="balance of 99")


def test_events_are_chained_and_a_duplicate_purchase_earns_once(
    system: tuple[TestClient, TestClient], isolated: Isolated
) -> None:
    ledger, read = system
    settings = isolated.ledger()
    statuses = [
        ledger.post("/v1/purchases", json=purchase("m-1", purchase_id, amount)).status_code
        for purchase_id, amount in (("o-1", "10.50"), ("o-2", "20.00"), ("o-1", "10.50"))
    ]
    assert statuses == [201, 201, 200]
    eventually(lambda: balance_of(read, "m-1", 30), what="balance of 30")
    events = events_of(settings.kafka_bootstrap, settings.topic_events, "m-1")
    assert [e["type"] for e in events] == ["MemberEnrolled"] + ["PurchaseRecorded", "PointsEarned"] * 2
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5]
    previous = GENESIS_HASH
    for event in events:
        assert event["prev_hash"] == previous
        assert event["hash"] == event_hash(event)
        previous = event["hash"]
    assert {e["rules_version"] for e in events} == {1}


def test_invalid_records_are_dead_lettered_and_processing_goes_on(
    system: tuple[TestClient, TestClient], isolated: Isolated
) -> None:
    _, read = system
    settings = isolated.ledger()
    bad = json.dumps(purchase("m-9", "ord-x", "-5")).encode()
    # A time no calendar arithmetic can hold (it once stopped the processor).
    ancient = json.dumps(purchase("m-9", "ord-y", "5.00", occurred_at="0001-01-01T00:00:00+14:00")).encode()
    publish(settings.kafka_bootstrap, settings.topic_purchases, b"m-9", b"not json")
    publish(settings.kafka_bootstrap, settings.topic_purchases, b"m-9", bad)
    publish(settings.kafka_bootstrap, settings.topic_purchases, b"m-9", ancient)
    send_purchase(settings, "m-9", "ord-ok", "5.00")
    eventually(lambda: balance_of(read, "m-9", 5), what="balance after bad records")
    dead = read_all(settings.kafka_bootstrap, settings.topic_dlq)
    assert [record.value for record in dead] == [b"not json", bad, ancient]
    for record in dead:
        headers = {key: value.decode() for key, value in record.headers}
        assert headers["error.code"] == "invalid_message"
        assert headers["error.message"]
        assert headers["source.topic"] == settings.topic_purchases
        assert int(headers["source.partition"]) == partition_for("m-9", settings.partitions)
        assert int(headers["source.offset"]) >= 0
    assert "amount" in dict(dead[1].headers)["error.message"].decode()


def test_a_misrouted_record_is_rerouted_to_the_members_partition(
    system: tuple[TestClient, TestClient], isolated: Isolated
) -> None:
    _, read = system
    settings = isolated.ledger()
    home = partition_for("m-5", settings.partitions)
    wrong = (home + 1) % settings.partitions
    publish(
        settings.kafka_bootstrap,
        settings.topic_purchases,
        b"ord-5",
        json.dumps(purchase("m-5", "ord-5", "7.00")).encode(),
        partition=wrong,
    )
    eventually(lambda: balance_of(read, "m-5", 7), what="rerouted balance")
    moved = [r for r in read_all(settings.kafka_bootstrap, settings.topic_purchases) if r.partition == home]
    assert [r.key for r in moved] == [b"m-5"]
    events = [r for r in read_all(settings.kafka_bootstrap, settings.topic_events) if r.key == b"m-5"]
    assert {r.partition for r in events} == {home}


def test_unknown_member_is_a_404_problem(system: tuple[TestClient, TestClient]) -> None:
    _, read = system
    response = read.get("/v1/members/nobody/balance")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


def test_bad_request_is_a_422_problem(system: tuple[TestClient, TestClient]) -> None:
    ledger, _ = system
    response = ledger.post("/v1/purchases", json=purchase("m-1", "o-1", "12.345"))
    assert response.status_code == 422
    body = response.json()
    assert body["type"].endswith("/invalid_request")
    assert "amount" in body["detail"]


def test_both_services_are_healthy_and_ready(system: tuple[TestClient, TestClient]) -> None:
    for client in system:
        assert client.get("/healthz").status_code == 200
        eventually(lambda c=client: c.get("/readyz").status_code == 200, what="ready")


def test_a_reused_or_future_dated_purchase_on_kafka_is_rejected_in_the_log(
    system: tuple[TestClient, TestClient], isolated: Isolated
) -> None:
    """The same outcomes as over HTTP (issue 14): never dropped without a trace."""
    settings = isolated.ledger()
    send_purchase(settings, "m-8", "ord-1", "10.00")
    send_purchase(settings, "m-8", "ord-1", "10.00")  # a retry: nothing more
    send_purchase(settings, "m-8", "ord-1", "55.00")  # the id used for another purchase
    ahead = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    send_purchase(settings, "m-8", "ord-2", "10.00", occurred_at=ahead)

    def rejections() -> list[str] | None:
        events = events_of(settings.kafka_bootstrap, settings.topic_events, "m-8")
        found = [e["data"]["code"] for e in events if e["type"] == "CommandRejected"]
        return found if len(found) == 2 else None

    assert eventually(rejections, what="two rejections") == ["duplicate_purchase", "purchase_in_future"]
    events = events_of(settings.kafka_bootstrap, settings.topic_events, "m-8")
    assert [e["type"] for e in events].count("PointsEarned") == 1
