"""`loyalty run` (what `make run` calls) on a fresh state directory: up, serve, stop, up again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localinfra.stack import LocalStack
from tests.e2e.system import System, own_infra_env
from tests.integration.kafka_io import publish, purchase
from tests.waiting import eventually


@pytest.fixture
def run_env() -> Iterator[dict[str, str]]:
    with own_infra_env(LOYALTY_PROCESSORS="2") as env:  # two processor processes splitting the partitions
        yield env


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
