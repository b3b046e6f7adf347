"""Faults under a backlog, through `loyalty run`: two kill -9s, then Postgres and the broker restarted.

Afterwards, with no manual step, the system has healed itself: every balance exact, the log's
chains intact, both APIs ready, a new purchase decided. Meanwhile clients retrying with their
idempotency keys saw 503s with Retry-After, never a 500.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from kafka import KafkaProducer

from localinfra.kafka import KafkaNode
from localinfra.postgres import PostgresNode
from localinfra.stack import LocalStack
from tests.e2e.system import System, own_infra_env
from tests.integration.kafka_io import purchase
from tests.waiting import eventually

WAVE = 1500  # purchases published before each of the four faults
MEMBERS = 300
PROBE_MEMBER = "m-probe"


@pytest.fixture
def run_env() -> Iterator[dict[str, str]]:
    # Small transactions make the backlog last long enough for the faults to land inside it.
    with own_infra_env(LOYALTY_PROCESSOR_BATCH_MAX="200", LOYALTY_PROJECTOR_BATCH_MAX="200") as env:
        yield env


@dataclass
class Clients:
    """A reader and a writer calling the APIs throughout, as clients that retry do."""

    system: System
    answers: list[tuple[str, int, str | None]] = field(default_factory=list)
    decided: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._threads = [threading.Thread(target=loop, daemon=True) for loop in (self._read, self._write)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _call(self, api: str, request: httpx.Request) -> httpx.Response | None:
        try:
            with httpx.Client(timeout=60) as client:
                response = client.send(request)
        except httpx.TransportError:
            return None
        self.answers.append((api, response.status_code, response.headers.get("retry-after")))
        return response

    def _read(self) -> None:
        url = f"{self.system.read}/v1/members/m-1/balance"
        while not self._stop.wait(0.2):
            self._call("read", httpx.Request("GET", url, headers=self.system.headers))

    def _write(self) -> None:
        """One purchase of 1 point at a time, retried with its key until decided (201, or 200 once seen)."""
        url = f"{self.system.ledger}/v1/purchases"
        while not self._stop.is_set():
            key = f"probe-{self.decided}"
            headers = {**self.system.headers, "Idempotency-Key": key}
            request = httpx.Request("POST", url, json=purchase(PROBE_MEMBER, key, "1.00"), headers=headers)
            while (response := self._call("ledger", request)) is None or response.status_code not in (
                200,
                201,
            ):
                time.sleep(1)
            self.decided += 1
            self._stop.wait(0.5)


def test_the_system_heals_itself_after_kills_and_restarts_under_a_backlog(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    system = System(run_env, tmp_path / "run.log")
    stack = LocalStack.from_env(run_env, state_dir=system.state)
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap = stack.kafka.bootstrap
    clients = Clients(system)
    try:
        print(f"ready in {system.ready():.1f} s")
        clients.start()
        started = time.monotonic()
        expected: dict[str, int] = {}
        faults: dict[str, Callable[[], None]] = {
            "processor killed": lambda: os.kill(system.child("processor"), signal.SIGKILL),
            "projector killed": lambda: os.kill(system.child("projector"), signal.SIGKILL),
            "postgres restarted": lambda: restart(stack.postgres),
            "broker restarted": lambda: restart(stack.kafka),
        }
        for wave, (what, fault) in enumerate(faults.items()):
            # The faults come one at a time: the waves before are settled (the system recovered from
            # the last fault), then a new wave is published and the fault lands once the pipeline is
            # working on it.
            settled = sum(expected.values())
            eventually(lambda n=settled: earned(stack) == n, timeout_s=180, what=f"settled before {what}")
            publish_backlog(bootstrap, wave, expected)
            eventually(lambda n=settled: (earned(stack) or 0) > n, timeout_s=60, what=f"working on {what}")
            at = earned(stack)
            fault()
            print(f"{time.monotonic() - started:6.1f} s  {what}: {at} of {sum(expected.values())} points in")

        system.ready(timeout_s=180)
        print(f"{time.monotonic() - started:6.1f} s  both APIs ready")
        clients.stop()
        expected[PROBE_MEMBER] = clients.decided
        eventually(lambda: not wrong_balances(system, expected), timeout_s=120, what="every balance exact")
        print(f"{time.monotonic() - started:6.1f} s  every balance exact ({clients.decided} by the clients)")
        verify = subprocess.run(
            [sys.executable, "-m", "services.cli", "verify"],
            env={**run_env, "LOYALTY_KAFKA_BOOTSTRAP": bootstrap},
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        response = httpx.post(
            f"{system.ledger}/v1/purchases",
            json=purchase("m-after", "after-1", "7.00"),
            headers=system.headers,
            timeout=30,
        )
        assert response.status_code == 201, response.text
        assert response.json()["balance"]["available"] == 7

        statuses = {(api, status) for api, status, _ in clients.answers}
        print(f"answers seen by the clients: {sorted(statuses)}")
        assert all(status < 500 or status == 503 for _, status in statuses), statuses
        assert all(retry == "1" for _, status, retry in clients.answers if status == 503)
        # Each rode out both restarts without one of its own, restarted only where it was killed;
        # but a broker restart that outlasts the open transaction's timeout fences the processor's
        # producer, and a fenced processor stops (services.ledger.processor) for loyalty run to start.
        restarts = {"ledger-api": 0, "scheduler": 0, "read-api": 0, "projector": 1}
        for component, count in restarts.items():
            assert system.metric("loyalty_component_restarts_total", component) == count, component
        assert (system.metric("loyalty_component_restarts_total", "processor-0") or 0) in (1, 2)
    except BaseException:
        lines = system.log.read_text().splitlines()
        print("\n".join(line for line in lines if "uvicorn.access" not in line)[-30000:])
        raise
    finally:
        clients.stop()
        assert system.stop() == 0


def publish_backlog(bootstrap: str, wave: int, expected: dict[str, int]) -> None:
    """WAVE purchases over MEMBERS members on the inbound topic, added to the points expected."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for index in range(wave * WAVE, (wave + 1) * WAVE):
        member, points = f"m-{index % MEMBERS}", 1 + index % 50
        value = json.dumps(purchase(member, f"o-{index}", f"{points}.00")).encode()
        producer.send("loyalty.purchases.v1", key=member.encode(), value=value)
        expected[member] = expected.get(member, 0) + points
    producer.flush()
    producer.close()


def restart(node: KafkaNode | PostgresNode | None) -> None:
    assert node is not None
    node.down()
    time.sleep(2)
    node.up()


def earned(stack: LocalStack) -> int | None:
    """The points of the backlog's members in the read models so far; None while Postgres is away."""
    assert stack.postgres is not None
    try:
        with psycopg.connect(stack.postgres.url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(available), 0) FROM members WHERE member_id ~ '^m-[0-9]+$'"
            ).fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return None


def wrong_balances(system: System, expected: dict[str, int]) -> dict[str, tuple[int, int | None]]:
    found = {member: system.balance(member) for member in expected}
    return {member: (points, found[member]) for member, points in expected.items() if found[member] != points}
