"""Latency of POST /v1/redemptions at a fixed request rate, answered once decided.

Starts the processor and the ledger API as their own processes on a stack of the benchmark's
own, gives each of a few hundred members enough points, then sends redemptions open-loop at
the given rate (a request leaves on schedule whether or not earlier ones have been answered):
first for a warm-up that is not counted, then for the measured seconds, whose p50/p90/p99/max
of the time to the 201 it prints.

    .venv/bin/python -m bench.redemption_latency [--rate 200] [--seconds 15] [--warmup 10] [--processors 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.http_load import open_loop
from bench.stack import auth, bench_env, wait_ready
from localinfra.process import reserved_ports


def redemption(phase: str, members: int, index: int) -> dict[str, Any]:
    """The body of the `index`th redemption of a phase: an id of its own, members in turn."""
    return {"redemption_id": f"rd-{phase}-{index}", "member_id": f"m-{index % members}", "points": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before measuring")
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--processors", type=int, default=1, help="processor instances, each a process")
    args = parser.parse_args()
    with bench_env() as env, reserved_ports(1) as (port,):
        env = {**env, "LOYALTY_LEDGER_PORT": str(port)}
        log = open(f"/tmp/bench-redemptions-{os.getpid()}.log", "wb")  # noqa: SIM115
        roles = [("ledger-api", 0)] + [("processor", instance) for instance in range(args.processors)]
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", name],
                env={**os.environ, **env, "LOYALTY_PROCESSOR_INSTANCE": str(instance)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for name, instance in roles
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, servers=children, log=Path(log.name))
            for member in range(args.members):
                body = {
                    "type": "purchase",
                    "purchase_id": f"seed-{member}",
                    "member_id": f"m-{member}",
                    "amount": "100000.00",
                    "currency": "CNY",
                    "occurred_at": "2026-11-22T10:00:00Z",
                }
                response = httpx.post(f"{base}/v1/purchases", json=body, headers=auth(env), timeout=30)
                while response.status_code == 202:  # the processor is still joining its group
                    time.sleep(0.2)
                    response = httpx.get(f"{base}{response.headers.get('location', '')}", headers=auth(env))
                    if response.json()["status"] != "pending":
                        break
                assert response.status_code in (200, 201), response.text
            # Warm-up at the same rate, not counted: a broker just started is still compiling its
            # hot paths, which is not the latency of a running ledger.
            for phase, seconds in (("warm-up", args.warmup), ("measured", args.seconds)):
                latencies, statuses = asyncio.run(
                    open_loop(
                        "127.0.0.1",
                        port,
                        "/v1/redemptions",
                        args.rate,
                        seconds,
                        partial(redemption, phase, args.members),
                        auth(env),
                    )
                )
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
