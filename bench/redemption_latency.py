"""Latency of POST /v1/redemptions at a fixed request rate, answered once decided.

Starts the processor and the ledger API as their own processes on a stack of the benchmark's
own, gives each of a few hundred members enough points, then sends redemptions open-loop at
the given rate (a request leaves on schedule whether or not earlier ones have been answered)
and prints p50/p90/p99/max of the time to the 201.

    .venv/bin/python -m bench.redemption_latency [--rate 200] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections import Counter

import httpx

from bench.stack import bench_env
from localinfra.process import free_port


async def fire(base: str, rate: float, seconds: float, members: int) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one(index: int) -> None:
            body = {"redemption_id": f"rd-{index}", "member_id": f"m-{index % members}", "points": 10}
            started = time.perf_counter()
            response = await client.post("/v1/redemptions", json=body)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] += 1

        tasks = []
        start = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--members", type=int, default=200)
    args = parser.parse_args()
    with bench_env() as env:
        port = free_port()
        env = {**env, "LOYALTY_LEDGER_PORT": str(port)}
        log = open(f"/tmp/bench-redemptions-{os.getpid()}.log", "wb")  # noqa: SIM115
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", name],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for name in ("processor", "ledger-api")
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "ledger API not ready"
                time.sleep(0.2)
            for member in range(args.members):
                body = {
                    "type": "purchase",
                    "purchase_id": f"seed-{member}",
                    "member_id": f"m-{member}",
                    "amount": "100000.00",
                    "currency": "CNY",
                    "occurred_at": "2026-11-22T10:00:00Z",
                }
                assert httpx.post(f"{base}/v1/purchases", json=body, timeout=30).status_code == 201
            latencies, statuses = asyncio.run(fire(base, args.rate, args.seconds, args.members))
        finally:
            for child in children:
                child.terminate()
                child.wait(timeout=30)
        quantiles = statistics.quantiles(latencies, n=100)
        print(
            f"{len(latencies)} redemptions at {args.rate:.0f}/s for {args.seconds:.0f} s: "
            f"statuses {dict(statuses)}"
        )
        print(
            f"latency ms: p50 {quantiles[49] * 1000:.1f}  p90 {quantiles[89] * 1000:.1f}  "
            f"p99 {quantiles[98] * 1000:.1f}  max {max(latencies) * 1000:.1f}"
        )


if __name__ == "__main__":
    main()
