"""Process and port helpers shared by the local Kafka and Postgres launchers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


class InfraError(RuntimeError):
    """A local server cannot be set up or started; the message says what to do."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free(port: int, what: str, setting: str) -> None:
    if port_open(port):
        raise InfraError(
            f"port {port} for {what} is busy: another process listens on 127.0.0.1:{port}. "
            f"Stop it or choose another port with {setting}."
        )


@contextlib.contextmanager
def reserved_ports(count: int) -> Iterator[list[int]]:
    """Ports on 127.0.0.1 that stay this process's own, for servers started inside the block.

    Binding port 0 and closing the socket before the server binds leaves a window in which any
    process on the host can take the port. Here each port stays bound by a socket that never
    listens and sets SO_REUSEADDR: the kernel gives it to no other bind to port 0 or outgoing
    connection and refuses any bind without SO_REUSEADDR, while a server that sets SO_REUSEADDR
    itself (Kafka, PostgreSQL and uvicorn all do) binds it and listens. Hold the block until the
    servers have stopped, so that one restarted inside it gets its port back.
    """
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
        yield [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        # Reap it first if it is our own child that has ended, or it would look alive.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Ended, but not reaped by its parent: another process started it (`loyalty run` a server
    # that `loyalty infra down` stops), and a zombie answers signals like a live process.
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def spawn_detached(cmd: Sequence[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start a server in its own session with every stream on a file.

    A server that inherits the caller's stdout keeps that pipe open after the caller ends,
    and whoever reads the pipe waits forever.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def run_quiet(cmd: Sequence[str], log_file: Path, what: str) -> None:
    """Run a setup command to completion, keeping its output in a log file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        result = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise InfraError(f"{what} failed (exit {result.returncode}); see {log_file}")


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise InfraError(f"{what} did not become ready within {timeout_s:.0f} s; see {log_file}")


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within the timeout."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
