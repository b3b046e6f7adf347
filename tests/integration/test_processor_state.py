"""The processor's state across restarts and moves: local store, restore, readiness, on real Kafka."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer
from kafka.structs import ConsumerGroupMetadata

from schemas.rules import ProgramRules
from services.kafka_compat import start_sending_offsets
from services.ledger import processor as processor_module
from services.ledger.api import create_app
from services.ledger.processor import Processor
from services.ledger.scheduler import Scheduler
from services.ledger.topics import ensure_topics
from tests.conftest import Isolated, Running
from tests.integration.kafka_io import publish, purchase
from tests.integration.serving import serve, spawn
from tests.integration.test_processor_guarantees import all_events, assert_chains_intact, publish_purchases
from tests.waiting import eventually


def log_lines(log: Path, message: str) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [entry for line in lines if line.startswith("{") and (entry := json.loads(line))["msg"] == message]


def recorded(isolated: Isolated) -> int:
    return sum(e["type"] == "PurchaseRecorded" for e in all_events(isolated))


def test_the_ledger_api_is_ready_once_the_processor_has_restored_and_answers_at_once(
    isolated: Isolated, running: Running
) -> None:
    with TestClient(create_app(isolated.ledger()), headers=isolated.headers) as ledger:
        waiting = ledger.get("/readyz")
        assert waiting.status_code == 503, "no processor owns the partitions yet"
        # On a broker just started, the group's coordinator may not be known for a moment.
        eventually(
            lambda: "not yet owned and restored" in ledger.get("/readyz").json()["detail"],
            what="readiness waiting for the processor",
        )
        running.start(Processor(isolated.ledger(), ProgramRules()).run)
        eventually(lambda: ledger.get("/readyz").status_code == 200, timeout_s=60, what="ready")
        started = time.monotonic()
        response = ledger.post("/v1/purchases", json=purchase("m-1", "o-1", "12.00"))
        assert response.status_code == 201, response.text
        assert time.monotonic() - started < 3, "decided within its normal latency"


def test_a_restart_reads_only_the_tail_and_a_lost_local_store_is_rebuilt(
    isolated: Isolated, tmp_path: Path
) -> None:
    env = {**isolated.env, "LOYALTY_STATE_DIR": str(tmp_path / "state")}
    publish_purchases(isolated, 2_000, members=200)
    logs = [tmp_path / f"run-{n}.log" for n in range(3)]

    def run(log: Path, until: int) -> list[dict[str, Any]]:
        process = spawn("processor", env, log)
        try:
            eventually(lambda: recorded(isolated) >= until, timeout_s=90, what=f"{until} purchases")
            eventually(lambda: len(log_lines(log, "partition restored")) == 4, what="restored")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        return log_lines(log, "partition restored")

    first = run(logs[0], 2_000)
    assert sum(entry["records"] for entry in first) == 0, "a fresh changelog has nothing to restore"

    publish_purchases(isolated, 500, members=200, prefix="second")
    second = run(logs[1], 2_500)
    assert all(entry["records"] <= 1 for entry in second), "the local store had all but the last marker"
    resumed = log_lines(logs[1], "partition resumed")
    assert sum(entry["cached"] for entry in resumed) == 200, "every account read before any input"

    shutil.rmtree(tmp_path / "state" / "processor")
    publish_purchases(isolated, 500, members=200, prefix="third")
    third = run(logs[2], 3_000)
    assert sum(entry["records"] for entry in third) > 2_000, "everything read again from the changelog"

    member_events = [e for e in all_events(isolated) if not e["member_id"].startswith("$")]
    ids = [e["data"]["purchase_id"] for e in member_events if e["type"] == "PurchaseRecorded"]
    assert len(ids) == len(set(ids)) == 3_000
    assert sum(e["type"] == "MemberEnrolled" for e in member_events) == 200
    assert_chains_intact(member_events)


def test_partitions_move_between_two_processors_under_load_exactly_once(
    isolated: Isolated, tmp_path: Path
) -> None:
    """A second processor joins and later leaves while purchases keep coming: each partition
    moves twice, restored each time from the changelog (each instance has its own local store)."""
    env = {
        **isolated.env,
        "LOYALTY_STATE_DIR": str(tmp_path / "state"),
        "LOYALTY_PROCESSOR_SESSION_TIMEOUT_MS": "6000",
        "LOYALTY_PROCESSOR_BATCH_MAX": "200",
    }
    a = spawn("processor", {**env, "LOYALTY_PROCESSOR_INSTANCE": "a"}, tmp_path / "a.log")
    b = None
    try:
        publish_purchases(isolated, 3_000, members=300, prefix="one")
        eventually(lambda: recorded(isolated) >= 500, timeout_s=60, what="a under way")
        b = spawn("processor", {**env, "LOYALTY_PROCESSOR_INSTANCE": "b"}, tmp_path / "b.log")
        publish_purchases(isolated, 3_000, members=300, prefix="two")
        eventually(lambda: log_lines(tmp_path / "b.log", "partition restored"), timeout_s=60, what="b owns")
        # a has taken its share of that rebalance: stopped sooner, b leaves while a is still
        # joining, and a's join ends with every partition without ever giving any up.
        eventually(
            lambda: len(log_lines(tmp_path / "a.log", "partitions assigned")[-1]["partitions"]) < 4,
            timeout_s=60,
            what="a gave partitions up",
        )
        b.send_signal(signal.SIGTERM)
        b.wait(timeout=30)
        publish_purchases(isolated, 3_000, members=300, prefix="three")
        eventually(lambda: recorded(isolated) >= 9_000, timeout_s=120, what="every purchase")
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    member_events = [e for e in all_events(isolated) if not e["member_id"].startswith("$")]
    ids = [e["data"]["purchase_id"] for e in member_events if e["type"] == "PurchaseRecorded"]
    assert len(ids) == len(set(ids)) == 9_000
    earned = sum(e["data"]["points"] for e in member_events if e["type"] == "PointsEarned")
    assert earned == 3 * sum(1 + index % 50 for index in range(3_000))
    assert_chains_intact(member_events)
    assert len(log_lines(tmp_path / "a.log", "partitions assigned")) >= 3, (
        "a gave partitions up and got them back"
    )


def test_readiness_is_lost_while_no_processor_owns_the_partitions(isolated: Isolated, tmp_path: Path) -> None:
    env = {
        **isolated.env,
        "LOYALTY_STATE_DIR": str(tmp_path / "state"),
        "LOYALTY_PROCESSOR_SESSION_TIMEOUT_MS": "6000",
    }
    with serve(create_app(isolated.ledger())) as base:
        processor = spawn("processor", env, tmp_path / "p.log")
        try:
            eventually(lambda: httpx.get(f"{base}/readyz").status_code == 200, timeout_s=60, what="ready")
        finally:
            processor.send_signal(signal.SIGKILL)
            processor.wait()
        eventually(lambda: httpx.get(f"{base}/readyz").status_code == 503, timeout_s=30, what="not ready")


def test_a_tick_due_for_more_members_than_a_batch_reaches_each_once(
    isolated: Isolated, running: Running
) -> None:
    """30 members due and transactions of at most 10: the tick is finished over several."""
    settings = isolated.ledger(processor_batch_max=10)
    running.start(Processor(settings, ProgramRules()).run)
    ensure_topics(settings)
    for n in range(30):
        old = {**purchase(f"m-{n}", f"o-{n}", "20.00"), "occurred_at": "2024-01-10T00:00:00Z"}
        publish(
            settings.kafka_bootstrap, settings.topic_purchases, f"m-{n}".encode(), json.dumps(old).encode()
        )
    eventually(lambda: recorded(isolated) == 30, what="every purchase")
    Scheduler(settings).tick(datetime(2026, 2, 1, tzinfo=UTC))
    expired = eventually(
        lambda: (
            (found := [e for e in all_events(isolated) if e["type"] == "PointsExpired"])
            and len(found) >= 30
            and found
        ),
        what="every member's lot expired",
    )
    assert sorted(e["member_id"] for e in expired) == sorted(f"m-{n}" for n in range(30))
    assert_chains_intact([e for e in all_events(isolated) if not e["member_id"].startswith("$")])


def test_a_paused_processor_that_wakes_after_losing_its_partitions_forks_nothing(
    isolated: Isolated, tmp_path: Path
) -> None:
    """A zombie: SIGSTOP a processor in the middle of its work past the session timeout, let the
    other take its partitions, then SIGCONT it. Whatever it had open is fenced or aborted, and the
    new owner resumes with state no older than the committed offsets: no purchase twice, no
    sequence reused, every chain intact. Done twice, at different moments of the backlog."""
    env = {
        **isolated.env,
        "LOYALTY_STATE_DIR": str(tmp_path / "state"),
        "LOYALTY_PROCESSOR_SESSION_TIMEOUT_MS": "6000",
        "LOYALTY_PROCESSOR_BATCH_MAX": "300",
    }
    publish_purchases(isolated, 12_000, members=400, prefix="load")
    a = spawn("processor", {**env, "LOYALTY_PROCESSOR_INSTANCE": "a"}, tmp_path / "a.log")
    b = spawn("processor", {**env, "LOYALTY_PROCESSOR_INSTANCE": "b"}, tmp_path / "b.log")
    try:
        for zombie, after in ((a, 2_000), (b, 6_000)):
            eventually(lambda n=after: recorded(isolated) >= n, timeout_s=90, what=f"{after} purchases")
            zombie.send_signal(signal.SIGSTOP)
            time.sleep(9)  # past the session timeout: the other instance owns everything
            zombie.send_signal(signal.SIGCONT)
        eventually(lambda: recorded(isolated) >= 12_000, timeout_s=180, what="every purchase")
    finally:
        for process in (a, b):
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(timeout=30)
    member_events = [e for e in all_events(isolated) if not e["member_id"].startswith("$")]
    ids = [e["data"]["purchase_id"] for e in member_events if e["type"] == "PurchaseRecorded"]
    assert len(ids) == len(set(ids)) == 12_000
    assert_chains_intact(member_events)


def test_a_processor_dropped_from_the_group_sends_no_offsets_until_it_has_rejoined(
    isolated: Isolated, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python resets a dropped member's generation to -1 when a heartbeat learns of the
    drop, and the group takes a transaction's offsets that carry no generation unfenced, even
    while other members own the partitions: a zombie woken from a pause committed a batch that
    the new owner had committed too. Here the drop lands just as a poll has returned a batch:
    that batch is not committed then, but read again once the member has rejoined."""
    publish_purchases(isolated, 2_000, members=200)
    processor = Processor(
        isolated.ledger(processor_session_timeout_ms=6000, processor_batch_max=100), ProgramRules()
    )
    generations: list[int] = []

    def start_sending(producer: KafkaProducer, offsets: Any, group: ConsumerGroupMetadata) -> Any:
        generations.append(group.generation_id)
        return start_sending_offsets(producer, offsets, group)

    monkeypatch.setattr(processor_module, "start_sending_offsets", start_sending)
    dropped = threading.Event()
    poll = processor._consumer.poll

    def poll_then_drop(*args: Any, **kwargs: Any) -> Any:
        batch = poll(*args, **kwargs)
        if batch and len(generations) >= 3 and not dropped.is_set():
            processor._consumer._coordinator.reset_generation()  # as on UNKNOWN_MEMBER_ID
            dropped.set()
        return batch

    monkeypatch.setattr(processor._consumer, "poll", poll_then_drop)
    running.start(processor.run)
    eventually(lambda: recorded(isolated) >= 2_000, timeout_s=90, what="every purchase")
    assert dropped.is_set()
    assert min(generations) > 0, f"offsets sent without a generation: {generations}"
    member_events = [e for e in all_events(isolated) if not e["member_id"].startswith("$")]
    ids = [e["data"]["purchase_id"] for e in member_events if e["type"] == "PurchaseRecorded"]
    assert len(ids) == len(set(ids)) == 2_000
    assert_chains_intact(member_events)


def test_a_backlog_is_read_in_short_transactions_and_api_commands_go_first(
    isolated: Isolated, tmp_path: Path
) -> None:
    """With a batch time of 50 ms, 6,000 backlogged purchases go through in many small
    transactions, not in ones of 5,000 (the most a poll may bring); a command sent through the API
    meanwhile is decided while the backlog is still being read."""
    env = {
        **isolated.env,
        "LOYALTY_STATE_DIR": str(tmp_path / "state"),
        "LOYALTY_PROCESSOR_BATCH_TIME_MS": "50",
        "LOYALTY_LOG_LEVEL": "DEBUG",
    }
    publish_purchases(isolated, 6_000, members=300, prefix="load")
    log = tmp_path / "processor.log"
    processor = spawn("processor", env, log)
    try:
        with TestClient(create_app(isolated.ledger()), headers=isolated.headers) as ledger:
            eventually(lambda: recorded(isolated) >= 500, timeout_s=90, what="the backlog under way")
            response = ledger.post("/v1/purchases", json=purchase("m-api", "api-1", "30.00"))
            assert response.status_code == 201, response.text
            assert recorded(isolated) < 6_000, "decided while the backlog was still being read"
        eventually(lambda: recorded(isolated) >= 6_001, timeout_s=120, what="every purchase")
    finally:
        processor.terminate()
        processor.wait(timeout=30)
    sizes = [entry["records"] for entry in log_lines(log, "batch committed") if entry["records"]]
    assert sum(sizes) >= 6_001
    assert max(sizes) < 2_000, f"transactions stay short: {max(sizes)} records in one"
    member_events = [e for e in all_events(isolated) if not e["member_id"].startswith("$")]
    ids = [e["data"]["purchase_id"] for e in member_events if e["type"] == "PurchaseRecorded"]
    assert len(ids) == len(set(ids)) == 6_001
    assert_chains_intact(member_events)
