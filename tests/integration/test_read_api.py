"""Every read route end to end: commands through the real processor, read models from the projector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas.position import encode_position
from schemas.rules import ProgramRules
from services.ledger.api import create_app as create_ledger_app
from services.ledger.processor import Processor
from services.projector.api import create_app as create_read_app
from services.projector.cursors import encode_cursor
from services.projector.projector import Projector
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import purchase
from tests.integration.projection import caught_up
from tests.waiting import eventually

MEMBER_ROUTES = ["", "/balance", "/tier", "/lots", "/activity", "/history"]


@pytest.fixture
def system(isolated: Isolated, running: Running) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_ledger_app(isolated.ledger()), headers=isolated.headers) as ledger,
        TestClient(create_read_app(isolated.projector(read_wait_s=0.5)), headers=isolated.headers) as read,
    ):
        running.start(Processor(isolated.ledger(), ProgramRules()).run)
        running.start(Projector(isolated.projector(projector_batch_max=7)).run)
        yield ledger, read


def command(ledger: TestClient, path: str, body: dict[str, Any], method: str = "POST") -> dict[str, Any]:
    response = ledger.request(method, path, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def read(client: TestClient, path: str, position: str | None = None, **params: Any) -> dict[str, Any]:
    if position is not None:
        params["min_position"] = position
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_every_member_route_reads_its_own_writes(system: tuple[TestClient, TestClient]) -> None:
    ledger, client = system
    items = [
        {"sku": "lipstick", "category": "beauty", "quantity": 1, "amount": "1500.00"},
        {"sku": "boots", "category": "shoes", "quantity": 1, "amount": "700.00"},
    ]
    command(ledger, "/v1/purchases", purchase("m-r", "o-1", "2200.00", items=items))
    command(ledger, "/v1/purchases", purchase("m-r", "o-2", "100.00", occurred_at="2026-11-23T10:00:00Z"))
    refund = {
        "type": "refund",
        "refund_id": "r-1",
        "purchase_id": "o-2",
        "member_id": "m-r",
        "amount": "40.00",
        "currency": "CNY",
        "occurred_at": "2026-11-23T12:00:00Z",
    }
    command(ledger, "/v1/refunds", refund)
    command(ledger, "/v1/redemptions", {"redemption_id": "rd-1", "member_id": "m-r", "points": 500})
    command(ledger, "/v1/redemptions", {"redemption_id": "rd-2", "member_id": "m-r", "points": 100})
    command(ledger, "/v1/redemptions/rd-2/cancel", {"member_id": "m-r"})
    command(
        ledger,
        "/v1/adjustments",
        {"adjustment_id": "a-1", "member_id": "m-r", "points": 50, "reason": "goodwill"},
    )
    last = command(ledger, "/v1/members/m-r/tier", {"tier": "gold", "reason": "vip"}, method="PUT")
    # silver earns 1.2x from the second purchase on: 2200 + floor(100 * 1.2) - 48 reversed.
    earned, reversed_ = 2200 + 120, 48

    member = read(client, "/v1/members/m-r", last["position"])
    assert member["balance"] == {
        "available": earned - reversed_ - 500 + 50,
        "pending": 0,
        "lifetime_earned": earned,
        "adjusted": 50,
        "redeemed": 500,
        "expired": 0,
        "reversed": reversed_,
        "debt": 0,
    }
    assert member["tier"]["tier"] == "gold"
    assert member["tier"]["qualifying_spend_minor"] == 220000 + 6000
    assert member["tier"]["purchase_count"] == 2
    assert member["tier"]["next"] == {
        "tier": "platinum",
        "spend_needed_minor": 2500000 - 226000,
        "purchases_needed": 10,
    }
    assert member["segment"] == "active"
    assert member["favourite_category"] == "beauty"
    assert member["position"] == last["position"]

    tier = read(client, "/v1/members/m-r/tier")
    assert [(c["from_tier"], c["to_tier"], c["reason"]) for c in tier["history"]] == [
        ("silver", "gold", "manual"),
        ("regular", "silver", "promotion"),
    ]
    assert tier["history"][0]["note"] == "vip"

    lots = read(client, "/v1/members/m-r/lots")["lots"]
    assert sum(lot["points"] for lot in lots) == member["balance"]["available"]
    assert [lot["expires_at"] for lot in lots] == sorted(lot["expires_at"] for lot in lots)

    history = read(client, "/v1/members/m-r/history", limit=200)
    assert [event["sequence"] for event in history["events"]] == list(range(1, len(history["events"]) + 1))
    assert history["next_cursor"] is None

    pages, cursor = [], None
    while True:
        page = read(client, "/v1/members/m-r/history", limit=4, **({"cursor": cursor} if cursor else {}))
        pages.extend(page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == history["events"]

    feed, cursor = [], None
    while True:
        page = read(client, "/v1/members/m-r/activity", limit=3, **({"cursor": cursor} if cursor else {}))
        feed.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    sequences = [item["sequence"] for item in feed]
    assert sequences == sorted(sequences, reverse=True)
    types = [item["type"] for item in feed]
    for kind in [
        "PurchaseRecorded",
        "PurchaseRefunded",
        "PointsRedeemed",
        "RedemptionCancelled",
        "TierChanged",
    ]:
        assert kind in types
    assert "TierRetained" not in types
    assert sum(item["points"] for item in feed) == member["balance"]["available"]


def test_unknown_members_and_bad_parameters_are_problems(system: tuple[TestClient, TestClient]) -> None:
    _, client = system
    for route in MEMBER_ROUTES:
        response = client.get(f"/v1/members/nobody{route}")
        assert response.status_code == 404, route
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/member_not_found")
    assert client.get("/v1/members/nobody/activity", params={"cursor": "garbage"}).status_code == 422
    assert client.get("/v1/members/m-1", params={"min_position": "%%%"}).status_code == 422
    assert client.get("/v1/segments/vip-lounge/members").status_code == 404
    for params in [
        {"from": "2026-02-01", "to": "2026-01-01"},
        {"to": "9999-12-31"},
        {"to": "0001-01-05"},
        {"from": "1970-01-01", "period": "day"},
    ]:
        assert client.get("/v1/metrics", params=params).status_code == 422, params
    for cursor in [
        encode_cursor("activity", "²"),
        encode_cursor("activity", 10**30),
        encode_cursor("segment", "\x00"),
    ]:
        assert client.get("/v1/members/nobody/activity", params={"cursor": cursor}).status_code in (404, 422)
        assert client.get("/v1/segments/active/members", params={"cursor": cursor}).status_code == 422
    assert client.get("/v1/segments/category:%00/members").status_code == 422
    nul = encode_position("m-\x00", 1)
    assert client.get("/v1/members/m-1", params={"min_position": nul}).status_code == 422


def test_a_position_not_applied_in_time_is_503_not_stale_data(system: tuple[TestClient, TestClient]) -> None:
    ledger, client = system
    outcome = command(ledger, "/v1/purchases", purchase("m-w", "o-1", "10.00"))
    ahead = encode_position("m-w", 10_000)
    response = client.get("/v1/members/m-w/balance", params={"min_position": ahead})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["type"].endswith("/position_not_applied")
    assert read(client, "/v1/members/m-w/balance", outcome["position"])["available"] == 10


def test_lag_and_batches_are_on_metrics(system: tuple[TestClient, TestClient], isolated: Isolated) -> None:
    ledger, client = system
    outcome = command(ledger, "/v1/purchases", purchase("m-x", "o-1", "10.00"))
    read(client, "/v1/members/m-x", outcome["position"])
    text = client.get("/metrics").text
    topic = isolated.env["LOYALTY_TOPIC_EVENTS"]
    assert f'loyalty_projector_lag_records{{partition="0",topic="{topic}"}}' in text
    assert "loyalty_projector_batches_total" in text
    assert "loyalty_projector_apply_seconds_total" in text
    assert 'loyalty_http_request_duration_seconds_count{method="GET",route="/v1/members/{member_id}"' in text
    # The processor writes in transactions: the lag gets to 0 past their commit markers too.
    eventually(lambda: caught_up(client), what="lag 0")
    assert "loyalty_read_models_reachable 1.0" in text
    assert "loyalty_http_request_duration_seconds" in ledger.get("/metrics").text


def test_openapi_documents_every_read_route_with_its_response_model(
    system: tuple[TestClient, TestClient],
) -> None:
    _, client = system
    paths = client.get("/openapi.json").json()["paths"]
    for route in [
        "/v1/members/{member_id}",
        "/v1/members/{member_id}/balance",
        "/v1/members/{member_id}/tier",
        "/v1/members/{member_id}/activity",
        "/v1/members/{member_id}/lots",
        "/v1/members/{member_id}/history",
        "/v1/segments/{segment}/members",
        "/v1/metrics",
    ]:
        get = paths[route]["get"]
        assert "$ref" in get["responses"]["200"]["content"]["application/json"]["schema"], route
        assert "min_position" in [parameter["name"] for parameter in get["parameters"]], route
    assert client.get("/docs").status_code == 200
