"""The read API as `loyalty read-api` runs it: several worker processes, each listening with a
socket of its own, one sum in /metrics."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.processes import workers
from localinfra.process import reserved_ports
from tests.conftest import Isolated
from tests.integration.serving import ready, spawn

REQUESTS = 60


@contextmanager
def _read_api(
    isolated: Isolated, log: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`loyalty read-api` with two workers, once ready."""
    with reserved_ports(1) as (port,):
        overrides = {"LOYALTY_READ_PORT": str(port), "LOYALTY_API_WORKERS": "2", **(env or {})}
        server = spawn("read-api", {**isolated.env, **overrides}, log)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", server, log)
        yield server, port
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready(base):
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the read API did not become ready"
        time.sleep(0.2)


def test_metrics_add_up_every_worker(isolated: Isolated, tmp_path: Path) -> None:
    with _read_api(isolated, tmp_path / "read-api.log") as (server, port):
        base = f"http://127.0.0.1:{port}"
        assert len(workers(server.pid)) == 2, "two worker processes serve the API"
        for index in range(REQUESTS):  # a connection each, dealt out among the workers
            answer = httpx.get(f"{base}/v1/members/m-{index}", headers=isolated.headers)
            assert answer.status_code == 404
        counts = {_count(httpx.get(f"{base}/metrics").text) for _ in range(6)}
        assert counts == {REQUESTS}, "every scrape adds up both workers' requests"


def test_a_burst_of_connections_is_dealt_out_among_the_workers(isolated: Isolated, tmp_path: Path) -> None:
    """A client opening its connections at once does not pile them all on one worker."""
    with _read_api(isolated, tmp_path / "read-api.log") as (server, port):
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}") for _ in range(CONNECTIONS)]
        try:
            for client in clients:  # each holds its connection open after its request
                assert client.get("/healthz").status_code == 200
            held = {pid: _connections(pid, port) for pid in workers(server.pid)}
        finally:
            for client in clients:
                client.close()
    assert sum(held.values()) == CONNECTIONS, held
    assert all(count > 0 for count in held.values()), f"every worker holds some connections: {held}"


def test_an_idle_connection_stays_open_longer_than_uvicorns_five_seconds(
    isolated: Isolated, tmp_path: Path
) -> None:
    """A server that closes an idle connection first races the client's next request on it, which
    is then reset (seen under overload): the client is to close first, as clients keep theirs idle
    for longer than uvicorn's default 5 s (Go's 90 s)."""
    with (
        _read_api(isolated, tmp_path / "read-api.log") as (_, port),
        socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
    ):
        assert _healthz(connection).startswith(b"HTTP/1.1 200")
        time.sleep(6)
        assert _healthz(connection).startswith(b"HTTP/1.1 200"), "the connection was closed while idle"


def _healthz(connection: socket.socket) -> bytes:
    """GET /healthz on the open connection: the answer, or b"" if the server had closed it."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while not answer.endswith(b"}"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.parametrize(("every", "closes"), [("10", True), ("0", False)])
def test_now_and_then_an_answer_asks_the_client_to_reconnect(
    isolated: Isolated, tmp_path: Path, every: str, closes: bool
) -> None:
    """So that the few connections that carry most of a client's requests are dealt out among
    the workers again; an answer that says so closes nothing the client is still using."""
    env = {"LOYALTY_API_REQUESTS_PER_CONNECTION": every}
    with (
        _read_api(isolated, tmp_path / "read-api.log", env) as (_, port),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=isolated.headers) as client,
    ):
        answers = [client.get(f"/v1/members/m-{index}") for index in range(200)]
        probes = [client.get("/healthz") for _ in range(100)]
    assert {answer.status_code for answer in answers} == {404}
    closed = sum(answer.headers.get("connection") == "close" for answer in answers)
    # One in ten on average: none in 200 is a chance of 7e-10.
    assert (closed > 0) == closes, closed
    assert not any(probe.headers.get("connection") == "close" for probe in probes), "probes are not load"


def test_a_worker_that_dies_is_replaced(isolated: Isolated, tmp_path: Path) -> None:
    with _read_api(isolated, tmp_path / "read-api.log") as (server, port):
        victim, survivor = workers(server.pid)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(alive := workers(server.pid)) < 2 or victim in alive:
            assert time.monotonic() < deadline, "no worker took the dead one's place"
            time.sleep(0.2)
        assert survivor in alive
        _wait_ready(f"http://127.0.0.1:{port}", server, tmp_path / "read-api.log")
        for _ in range(CONNECTIONS):  # new connections reach both workers again, the new one too
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert server.poll() is None


def test_a_port_already_in_use_is_refused_not_shared(isolated: Isolated, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "read-api.log"
        server = spawn("read-api", {**isolated.env, "LOYALTY_READ_PORT": str(port)}, log)
        try:
            assert server.wait(timeout=60) != 0
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("the read API started on a port another server listens on")
    assert "Address already in use" in log.read_text()


CONNECTIONS = 24


def _connections(pid: int, port: int) -> int:
    """Established TCP connections on `port` that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            found += 1
    return found


def _count(scrape: str) -> int:
    found = re.search(
        r'loyalty_http_request_duration_seconds_count\{method="GET",route="/v1/members/\{member_id\}",'
        r'status="404"\} (\S+)',
        scrape,
    )
    return int(float(found.group(1))) if found else 0
