"""The local servers behind `make run` and `make test`: idempotent, and clear when they cannot start."""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import psycopg
import pytest

from localinfra.kafka import KafkaNode
from localinfra.postgres import PostgresNode
from localinfra.process import InfraError, port_open, reserved_ports
from localinfra.stack import LocalStack
from tests.endpoints import STATE_DIR


def test_up_twice_is_fine(endpoints: dict[str, str]) -> None:
    if not (STATE_DIR / "kafka" / "kafka.pid").exists():
        pytest.fail("the suite is not on local servers; this test needs them")  # pragma: no cover
    port = int(endpoints["LOYALTY_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    pg_port = int(endpoints["LOYALTY_DATABASE_URL"].split("@127.0.0.1:")[1].split("/")[0])
    stack = LocalStack.from_env(
        {"LOYALTY_LOCAL_KAFKA_PORT": str(port), "LOYALTY_LOCAL_PG_PORT": str(pg_port)}, state_dir=STATE_DIR
    )
    started = time.monotonic()
    assert stack.up() == {
        "LOYALTY_KAFKA_BOOTSTRAP": endpoints["LOYALTY_KAFKA_BOOTSTRAP"],
        "LOYALTY_DATABASE_URL": endpoints["LOYALTY_DATABASE_URL"],
    }
    assert time.monotonic() - started < 10
    assert all("ready" in line for line in stack.status())
    with psycopg.connect(endpoints["LOYALTY_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # Its autovacuum is paced, so that an ANALYZE does not take a core from the command path.
        assert conn.execute("SHOW autovacuum_vacuum_cost_delay").fetchone() == ("10ms",)


def test_configured_endpoints_start_nothing() -> None:
    stack = LocalStack.from_env(
        {"LOYALTY_KAFKA_BOOTSTRAP": "k:9092", "LOYALTY_DATABASE_URL": "postgresql://x/y"}
    )
    assert stack.kafka is None and stack.postgres is None
    assert stack.up() == {}


def test_a_busy_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy, reserved_ports(1) as (controller,):
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = KafkaNode(
            state_dir=tmp_path, cache_dir=tmp_path / "cache", port=port, controller_port=controller
        )
        with pytest.raises(InfraError, match=rf"port {port} for Kafka is busy.*LOYALTY_LOCAL_KAFKA_PORT"):
            node.up()
        pg = PostgresNode(home=tmp_path / "pg", port=port)
        with pytest.raises(InfraError, match=rf"port {port} for PostgreSQL is busy.*LOYALTY_LOCAL_PG_PORT"):
            pg.up()


def test_missing_java_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with reserved_ports(2) as (port, controller):
        node = KafkaNode(
            state_dir=tmp_path, cache_dir=tmp_path / "cache", port=port, controller_port=controller
        )
        with pytest.raises(InfraError, match="Java 17 or newer is needed"):
            node.up()


def test_a_reserved_port_is_refused_to_others_and_bound_by_its_server() -> None:
    """What keeps a port between choosing it and starting the server that will listen on it."""
    with reserved_ports(1) as (port,):
        with socket.socket() as other, pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
        assert not port_open(port), "nothing listens on a reservation"
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            assert port_open(port)
        with socket.socket() as late, pytest.raises(OSError):
            late.bind(("127.0.0.1", port))  # still held after the server stops, for a restart
    with socket.socket() as after:
        after.bind(("127.0.0.1", port))  # released with the block
