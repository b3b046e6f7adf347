"""Latency of GET /v1/members/{id} at a fixed request rate, on projected read models.

Publishes a backlog for a few thousand members (bench/backlog.py), projects it into a database
of its own, then starts the read API as its own process, warms it up briefly and sends the
requests open-loop at the given rate, each for a random member, and prints p50/p90/p99/max from
each request's scheduled time.

    .venv/bin/python -m bench.read_latency [--rate 500] [--seconds 20] [--members 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg

from bench.backlog import fresh_database, load, log_end, project
from bench.http_load import Load, run_load
from bench.stack import auth, bench_env, wait_ready
from localinfra.process import reserved_ports
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from services.migrations import migrate

TARGET_P99_MS = 20


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3, help="seconds at the rate, not counted")
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=None, help="default: 10 per member")
    args = parser.parse_args()
    with bench_env() as env, reserved_ports(1) as (port,):
        os.environ.update(env)
        settings = LedgerSettings()
        ensure_topics(settings)
        load(settings.kafka_bootstrap, settings.topic_events, args.events or 10 * args.members, args.members)
        total = log_end(settings.kafka_bootstrap, settings.topic_events)
        with fresh_database(env["LOYALTY_DATABASE_URL"]) as url:
            migrate(url)
            projection = project(
                env, url, settings.topic_events, total, Path(f"/tmp/bench-projector-{os.getpid()}.log")
            )
            print(f"  projected in {projection.seconds:.1f} s", flush=True)
            if projection.applied != total:
                print(f"  WARNING: {total - projection.applied} of the {total} events were not applied")
            with psycopg.connect(url) as conn:
                members = [
                    row[0]
                    for row in conn.execute(
                        "SELECT member_id FROM members WHERE enrolled_at IS NOT NULL ORDER BY member_id"
                    ).fetchall()
                ]
            log = Path(f"/tmp/bench-read-api-{os.getpid()}.log")
            with log.open("wb") as out:
                server = subprocess.Popen(
                    [sys.executable, "-m", "services.cli", "read-api"],
                    env={**os.environ, **env, "LOYALTY_DATABASE_URL": url, "LOYALTY_READ_PORT": str(port)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_ready(f"http://127.0.0.1:{port}", servers=[server], log=log)
                rng = random.Random(7)
                paths = [f"/v1/members/{rng.choice(members)}" for _ in range(int(args.rate * args.seconds))]

                def request(index: int) -> tuple[str, str, None]:
                    return "GET", paths[index % len(paths)], None

                if args.warmup > 0:
                    asyncio.run(run_load("127.0.0.1", port, args.rate, args.warmup, request, auth(env)))
                result: Load = asyncio.run(
                    run_load("127.0.0.1", port, args.rate, args.seconds, request, auth(env))
                )
            finally:
                server.terminate()
                server.wait(timeout=30)
        report(args.rate, args.seconds, len(members), result, log)


def report(rate: float, seconds: float, members: int, load: Load, log: Path) -> None:
    sent = int(rate * seconds)
    failed = sum(load.errors.values()) + sum(n for status, n in load.statuses.items() if status != 200)
    print(
        f"GET /v1/members/{{id}}: {sent} requests at {rate:.0f}/s for {seconds:.0f} s, "
        f"{members} members; achieved {load.achieved:,.0f}/s"
    )
    print(
        f"  statuses {dict(load.statuses)}  errors {failed}"
        + (f" (no answer: {dict(load.errors)})" if load.errors else "")
    )
    if len(load.latencies) >= 2:
        q = statistics.quantiles(load.latencies, n=100, method="inclusive")
        print(
            f"  latency ms: p50 {ms(q[49])}  p90 {ms(q[89])}  p99 {ms(q[98])}  max {ms(max(load.latencies))}"
            f"  (target: p99 < {TARGET_P99_MS} ms at 500/s)"
        )
    if len(load.late) >= 2:
        late = statistics.quantiles(load.late, n=100, method="inclusive")
        print(
            f"  client: requests left p99 {ms(late[98])} ms, at most {ms(max(load.late))} ms after schedule"
        )
    print(f"  read API log: {log}")


if __name__ == "__main__":
    main()
