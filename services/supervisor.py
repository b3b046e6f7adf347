"""`loyalty run`: the whole system in the foreground, stopped together on Ctrl-C or SIGTERM."""

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
from pathlib import Path

from localinfra.kafka import KafkaNode
from localinfra.postgres import PostgresNode
from localinfra.process import InfraError
from localinfra.stack import LocalStack
from services.cli import COMPONENTS
from services.ledger.settings import LedgerSettings
from services.personal_data.crypto import MasterKey


def run_all() -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

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

    children = {
        name: subprocess.Popen([*prepare, component], env=child_env, stdin=subprocess.DEVNULL)
        for name, component, child_env in _instances(env)
    }
    ledger = f"http://{env.get('LOYALTY_LEDGER_HOST', '127.0.0.1')}:{env.get('LOYALTY_LEDGER_PORT', '8000')}"
    read = f"http://{env.get('LOYALTY_READ_HOST', '127.0.0.1')}:{env.get('LOYALTY_READ_PORT', '8001')}"
    print("starting: waiting until both APIs are ready (the processor has restored its state)", flush=True)
    failed = _wait_ready(children, [ledger, read], stop)
    if failed is None and not stop.is_set():
        print(f"ledger API: {ledger}  (docs: {ledger}/docs)", flush=True)
        print(f"read API:   {read}  (docs: {read}/docs)", flush=True)
        print("Ctrl-C stops everything.", flush=True)

    while not stop.is_set() and failed is None:
        failed = next((name for name, child in children.items() if child.poll() is not None), None)
        stop.wait(0.5)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    _stop_infra(started_here)
    if failed is not None:
        print(
            f"loyalty run: {failed} exited (code {children[failed].returncode}); everything stopped",
            file=sys.stderr,
        )
        return 1
    print("stopped", flush=True)
    return 0


def _wait_ready(
    children: dict[str, subprocess.Popen[bytes]], bases: list[str], stop: threading.Event
) -> str | None:
    """Wait until every API's /readyz answers 200; the name of a child that exited meanwhile, if any."""
    while not stop.is_set():
        failed = next((name for name, child in children.items() if child.poll() is not None), None)
        if failed is not None or all(_ready(base) for base in bases):
            return failed
        stop.wait(0.5)
    return None


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
