"""An open-loop HTTP/1.1 load generator, lean enough that the client is not what gets measured.

Requests leave on a fixed schedule over a pool of keep-alive connections; each latency is taken
from the request's scheduled time, so a slow server cannot hide queueing (no coordinated
omission).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services import collector

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# What request number i is: method, path and body (None: no body).
RequestFor = Callable[[int], tuple[str, str, bytes | None]]


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # answered requests, from the scheduled time
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # no answer: the exception, by name
    late: list[float] = field(default_factory=list)  # how long after its scheduled time each one left
    seconds: float = 0.0  # from the first scheduled request to the last answer

    @property
    def achieved(self) -> float:
        """Answers per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def _request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    method: str,
    path: str,
    body: bytes | None,
    extra: str,
) -> tuple[int, bool]:
    """The status, and whether the connection may be used again."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write((head + "\r\n").encode() + (body or b""))
    answer = await reader.readuntil(b"\r\n\r\n")
    lines = answer.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection", "").strip() != "close"


async def run_load(
    host: str,
    port: int,
    rate: float,
    seconds: float,
    request_for: RequestFor,
    headers: dict[str, str] | None = None,
) -> Load:
    """Send int(rate * seconds) requests, request i at start + i / rate, whatever came back before."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    load = Load()
    authority = f"{host}:{port}"

    async def one(index: int, scheduled: float) -> None:
        method, path, body = request_for(index)
        connection: Connection | None = None
        try:
            connection = idle.get_nowait() if not idle.empty() else await asyncio.open_connection(host, port)
            load.late.append(time.perf_counter() - scheduled)
            status, reusable = await _request(*connection, authority, method, path, body, extra)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            KeyError,
            ValueError,
        ) as error:
            load.errors[type(error).__name__] += 1
            if connection is not None:
                connection[1].close()
            return
        load.latencies.append(time.perf_counter() - scheduled)
        load.statuses[status] += 1
        if reusable:
            idle.put_nowait(connection)
        else:
            connection[1].close()

    # The client's own collector pauses would be counted as the server's latency.
    with collector.paused():
        start = time.perf_counter()
        tasks = []
        for index in range(int(rate * seconds)):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, scheduled)))
        await asyncio.gather(*tasks)
        load.seconds = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait()[1].close()
    return load


async def open_loop(
    host: str,
    port: int,
    path: str,
    rate: float,
    seconds: float,
    body_for: Callable[[int], dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> tuple[list[float], Counter[int]]:
    """POST a JSON body per request; raise if any request got no answer."""
    load = await run_load(
        host, port, rate, seconds, lambda i: ("POST", path, json.dumps(body_for(i)).encode()), headers
    )
    if load.errors:
        raise ConnectionError(f"requests without an answer: {dict(load.errors)}")
    return load.latencies, load.statuses
