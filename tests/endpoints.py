"""Where the test suite finds Kafka and Postgres.

External endpoints from the environment when set; otherwise testcontainers when a Docker engine
answers; otherwise the project's own local servers, on free ports, in a state directory of
their own, stopped when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localinfra.process import reserved_ports
from localinfra.stack import LocalStack

STATE_DIR = Path(__file__).resolve().parent.parent / ".state" / "test"


@contextmanager
def test_endpoints() -> Iterator[dict[str, str]]:
    configured = {
        name: os.environ[name]
        for name in ("LOYALTY_KAFKA_BOOTSTRAP", "LOYALTY_DATABASE_URL")
        if os.environ.get(name)
    }
    if len(configured) == 2:
        yield configured
    elif not configured and _docker_answers():
        with _containers() as found:
            yield found
    else:
        with _local(configured) as found:
            yield found


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextmanager
def _containers() -> Iterator[dict[str, str]]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with (
        KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka,
        PostgresContainer(
            "postgres:16", username="loyalty", password="loyalty", dbname="loyalty", driver=None
        ) as postgres,
    ):
        yield {
            "LOYALTY_KAFKA_BOOTSTRAP": kafka.get_bootstrap_server(),
            "LOYALTY_DATABASE_URL": postgres.get_connection_url(),
        }


@contextmanager
def _local(configured: dict[str, str]) -> Iterator[dict[str, str]]:
    if STATE_DIR.exists():
        LocalStack.from_env({}, state_dir=STATE_DIR).purge(STATE_DIR)
    with reserved_ports(3) as (kafka, controller, postgres):
        env = {
            **configured,
            "LOYALTY_LOCAL_KAFKA_PORT": str(kafka),
            "LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT": str(controller),
            "LOYALTY_LOCAL_PG_PORT": str(postgres),
        }
        stack = LocalStack.from_env(env, state_dir=STATE_DIR)
        try:
            yield {**configured, **stack.up()}
        finally:
            stack.down()
