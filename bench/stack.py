"""Endpoints for a benchmark: the configured ones, or local servers of the benchmark's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from localinfra.process import reserved_ports
from localinfra.stack import LocalStack

STATE_ROOT = Path(__file__).resolve().parent.parent / ".state"


def wait_ready(*bases: str, servers: Iterable[subprocess.Popen[bytes]] = (), log: Path | None = None) -> None:
    """Until every base URL's /readyz answers 200; an exited server or 60 s is an error."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if all(httpx.get(f"{base}/readyz").status_code == 200 for base in bases):
                return
        except httpx.TransportError:
            pass
        for server in servers:
            if server.poll() is not None:
                raise RuntimeError(f"a server exited ({server.returncode}); see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready within 60 s; see {log}")
        time.sleep(0.2)


def auth(env: dict[str, str]) -> dict[str, str]:
    """Headers that carry the benchmark's admin key."""
    return {"Authorization": f"Bearer {env['LOYALTY_BOOTSTRAP_ADMIN_KEY']}"}


@contextmanager
def bench_env() -> Iterator[dict[str, str]]:
    """LOYALTY_* settings with topics and groups of this run's own."""
    configured = {
        k: v for k, v in os.environ.items() if k in ("LOYALTY_KAFKA_BOOTSTRAP", "LOYALTY_DATABASE_URL")
    }
    with reserved_ports(3) as (kafka, controller, postgres):
        env = {
            "LOYALTY_LOCAL_KAFKA_PORT": str(kafka),
            "LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT": str(controller),
            "LOYALTY_LOCAL_PG_PORT": str(postgres),
            **configured,
        }
        state_dir = STATE_ROOT / f"bench-{os.getpid()}"
        stack = LocalStack.from_env(env, state_dir=state_dir)
        try:
            tag = f"bench{uuid.uuid4().hex[:6]}"
            yield {
                **configured,
                **stack.up(),
                "LOYALTY_TOPIC_PURCHASES": f"{tag}.purchases",
                "LOYALTY_TOPIC_COMMANDS": f"{tag}.commands",
                "LOYALTY_TOPIC_EVENTS": f"{tag}.events",
                "LOYALTY_TOPIC_STATE": f"{tag}.state",
                "LOYALTY_TOPIC_DLQ": f"{tag}.dlq",
                "LOYALTY_TOPIC_REPLIES": f"{tag}.replies",
                "LOYALTY_TOPIC_STATUS": f"{tag}.status",
                "LOYALTY_PROCESSOR_GROUP": f"{tag}-ledger",
                "LOYALTY_PROCESSOR_INSTANCE": "0",
                "LOYALTY_PROJECTOR_GROUP": f"{tag}-projector",
                "LOYALTY_BOOTSTRAP_ADMIN_KEY": f"bench-admin-{uuid.uuid4().hex}",
            }
        finally:
            stack.purge(state_dir)


@dataclass(frozen=True)
class RunningStack:
    """`loyalty run` as a user starts it, on ports and a state directory of the benchmark's own."""

    kafka: str
    database_url: str
    ledger: str
    read: str
    admin_key: str
    state: Path
    process: subprocess.Popen[bytes]
    # The broker and Postgres it starts, unless external.
    servers: LocalStack


@contextmanager
def loyalty_run(extra: dict[str, str] | None = None, cgroup: Path | None = None) -> Iterator[RunningStack]:
    """Start `loyalty run` (local Kafka and Postgres included), wait for its banner, stop it after.

    `cgroup`: the procs file of a cgroup that it (and so all it starts) joins before it runs.
    """
    state = Path(tempfile.mkdtemp(prefix="bench-run-"))
    admin_key = f"lk-bench-{uuid.uuid4().hex}"
    with reserved_ports(6) as (kafka, controller, pg, ledger, read, supervisor):
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("LOYALTY_KAFKA_BOOTSTRAP", "LOYALTY_DATABASE_URL")
            },
            "LOYALTY_STATE_DIR": str(state),
            "LOYALTY_LOCAL_KAFKA_PORT": str(kafka),
            "LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT": str(controller),
            "LOYALTY_LOCAL_PG_PORT": str(pg),
            "LOYALTY_LEDGER_PORT": str(ledger),
            "LOYALTY_READ_PORT": str(read),
            "LOYALTY_SUPERVISOR_PORT": str(supervisor),
            "LOYALTY_BOOTSTRAP_ADMIN_KEY": admin_key,
            "LOYALTY_LOG_LEVEL": "WARNING",
            **(extra or {}),
        }
        servers = LocalStack.from_env(env, state_dir=state)
        log = state / "run.log"
        with open(log, "wb") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=None if cgroup is None else lambda: cgroup.write_text(str(os.getpid())),
            )
        try:
            started = time.monotonic()
            while "ledger API:" not in log.read_text():
                if run.poll() is not None:
                    raise SystemExit(log.read_text()[-3000:])
                time.sleep(0.5)
            print(f"loyalty run ready in {time.monotonic() - started:.1f} s", flush=True)
            yield RunningStack(
                kafka=f"127.0.0.1:{kafka}",
                database_url=f"postgresql://loyalty@127.0.0.1:{pg}/loyalty",
                ledger=f"http://127.0.0.1:{ledger}",
                read=f"http://127.0.0.1:{read}",
                admin_key=admin_key,
                state=state,
                process=run,
                servers=servers,
            )
        finally:
            run.send_signal(signal.SIGINT)
            run.wait(timeout=120)
            # The cluster may live outside the state directory (/var/tmp, as root): 1 GB a run.
            servers.purge(state)
