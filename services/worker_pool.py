"""An API's worker processes, each listening on the API's port with a socket of its own.

uvicorn's own workers share one listening socket, and uvloop accepts every connection waiting on
it at once: the burst of connections a client opens when its load starts lands on whichever worker
woke first. Seen under 1,000 reads/s: one worker at 64% of a core and its p99 rising, the other at
4%. With SO_REUSEPORT each worker listens on a socket of its own and the kernel deals the
connections out among them; `serving.Rotation` has clients reconnect now and then, so that the
few connections that carry most of a client's requests do not stay with one worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import uvicorn
from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Worker:
    """What each worker process serves: the app that `factory` ("module:function") makes."""

    factory: str
    host: str
    port: int
    access_log: bool
    keep_alive_s: int


class StartupFailed(Exception):
    """A worker could not start serving (its app's startup failed): another would fail the same way."""


def run_workers(worker: Worker, count: int) -> None:
    """Serve with `count` workers until SIGTERM or SIGINT; a worker that dies is replaced.

    Raises StartupFailed when a worker exits because its app could not start, and OSError when
    the port is taken: a server already listening there must not silently share it.
    """
    check_free(worker.host, worker.port)
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def start() -> BaseProcess:
        process = context.Process(target=_serve, args=(worker,), daemon=False)
        process.start()
        return process

    processes = [start() for _ in range(count)]
    try:
        while not stop.wait(CHECK_INTERVAL_S):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    raise StartupFailed(f"a worker of {worker.factory} could not start")
                log.warning("api worker exited; starting another", extra={"exitcode": process.exitcode})
                processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()


def check_free(host: str, port: int) -> None:
    """Bind without SO_REUSEPORT and let go: fails while any server listens on the port."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _serve(worker: Worker) -> None:
    """One worker process: its own socket on the shared port, one uvicorn server on it."""
    listener = socket.socket(_family(worker.host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((worker.host, worker.port))
    config = uvicorn.Config(
        worker.factory,
        factory=True,
        access_log=worker.access_log,
        log_config=None,
        backlog=2048,
        timeout_keep_alive=worker.keep_alive_s,
    )
    uvicorn.Server(config).run(sockets=[listener])
