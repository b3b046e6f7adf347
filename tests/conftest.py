"""Fixtures: real Kafka and Postgres, with topics and a database of each test's own."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from services.ledger.settings import LedgerSettings
from services.personal_data.crypto import MasterKey
from services.projector.settings import ProjectorSettings
from tests.endpoints import test_endpoints

RUN_ID = uuid.uuid4().hex[:8]
SERVERS = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n`), the servers are found or started once, by the controller: its
    workers inherit the endpoints, where each would otherwise start servers of its own in one
    state directory."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        servers = config.stash[SERVERS] = contextlib.ExitStack()
        os.environ.update(servers.enter_context(test_endpoints()))


def pytest_unconfigure(config: pytest.Config) -> None:
    if SERVERS in config.stash:
        config.stash[SERVERS].close()


@pytest.fixture(scope="session")
def endpoints() -> Iterator[dict[str, str]]:
    with test_endpoints() as found:
        yield found


@dataclass(frozen=True)
class Isolated:
    """One test's own topic names, consumer groups and database, as environment settings."""

    env: dict[str, str]

    def export(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the settings in the environment, for code that reads them there (the CLI)."""
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    @property
    def headers(self) -> dict[str, str]:
        """The test's admin key, holding every scope."""
        return {"Authorization": f"Bearer {self.env['LOYALTY_BOOTSTRAP_ADMIN_KEY']}"}

    def ledger(self, **overrides: Any) -> LedgerSettings:
        return LedgerSettings(**{**self._fields(LedgerSettings), **overrides})

    def projector(self, **overrides: Any) -> ProjectorSettings:
        return ProjectorSettings(**{**self._fields(ProjectorSettings), **overrides})

    def _fields(self, model: type[LedgerSettings] | type[ProjectorSettings]) -> dict[str, str]:
        prefix = "LOYALTY_"
        return {
            name[len(prefix) :].lower(): value
            for name, value in self.env.items()
            if name[len(prefix) :].lower() in model.model_fields
        }


@pytest.fixture
def isolated(endpoints: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Isolated]:
    tag = f"t{RUN_ID}{uuid.uuid4().hex[:6]}"
    database = f"loyalty_{tag}"
    admin_url = endpoints["LOYALTY_DATABASE_URL"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    env = {
        "LOYALTY_KAFKA_BOOTSTRAP": endpoints["LOYALTY_KAFKA_BOOTSTRAP"],
        "LOYALTY_DATABASE_URL": psycopg.conninfo.make_conninfo(admin_url, dbname=database),
        "LOYALTY_TOPIC_PURCHASES": f"{tag}.purchases",
        "LOYALTY_TOPIC_COMMANDS": f"{tag}.commands",
        "LOYALTY_TOPIC_EVENTS": f"{tag}.events",
        "LOYALTY_TOPIC_STATE": f"{tag}.state",
        "LOYALTY_TOPIC_DLQ": f"{tag}.dlq",
        # Shared, tests running at once (pytest-xdist) would read each other's replies, and each
        # processor's announcements would make the other ledger API unready.
        "LOYALTY_TOPIC_REPLIES": f"{tag}.replies",
        "LOYALTY_TOPIC_STATUS": f"{tag}.status",
        "LOYALTY_PROCESSOR_GROUP": f"{tag}-ledger",
        "LOYALTY_PROCESSOR_INSTANCE": "0",
        "LOYALTY_PROJECTOR_GROUP": f"{tag}-projector",
        "LOYALTY_BOOTSTRAP_ADMIN_KEY": f"test-admin-{uuid.uuid4().hex}",
        "LOYALTY_MASTER_KEY": MasterKey.generate(f"mk-{tag}").text(),
    }
    yield Isolated(env)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


class Running:
    """Service loops (processor, projector) on threads, stopped at the end of the test."""

    def __init__(self, join_timeout_s: float = 30.0) -> None:
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self.errors: list[BaseException] = []
        self.join_timeout_s = join_timeout_s

    def start(self, loop: Callable[[threading.Event], None]) -> threading.Event:
        stop = threading.Event()

        def target() -> None:
            try:
                loop(stop)
            except BaseException as error:  # surfaced by the fixture's teardown
                self.errors.append(error)

        name = getattr(loop, "__qualname__", repr(loop))
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append((thread, stop))
        return stop

    def stop_all(self) -> None:
        """Stop every loop and wait for it; one still running after the timeout fails the test.

        Such a loop would go on consuming beside the one a test starts next, and a test of a
        restart would pass on the old loop's work.
        """
        for _, stop in self._threads:
            stop.set()
        for thread, _ in self._threads:
            thread.join(timeout=self.join_timeout_s)
        stuck = [thread.name for thread, _ in self._threads if thread.is_alive()]
        self._threads.clear()  # reported once, here
        if stuck:
            raise AssertionError(f"still running {self.join_timeout_s:g} s after being stopped: {stuck}")


@pytest.fixture
def running() -> Iterator[Running]:
    services = Running()
    yield services
    try:
        services.stop_all()
    finally:
        assert not services.errors, services.errors
