"""`loyalty run` (what `make run` calls) on a fresh state directory: up, serve, stop, up again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localinfra.process import reserved_ports
from localinfra.stack import LocalStack
from tests.endpoints import STATE_DIR
from tests.integration.kafka_io import publish, purchase
from tests.waiting import eventually


@pytest.fixture
def run_env() -> Iterator[dict[str, str]]:
    state = STATE_DIR.parent / f"e2e-{os.getpid()}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOYALTY_")}
    with reserved_ports(5) as (kafka, controller, postgres, ledger, read):
        env.update(
            LOYALTY_STATE_DIR=str(state),
            LOYALTY_LOCAL_KAFKA_PORT=str(kafka),
            LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT=str(controller),
            LOYALTY_LOCAL_PG_PORT=str(postgres),
            LOYALTY_LEDGER_PORT=str(ledger),
            LOYALTY_READ_PORT=str(read),
            LOYALTY_PROCESSORS="2",  # two processor processes splitting the partitions
        )
        yield env
        LocalStack.from_env(env, state_dir=state).purge(state)


class System:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.ledger = f"http://127.0.0.1:{env['LOYALTY_LEDGER_PORT']}"
        self.read = f"http://127.0.0.1:{env['LOYALTY_READ_PORT']}"
        self.state = Path(env["LOYALTY_STATE_DIR"])
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    def ready(self) -> float:
        def probe() -> bool:
            assert self.process.poll() is None, "loyalty run exited"
            try:
                return all(httpx.get(f"{url}/readyz").status_code == 200 for url in (self.ledger, self.read))
            except httpx.TransportError:
                return False

        eventually(probe, timeout_s=180, what="ready")
        return time.monotonic() - self.started

    @property
    def headers(self) -> dict[str, str]:
        """The admin key `loyalty run` made in its state directory."""
        return {"Authorization": f"Bearer {(self.state / 'admin.key').read_text().strip()}"}

    def balance(self, member_id: str) -> int | None:
        response = httpx.get(f"{self.read}/v1/members/{member_id}/balance", headers=self.headers)
        return response.json()["available"] if response.status_code == 200 else None

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        finally:
            self._log.close()


def test_run_serves_purchases_and_keeps_balances_across_restarts(
    run_env: dict[str, str], tmp_path: Path
) -> None:
    system = System(run_env, tmp_path / "run.log")
    try:
        print(f"first start ready in {system.ready():.1f} s")
        sent = time.monotonic()
        assert httpx.post(f"{system.ledger}/v1/purchases", json={}).status_code == 401
        response = httpx.post(
            f"{system.ledger}/v1/purchases", json=purchase("m-new", "ord-1", "129.90"), headers=system.headers
        )
        assert response.status_code == 201, response.text
        eventually(lambda: system.balance("m-new") == 129, timeout_s=30, what="balance 129")
        print(f"purchase visible in the balance after {time.monotonic() - sent:.2f} s")
        bootstrap = f"127.0.0.1:{run_env['LOYALTY_LOCAL_KAFKA_PORT']}"
        message = json.dumps(purchase("m-kafka", "ord-2", "50.00")).encode()
        publish(bootstrap, "loyalty.purchases.v1", b"m-kafka", message)
        eventually(lambda: system.balance("m-kafka") == 50, timeout_s=30, what="balance 50")
    finally:
        assert system.stop() == 0, (tmp_path / "run.log").read_text()[-3000:]
    stack = LocalStack.from_env(run_env, state_dir=Path(run_env["LOYALTY_STATE_DIR"]))
    assert stack.status() == ["kafka: stopped", "postgres: stopped"]
    started = [
        json.loads(line)
        for line in (tmp_path / "run.log").read_text().splitlines()
        if line.startswith("{") and '"processor started"' in line
    ]
    assert len({entry["transactional_id"] for entry in started}) == 2

    again = System(run_env, tmp_path / "run.log")
    try:
        print(f"second start ready in {again.ready():.1f} s")
        assert again.balance("m-new") == 129
        assert again.balance("m-kafka") == 50
        response = httpx.post(
            f"{again.ledger}/v1/purchases",
            json=purchase("m-new", "ord-3", "1.00"),
            headers=again.headers,
            timeout=30,
        )
        assert response.status_code == 201, response.text
        try:
            eventually(lambda: again.balance("m-new") == 130, timeout_s=30, what="balance 130")
        except AssertionError:
            print(httpx.get(f"{again.read}/readyz").text)
            print((tmp_path / "run.log").read_text()[-20000:])
            raise
    finally:
        assert again.stop() == 0, (tmp_path / "run.log").read_text()[-3000:]
