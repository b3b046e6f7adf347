"""The read API as `loyalty read-api` runs it: several worker processes, one sum in /metrics."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from localinfra.process import reserved_ports
from tests.conftest import Isolated
from tests.integration.serving import ready, spawn

REQUESTS = 60


def test_metrics_add_up_every_worker(isolated: Isolated, tmp_path: Path) -> None:
    with reserved_ports(1) as (port,):
        server = spawn(
            "read-api",
            {**isolated.env, "LOYALTY_READ_PORT": str(port), "LOYALTY_API_WORKERS": "2"},
            tmp_path / "read-api.log",
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not ready(base):
            assert server.poll() is None, (tmp_path / "read-api.log").read_text()
            assert time.monotonic() < deadline, "the read API did not become ready"
            time.sleep(0.2)
        workers = [line for line in _children(server.pid) if "spawn_main" in line]
        assert len(workers) == 2, "two worker processes serve the API"
        for index in range(REQUESTS):  # a connection each: the workers share the listening socket
            answer = httpx.get(f"{base}/v1/members/m-{index}", headers=isolated.headers)
            assert answer.status_code == 404
        counts = {_count(httpx.get(f"{base}/metrics").text) for _ in range(6)}
        assert counts == {REQUESTS}, "every scrape adds up both workers' requests"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _count(scrape: str) -> int:
    found = re.search(
        r'loyalty_http_request_duration_seconds_count\{method="GET",route="/v1/members/\{member_id\}",'
        r'status="404"\} (\S+)',
        scrape,
    )
    return int(float(found.group(1))) if found else 0


def _children(pid: int) -> list[str]:
    """`pid command line` of each child process of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            found.append(f"{child} {command}")
    return found
