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
from typing import Any


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, body: bytes
) -> int:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return status


async def open_loop(
    host: str, port: int, path: str, rate: float, seconds: float, body_for: Callable[[int], dict[str, Any]]
) -> tuple[list[float], Counter[int]]:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def one(index: int, scheduled: float) -> None:
        connection = idle.get_nowait() if not idle.empty() else await asyncio.open_connection(host, port)
        status = await _request(*connection, f"{host}:{port}", path, json.dumps(body_for(index)).encode())
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] += 1
        idle.put_nowait(connection)

    start = time.perf_counter()
    tasks = []
    for index in range(int(rate * seconds)):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait()[1].close()
    return latencies, statuses
