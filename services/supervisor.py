"""`loyalty run`: the whole system in the foreground, each component restarted when it exits.

A component that exits is started again after a backoff (`services.children`); one in a crash
loop is given up alone, and the rest keep serving. Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from localinfra.kafka import KafkaNode
from localinfra.postgres import PostgresNode
from localinfra.process import InfraError, port_open
from localinfra.stack import LocalStack
from services.children import Component, ComponentMetrics
from services.cli import COMPONENTS
from services.ledger.settings import LedgerSettings
from services.personal_data.crypto import MasterKey
from services.projector.settings import ProjectorSettings
from services.restarts import RestartPolicy
from services.worker_pool import check_free

STOP_GRACE_S = 20.0


class SupervisorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    # The supervisor's own /metrics (restarts, crash loops), on 127.0.0.1.
    supervisor_port: int = 8002
    restart_backoff_s: float = Field(default=1.0, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    restart_limit: int = Field(default=5, ge=1)
    restart_window_s: float = Field(default=300.0, gt=0)
    # Niceness added to the projector's: when the cores are short, the command path (ledger API,
    # processor, broker) gets them first, and the read models catch up on what is left over.
    projector_nice: int = Field(default=10, ge=0, le=19)

    def policy(self) -> RestartPolicy:
        return RestartPolicy(
            backoff_s=self.restart_backoff_s,
            backoff_max_s=max(self.restart_backoff_s, self.restart_backoff_max_s),
            limit=self.restart_limit,
            window_s=self.restart_window_s,
        )


def run_all() -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    settings = SupervisorSettings()
    registry = CollectorRegistry()
    try:  # first, so that a busy port fails before anything is started
        metrics_server, _ = start_http_server(settings.supervisor_port, addr="127.0.0.1", registry=registry)
    except OSError as error:
        print(
            f"loyalty run: cannot serve /metrics on 127.0.0.1:{settings.supervisor_port} ({error}); "
            "choose another port with LOYALTY_SUPERVISOR_PORT",
            file=sys.stderr,
        )
        return 1
    apis = _apis()
    try:
        for api in apis:
            try:
                check_free(api.host, api.port)
            except OSError as error:
                print(
                    f"loyalty run: cannot serve the {api.name} on {api.host}:{api.port} ({error}); "
                    f"stop what listens there or choose another port with {api.setting}",
                    file=sys.stderr,
                )
                return 1
        return _supervise(settings, registry, stop, apis)
    finally:
        metrics_server.shutdown()


@dataclass(frozen=True)
class _Api:
    name: str
    host: str
    port: int
    setting: str  # what moves it elsewhere

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def _apis() -> list[_Api]:
    """Where the two APIs will listen. Checked before anything starts: a port taken by another
    server made the API exit at every start, and the run waited for its readiness forever."""
    ledger, read = LedgerSettings(), ProjectorSettings()
    return [
        _Api("ledger API", ledger.ledger_host, ledger.ledger_port, "LOYALTY_LEDGER_PORT"),
        _Api("read API", read.read_host, read.read_port, "LOYALTY_READ_PORT"),
    ]


def _supervise(
    settings: SupervisorSettings, registry: CollectorRegistry, stop: threading.Event, apis: list[_Api]
) -> int:
    stack = LocalStack.from_env()
    started_here = [
        node for node in (stack.kafka, stack.postgres) if node is not None and "stopped" in node.status()
    ]
    try:
        env = {**os.environ, **stack.up()}
    except InfraError as error:
        print(f"loyalty run: {error}", file=sys.stderr)
        return 1
    for line in stack.status():
        print(line, flush=True)
    state = Path(env.get("LOYALTY_STATE_DIR", ".state")).resolve()
    if not env.get("LOYALTY_BOOTSTRAP_ADMIN_KEY"):
        env["LOYALTY_BOOTSTRAP_ADMIN_KEY"] = kept_secret(
            state / "admin.key", lambda: f"lk-admin-{secrets.token_urlsafe(32)}"
        )
        print(f"admin key (every scope): in {state / 'admin.key'}", flush=True)
    if not env.get("LOYALTY_MASTER_KEY"):
        env["LOYALTY_MASTER_KEY"] = kept_secret(
            state / "master.key", lambda: MasterKey.generate("local-1").text()
        )

    prepare = [sys.executable, "-m", "services.cli"]
    for step in ("topics", "migrate"):
        if subprocess.run([*prepare, step], env=env).returncode != 0:
            print(f"loyalty run: `loyalty {step}` failed", file=sys.stderr)
            _stop_infra(started_here)
            return 1

    policy, reachable = settings.policy(), _reachable(env)
    components = [
        Component(
            name,
            [*prepare, component],
            child_env,
            policy,
            reachable,
            nice=settings.projector_nice if component == "projector" else 0,
        )
        for name, component, child_env in _instances(env)
    ]
    registry.register(ComponentMetrics(components))
    for component in components:
        component.start(time.monotonic())
    ledger, read = (api.base for api in apis)
    print("starting: waiting until both APIs are ready (the processor has restored its state)", flush=True)
    banner = [
        f"ledger API: {ledger}  (docs: {ledger}/docs)",
        f"read API:   {read}  (docs: {read}/docs)",
        f"supervisor: http://127.0.0.1:{settings.supervisor_port}/metrics (restarts, crash loops)",
        "Ctrl-C stops everything.",
    ]
    threading.Thread(target=_announce_when_ready, args=([ledger, read], banner, stop), daemon=True).start()

    while not stop.is_set() and not all(component.given_up for component in components):
        now = time.monotonic()
        for component in components:
            component.check(now)
        stop.wait(0.2)
    for component in components:
        component.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for component in components:
        component.wait(deadline)
    _stop_infra(started_here)
    if not stop.is_set():
        print("loyalty run: every component was given up; everything stopped", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0


def _reachable(env: dict[str, str]) -> Callable[[], bool]:
    """Whether a Kafka bootstrap server and Postgres accept TCP connections (a socket path: assumed)."""
    kafka = [
        (host, int(port)) if host else (port, 9092)
        for host, _, port in (
            address.strip().rpartition(":") for address in env["LOYALTY_KAFKA_BOOTSTRAP"].split(",")
        )
    ]
    database = conninfo_to_dict(env["LOYALTY_DATABASE_URL"])
    host, port = str(database.get("host") or "127.0.0.1"), int(database.get("port") or 5432)

    def check() -> bool:
        kafka_up = any(port_open(kafka_port, kafka_host) for kafka_host, kafka_port in kafka)
        return kafka_up and (host.startswith("/") or port_open(port, host))

    return check


def _announce_when_ready(bases: list[str], banner: list[str], stop: threading.Event) -> None:
    """Print where to reach the system once every API's /readyz answers 200."""
    while not stop.is_set():
        if all(_ready(base) for base in bases):
            print("\n".join(banner), flush=True)
            return
        stop.wait(0.5)


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def kept_secret(path: Path, make: Callable[[], str]) -> str:
    """A local secret (admin key, master key), made on the first run and kept, readable by its owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(make() + "\n")
    return path.read_text().strip()


def _instances(env: dict[str, str]) -> list[tuple[str, str, dict[str, str]]]:
    """(name, component, environment) of every process: LOYALTY_PROCESSORS processors, one of the rest.

    Processors on one host need instance names of their own (each is a transactional id): a set
    LOYALTY_PROCESSOR_INSTANCE gets a suffix per processor, or each claims a free slot itself.
    """
    settings = LedgerSettings()  # processor settings come from the environment, not from the stack
    found = []
    for component in COMPONENTS:
        if component != "processor":
            found.append((component, component, env))
            continue
        for index in range(settings.processors):
            child_env = dict(env)
            if settings.processor_instance:
                suffix = "" if settings.processors == 1 else f"-{index}"
                child_env["LOYALTY_PROCESSOR_INSTANCE"] = f"{settings.processor_instance}{suffix}"
            found.append((f"processor-{index}", component, child_env))
    return found


def _stop_infra(nodes: list[KafkaNode | PostgresNode]) -> None:
    """Stop only the local servers this run started; ones already up stay up."""
    for node in nodes:
        node.down()
