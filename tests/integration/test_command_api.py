"""Every command endpoint end to end: real Kafka, the real processor, answers from committed replies."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from schemas.events import Event
from schemas.position import decode_position
from schemas.rules import CategoryBonus, ProgramRules
from services.ledger.api import create_app
from services.ledger.command_messages import CommandReply
from services.ledger.partitioning import partition_for
from services.ledger.processor import Processor
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import publish, purchase, read_all
from tests.integration.serving import serve
from tests.waiting import eventually


@pytest.fixture
def ledger(isolated: Isolated, running: Running) -> Iterator[TestClient]:
    with TestClient(create_app(isolated.ledger()), headers=isolated.headers) as client:
        running.start(Processor(isolated.ledger(), ProgramRules()).run)
        yield client


def buy(ledger: TestClient, member: str, amount: str, purchase_id: str | None = None) -> dict:  # type: ignore[type-arg]
    response = ledger.post("/v1/purchases", json=purchase(member, purchase_id or uuid.uuid4().hex, amount))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_purchase_answers_with_events_balance_tier_and_position(ledger: TestClient) -> None:
    outcome = buy(ledger, "m-1", "2000.00")
    assert [e["type"] for e in outcome["events"]] == [
        "MemberEnrolled",
        "PurchaseRecorded",
        "PointsEarned",
        "TierChanged",
    ]
    assert outcome["tier"] == "silver"
    assert outcome["balance"] == {"available": 2000, "pending": 0}
    assert decode_position(outcome["position"]) == ("m-1", 4)
    events = [Event.model_validate(document) for document in outcome["events"]]
    assert all(event.hash_is_valid() for event in events), "whole events, as the log has them"
    assert [event.sequence for event in events] == [1, 2, 3, 4]


def test_refunds_reverse_points_in_proportion(ledger: TestClient) -> None:
    buy(ledger, "m-2", "100.00", "o-1")
    refund = {
        "type": "refund",
        "refund_id": "r-1",
        "purchase_id": "o-1",
        "member_id": "m-2",
        "amount": "25.00",
        "currency": "CNY",
        "occurred_at": "2026-11-23T09:00:00Z",
    }
    response = ledger.post("/v1/refunds", json=refund)
    assert response.status_code == 201, response.text
    assert response.json()["balance"]["available"] == 75
    assert ledger.post("/v1/refunds", json=refund).status_code == 200
    too_much = ledger.post("/v1/refunds", json={**refund, "refund_id": "r-2", "amount": "80.00"})
    assert too_much.status_code == 409
    assert too_much.json()["type"].endswith("/refund_exceeds_purchase")


def test_a_purchase_id_is_one_purchase_and_a_date_is_judged_against_its_arrival(ledger: TestClient) -> None:
    buy(ledger, "m-9", "100.00", "o-1")
    retry = ledger.post("/v1/purchases", json=purchase("m-9", "o-1", "100.00"))
    assert (retry.status_code, retry.json()["status"]) == (200, "duplicate")
    reused = ledger.post("/v1/purchases", json=purchase("m-9", "o-1", "50.00"))
    assert reused.status_code == 409
    assert reused.json()["type"].endswith("/duplicate_purchase")
    ahead = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    future = ledger.post("/v1/purchases", json=purchase("m-9", "o-2", "10.00", occurred_at=ahead))
    assert future.status_code == 422
    assert future.json()["type"].endswith("/purchase_in_future")


def test_a_refund_that_names_its_items_reverses_what_they_earned(
    isolated: Isolated, running: Running
) -> None:
    rules = ProgramRules(category_bonuses=(CategoryBonus(category="beauty", multiplier="2"),))
    with TestClient(create_app(isolated.ledger()), headers=isolated.headers) as ledger:
        running.start(Processor(isolated.ledger(), rules).run)
        items = [
            {"sku": "b-1", "category": "beauty", "quantity": 1, "amount": "100.00"},
            {"sku": "h-1", "category": "home", "quantity": 1, "amount": "100.00"},
        ]
        bought = ledger.post("/v1/purchases", json=purchase("m-10", "o-1", "200.00", items=items))
        assert bought.json()["balance"]["available"] == 300, bought.text
        refund = {
            "type": "refund",
            "refund_id": "r-1",
            "purchase_id": "o-1",
            "member_id": "m-10",
            "amount": "100.00",
            "currency": "CNY",
            "occurred_at": "2026-11-23T09:00:00Z",
            "items": items[:1],
        }
        response = ledger.post("/v1/refunds", json=refund)
        assert response.status_code == 201, response.text
        assert response.json()["balance"]["available"] == 100


def test_redemption_cancel_and_insufficient_points(ledger: TestClient) -> None:
    buy(ledger, "m-3", "100.00")
    ok = ledger.post("/v1/redemptions", json={"redemption_id": "rd-1", "member_id": "m-3", "points": 60})
    assert ok.status_code == 201, ok.text
    assert ok.json()["balance"]["available"] == 40
    short = ledger.post("/v1/redemptions", json={"redemption_id": "rd-2", "member_id": "m-3", "points": 41})
    assert short.status_code == 409
    assert short.headers["content-type"] == "application/problem+json"
    assert short.json()["type"].endswith("/insufficient_points")
    cancelled = ledger.post("/v1/redemptions/rd-1/cancel", json={"member_id": "m-3"})
    assert cancelled.status_code == 201, cancelled.text
    assert cancelled.json()["balance"]["available"] == 100
    assert ledger.post("/v1/redemptions/nope/cancel", json={"member_id": "m-3"}).status_code == 404


def test_adjustments_and_manual_tiers_record_an_actor(ledger: TestClient) -> None:
    buy(ledger, "m-4", "10.00")
    response = ledger.post(
        "/v1/adjustments",
        json={"adjustment_id": "a-1", "member_id": "m-4", "points": -5, "reason": "goodwill correction"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["events"][0]["data"]["actor"]
    tier = ledger.put("/v1/members/m-4/tier", json={"tier": "gold", "reason": "VIP"})
    assert tier.status_code == 201, tier.text
    assert tier.json()["tier"] == "gold"
    assert ledger.put("/v1/members/m-4/tier", json={"tier": "diamond", "reason": "x"}).status_code == 422
    assert ledger.put("/v1/members/ghost/tier", json={"tier": "gold", "reason": "x"}).status_code == 404


def test_idempotency_key_returns_the_original_outcome(ledger: TestClient) -> None:
    buy(ledger, "m-5", "50.00")
    body = {"redemption_id": "rd-9", "member_id": "m-5", "points": 10}
    first = ledger.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k-1"})
    again = ledger.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["status"] == "duplicate"
    assert again.json()["original_command_id"] == first.json()["command_id"]
    assert again.json()["balance"]["available"] == 40


def test_a_key_reused_with_another_body_is_refused_by_every_api_process(
    ledger: TestClient, isolated: Isolated
) -> None:
    """Another process (a worker, or the API after a restart) that never saw the first request
    refuses the key for another body, and answers a true retry with the original outcome."""
    buy(ledger, "m-6", "50.00")
    body = {"redemption_id": "rd-6", "member_id": "m-6", "points": 10}
    first = ledger.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k-6"})
    assert first.status_code == 201, first.text
    with TestClient(create_app(isolated.ledger()), headers=isolated.headers) as other:
        reused = other.post(
            "/v1/redemptions", json={**body, "points": 20}, headers={"Idempotency-Key": "k-6"}
        )
        assert reused.status_code == 422, reused.text
        assert reused.json()["type"].endswith("/idempotency_key_reused")
        assert "another request" in reused.json()["detail"]
        again = other.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k-6"})
        assert again.status_code == 200, again.text
        assert again.json()["original_command_id"] == first.json()["command_id"]
        assert again.json()["balance"]["available"] == 40, "the reused key took nothing"
    assert (
        ledger.post("/v1/redemptions", json={**body, "points": 20}, headers={"Idempotency-Key": "k-6"})
        .json()["type"]
        .endswith("/idempotency_key_reused")
    ), "and so does the process that saw the first"
    tier = {"tier": "gold", "reason": "VIP"}
    assert (
        ledger.put("/v1/members/m-6/tier", json=tier, headers={"Idempotency-Key": "k-6"}).status_code == 201
    )


def test_bad_input_is_a_422_problem_and_unknown_commands_404(ledger: TestClient) -> None:
    bad = ledger.post("/v1/redemptions", json={"redemption_id": "x", "member_id": "m-1", "points": 0})
    assert bad.status_code == 422
    assert bad.json()["type"].endswith("/invalid_request")
    typo = ledger.post("/v1/redemptions", json={"redemption_id": "x", "member_id": "m-1", "point": 5})
    assert typo.status_code == 422
    assert ledger.get("/v1/commands/unknown").status_code == 404


def test_past_the_timeout_the_answer_is_202_and_the_command_resolves_later(
    isolated: Isolated, running: Running
) -> None:
    with TestClient(create_app(isolated.ledger(command_timeout_s=0.5)), headers=isolated.headers) as ledger:
        response = ledger.post("/v1/purchases", json=purchase("m-6", "o-1", "5.00"))
        assert response.status_code == 202
        location = response.headers["location"]
        assert ledger.get(location).json()["status"] == "pending"
        running.start(Processor(isolated.ledger(), ProgramRules()).run)

        eventually(lambda: ledger.get(location).json()["status"] == "applied", what="applied")


def test_fifty_concurrent_redemptions_never_overdraw_and_all_are_answered(
    isolated: Isolated, running: Running
) -> None:
    running.start(Processor(isolated.ledger(), ProgramRules()).run)
    # All fifty at once: none waits for a turn. A 503 can still come while the event loop runs late.
    with serve(create_app(isolated.ledger(api_max_in_flight=64))) as base:
        assert (
            httpx.post(
                f"{base}/v1/purchases",
                json=purchase("m-7", "o-1", "1000.00"),
                headers=isolated.headers,
                timeout=30,
            ).status_code
            == 201
        )

        def redeem(index: int) -> int:
            """As a client does: a 503 (shed while the machine is busy, or while the member's
            partition is answered late) is sent again after a while."""
            body = {"redemption_id": f"rd-{index}", "member_id": "m-7", "points": 30}
            deadline = time.monotonic() + 60
            while True:
                answer = httpx.post(f"{base}/v1/redemptions", json=body, headers=isolated.headers, timeout=30)
                if answer.status_code != 503 or time.monotonic() > deadline:
                    return answer.status_code
                time.sleep(0.2)

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(redeem, range(50)))
        assert sorted(set(statuses)) == [201, 409]
        assert statuses.count(201) == 33
        final = httpx.post(
            f"{base}/v1/adjustments",
            headers=isolated.headers,
            timeout=30,
            json={"adjustment_id": "probe", "member_id": "m-7", "points": 1, "reason": "probe"},
        )
        assert final.json()["balance"]["available"] == 1000 - 33 * 30 + 1


def test_times_out_of_any_plausible_range_are_422(ledger: TestClient) -> None:
    for moment in ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59Z"]:
        response = ledger.post("/v1/purchases", json=purchase("m-9", "o-far", "1.00", occurred_at=moment))
        assert response.status_code == 422, moment
        assert response.headers["content-type"] == "application/problem+json"


def test_a_partition_answered_later_than_the_budget_sheds_new_commands_and_holds_back_no_other(
    isolated: Isolated,
) -> None:
    """A command of the partition waits unanswered past the budget while the partition's processor
    answers others: the next is shed with 503 and never reaches the log; another partition's goes
    on; once the late one is answered, the partition takes commands again. (No processor runs: the
    test writes the processor's answers itself.)"""
    settings = isolated.ledger(command_budget_ms=50, command_timeout_s=20)
    members = [f"m-{n}" for n in range(40)]
    late = members[0]
    same = next(m for m in members[1:] if partition_for(m, 4) == partition_for(late, 4))
    other = next(m for m in members if partition_for(m, 4) != partition_for(late, 4))

    def answer(command_id: str, member_id: str) -> None:
        reply = CommandReply(
            command_id=command_id,
            member_id=member_id,
            status="applied",
            sequence=1,
            available=5,
            pending=0,
            tier="regular",
        )
        publish(
            settings.kafka_bootstrap,
            settings.topic_replies,
            member_id.encode(),
            reply.model_dump_json().encode(),
            partition=partition_for(member_id, 4),
        )

    def logged() -> dict[str, str]:
        """Purchase id -> command id of every command in the log."""
        found = [json.loads(r.value) for r in read_all(settings.kafka_bootstrap, settings.topic_commands)]
        return {c["body"]["purchase_id"]: c["command_id"] for c in found}

    with serve(create_app(settings)) as base, ThreadPoolExecutor(max_workers=3) as pool:
        client = httpx.Client(base_url=base, headers=isolated.headers, timeout=30)

        def buy(member: str, purchase_id: str) -> httpx.Response:
            return client.post("/v1/purchases", json=purchase(member, purchase_id, "5.00"))

        waiting = pool.submit(buy, late, "o-late")
        late_id = eventually(lambda: logged().get("o-late"), what="the late command in the log")
        answer("c-someone-else", same)  # the partition's processor is alive: it answers others
        eventually(lambda: client.get("/v1/commands/c-someone-else").status_code == 200, what="answer seen")
        time.sleep(0.05)  # the late command has waited out the budget

        shed = buy(same, "o-shed")
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["type"].endswith("/overloaded")
        elsewhere = pool.submit(buy, other, "o-elsewhere")
        eventually(lambda: "o-elsewhere" in logged(), what="another partition's command in the log")
        assert "o-shed" not in logged()
        metrics = client.get("/metrics").text
        assert 'loyalty_http_requests_shed_total{reason="behind"} 1.0' in metrics

        answer(late_id, late)
        assert waiting.result().status_code == 201
        again = pool.submit(buy, same, "o-shed")
        eventually(lambda: "o-shed" in logged(), what="the shed command, sent again, in the log")
        answer(logged()["o-elsewhere"], other)
        answer(logged()["o-shed"], same)
        assert elsewhere.result().status_code == 201 and again.result().status_code == 201
