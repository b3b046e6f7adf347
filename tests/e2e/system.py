"""`loyalty run` as a test starts it: its own process, ports and state directory, its output in a file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from localinfra.process import reserved_ports
from localinfra.stack import LocalStack
from tests.endpoints import STATE_DIR
from tests.waiting import eventually


@contextmanager
def own_infra_env(**extra: str) -> Iterator[dict[str, str]]:
    """Settings for a `loyalty run` that starts its own Kafka and Postgres on reserved ports."""
    state = STATE_DIR.parent / f"e2e-{os.getpid()}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOYALTY_")}
    with reserved_ports(6) as (kafka, controller, postgres, ledger, read, supervisor):
        env.update(
            LOYALTY_STATE_DIR=str(state),
            LOYALTY_LOCAL_KAFKA_PORT=str(kafka),
            LOYALTY_LOCAL_KAFKA_CONTROLLER_PORT=str(controller),
            LOYALTY_LOCAL_PG_PORT=str(postgres),
            LOYALTY_LEDGER_PORT=str(ledger),
            LOYALTY_READ_PORT=str(read),
            LOYALTY_SUPERVISOR_PORT=str(supervisor),
            **extra,
        )
        try:
            yield env
        finally:
            LocalStack.from_env(env, state_dir=state).purge(state)


class System:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.ledger = f"http://127.0.0.1:{env['LOYALTY_LEDGER_PORT']}"
        self.read = f"http://127.0.0.1:{env['LOYALTY_READ_PORT']}"
        self.supervisor = f"http://127.0.0.1:{env['LOYALTY_SUPERVISOR_PORT']}"
        self.state = Path(env["LOYALTY_STATE_DIR"])
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    def both_ready(self) -> bool:
        try:
            return all(httpx.get(f"{url}/readyz").status_code == 200 for url in (self.ledger, self.read))
        except httpx.TransportError:
            return False

    def ready(self, timeout_s: float = 180) -> float:
        def probe() -> bool:
            assert self.process.poll() is None, "loyalty run exited"
            return self.both_ready()

        eventually(probe, timeout_s=timeout_s, what="ready")
        return time.monotonic() - self.started

    @property
    def headers(self) -> dict[str, str]:
        """The admin key `loyalty run` made in its state directory (or was given)."""
        return {"Authorization": f"Bearer {(self.state / 'admin.key').read_text().strip()}"}

    def balance(self, member_id: str) -> int | None:
        response = httpx.get(f"{self.read}/v1/members/{member_id}/balance", headers=self.headers)
        return response.json()["available"] if response.status_code == 200 else None

    def metric(self, name: str, component: str) -> float | None:
        """One of the supervisor's per-component metrics, or None when it is not reachable."""
        try:
            text = httpx.get(f"{self.supervisor}/metrics").text
        except httpx.TransportError:
            return None
        found = re.search(rf'^{name}{{component="{re.escape(component)}"}} (\S+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def child(self, component: str) -> int:
        """The pid of the supervisor's child running `loyalty <component>`."""
        found = [pid for pid in descendants(self.process.pid) if _command(pid)[-1:] == [component]]
        assert len(found) == 1, f"{component}: {found}"
        return found[0]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        finally:
            self._log.close()


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc), children of children included."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat_fields(stat)[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def stat_fields(stat: str) -> list[str]:
    """The fields of a /proc stat line after the command's name (which may hold spaces): the
    state first, then the parent, ... (proc(5) numbers them from 3)."""
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Some thread of it still runs: a killed process's main thread can be a zombie while the
    others are still ending, holding its sockets."""
    try:
        threads = list((Path("/proc") / str(pid) / "task").iterdir())
    except OSError:
        return False
    for thread in threads:
        try:
            if stat_fields((thread / "stat").read_text())[0] != "Z":
                return True
        except OSError:  # that thread has just ended
            continue
    return False


def _command(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().rstrip("\0").split("\0")
    except OSError:
        return []
