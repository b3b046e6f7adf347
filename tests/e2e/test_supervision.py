"""`loyalty run` as a supervisor: a crash loop is given up alone, and a SIGKILL of it takes its children."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from localinfra.process import port_open, reserved_ports
from localinfra.stack import LocalStack
from tests.conftest import Isolated
from tests.e2e.system import System, alive, descendants, stat_fields
from tests.waiting import eventually


def test_a_crash_loop_is_given_up_alone_and_a_killed_supervisor_leaves_no_orphans(
    isolated: Isolated, tmp_path: Path
) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOYALTY_")}
    with reserved_ports(3) as ports:
        ledger, read, supervisor = ports
        env.update(
            isolated.env,
            LOYALTY_STATE_DIR=str(tmp_path / "state"),
            LOYALTY_LEDGER_PORT=str(ledger),
            LOYALTY_READ_PORT=str(read),
            LOYALTY_SUPERVISOR_PORT=str(supervisor),
            LOYALTY_RULES_FILE=str(tmp_path / "missing.toml"),  # the processor exits at every start
            LOYALTY_RESTART_BACKOFF_S="0.2",
            LOYALTY_RESTART_LIMIT="3",
        )
        system = System(env, tmp_path / "run.log")
        try:
            eventually(
                lambda: system.metric("loyalty_component_given_up", "processor-0") == 1,
                timeout_s=90,
                what="the processor given up",
            )
            assert system.metric("loyalty_component_restarts_total", "processor-0") == 2
            assert system.metric("loyalty_component_up", "processor-0") == 0
            eventually(lambda: _answers(f"{system.read}/readyz") == 200, timeout_s=60, what="read API ready")
            assert _answers(f"{system.ledger}/healthz") == 200
            for component in ("ledger-api", "scheduler", "projector", "read-api"):
                assert system.metric("loyalty_component_up", component) == 1, component
                assert system.metric("loyalty_component_given_up", component) == 0, component
            lines = system.log.read_text().splitlines()
            logged = [json.loads(line) for line in lines if line.startswith("{")]
            exits = [line for line in logged if line.get("component") == "processor-0"]
            assert [line["msg"] for line in exits if line["level"] != "info"] == [
                "component exited; restarting",
                "component exited; restarting",
                "component in a crash loop; given up, the rest keep running",
            ]
            assert exits[-1]["exit_code"] == 1

            children = descendants(system.process.pid)
            assert len(children) >= 4
            # The projector yields the cores to the command path, with every thread of it.
            niceness = {pid: _niceness(pid) for pid in children}
            assert niceness.pop(system.child("projector")) == {10}
            assert set().union(*niceness.values()) == {0}
            system.process.send_signal(signal.SIGKILL)
            system.process.wait()
            eventually(lambda: not any(alive(pid) for pid in children), timeout_s=10, what="every child gone")
            for port in ports:
                assert not port_open(port), port
        finally:
            system.stop()


def test_a_port_another_server_listens_on_stops_the_run_before_anything_starts(tmp_path: Path) -> None:
    """It used to start everything, give the API up after its crash loop, and wait for its
    readiness forever."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOYALTY_")}
    with reserved_ports(2) as (read, supervisor), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env.update(
            LOYALTY_STATE_DIR=str(tmp_path / "state"),
            LOYALTY_LEDGER_PORT=str(taken.getsockname()[1]),
            LOYALTY_READ_PORT=str(read),
            LOYALTY_SUPERVISOR_PORT=str(supervisor),
        )
        try:
            command = [sys.executable, "-m", "services.cli", "run"]
            run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        finally:  # should the run have started its own Kafka and Postgres after all
            LocalStack.from_env(env, state_dir=tmp_path / "state").purge(tmp_path / "state")
    assert run.returncode == 1
    assert "cannot serve the ledger API" in run.stderr
    assert "LOYALTY_LEDGER_PORT" in run.stderr
    assert "kafka:" not in run.stdout, "nothing was started"


def _answers(url: str) -> int | None:
    try:
        return httpx.get(url).status_code
    except httpx.TransportError:
        return None


def _niceness(pid: int) -> set[int]:
    """The niceness of each thread of the process (/proc/PID/task/TID/stat, field 19)."""
    return {int(stat_fields((task / "stat").read_text())[16]) for task in Path(f"/proc/{pid}/task").iterdir()}
