"""What sealing profiles and checking keys cost: p50/p99 at a fixed rate, with and without.

Starts the processor, projector, ledger API and read API on a stack of the benchmark's own, then,
open-loop at the given rate:
1. POST /v1/purchases for new members (enrols them without a profile) against POST /v1/members
   for new members with a full profile (data key made, four fields sealed): the difference is
   the cost of encryption and key creation on enrolment;
2. GET /v1/members/{id} with the bootstrap key (a constant-time compare, no lookup) against a
   key made by `loyalty keys` (a hash, a cached lookup in Postgres): the cost of authentication.

    .venv/bin/python -m bench.privacy_latency [--rate 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from bench.http_load import Load, run_load
from bench.stack import auth, bench_env, wait_ready
from localinfra.process import reserved_ports
from services.access import store
from services.migrations import migrate, schema_options
from services.personal_data.crypto import MasterKey


def figures(name: str, load: Load) -> str:
    cuts = statistics.quantiles(load.latencies, n=100, method="inclusive")
    return (
        f"{name:<44} p50 {cuts[49] * 1000:6.1f} ms  p99 {cuts[98] * 1000:6.1f} ms  "
        f"statuses {dict(load.statuses)}  no answer {sum(load.errors.values())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with bench_env() as env, reserved_ports(2) as (ledger_port, read_port):
        env = {
            **env,
            "LOYALTY_LEDGER_PORT": str(ledger_port),
            "LOYALTY_READ_PORT": str(read_port),
            "LOYALTY_MASTER_KEY": MasterKey.generate("bench").text(),
        }
        log_path = Path(f"/tmp/bench-privacy-{os.getpid()}.log")
        log = open(log_path, "wb")  # noqa: SIM115
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", name],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for name in ("processor", "projector", "ledger-api", "read-api")
        ]
        try:
            wait_ready(
                f"http://127.0.0.1:{ledger_port}",
                f"http://127.0.0.1:{read_port}",
                servers=children,
                log=log_path,
            )
            requests = int(args.rate * args.seconds)

            def purchase(i: int) -> tuple[str, str, bytes]:
                body = {
                    "type": "purchase",
                    "purchase_id": f"o-{i}",
                    "member_id": f"buyer-{i}",
                    "amount": "100.00",
                    "currency": "CNY",
                    "occurred_at": "2026-11-22T10:00:00Z",
                }
                return "POST", "/v1/purchases", json.dumps(body).encode()

            def enrolment(i: int) -> tuple[str, str, bytes]:
                profile = {
                    "name": f"Member {i}",
                    "phone": f"138{i:08d}",
                    "email": f"member{i}@example.com",
                    "birthday": "1990-05-17",
                }
                return (
                    "POST",
                    "/v1/members",
                    json.dumps({"member_id": f"joiner-{i}", "profile": profile}).encode(),
                )

            # Warm up: the processor joins its group, connections open.
            asyncio.run(run_load("127.0.0.1", ledger_port, 20, 2, lambda i: purchase(10**6 + i), auth(env)))
            plain = asyncio.run(
                run_load("127.0.0.1", ledger_port, args.rate, args.seconds, purchase, auth(env))
            )
            sealed = asyncio.run(
                run_load("127.0.0.1", ledger_port, args.rate, args.seconds, enrolment, auth(env))
            )

            url = env["LOYALTY_DATABASE_URL"]
            migrate(url, store.PRIVATE_SCHEMA, "services.access")
            with psycopg.connect(url, options=schema_options(store.PRIVATE_SCHEMA)) as conn:
                token = store.create(conn, "bench reader", ["read"]).token

            def read(i: int) -> tuple[str, str, None]:
                return "GET", f"/v1/members/joiner-{i % requests}", None

            time.sleep(2)  # the projector catches up with the enrolments
            bootstrap = asyncio.run(
                run_load("127.0.0.1", read_port, args.rate, args.seconds, read, auth(env))
            )
            keyed = asyncio.run(
                run_load(
                    "127.0.0.1",
                    read_port,
                    args.rate,
                    args.seconds,
                    read,
                    {"Authorization": f"Bearer {token}"},
                )
            )
        finally:
            for child in children:
                child.terminate()
                child.wait(timeout=30)
        print(f"{requests} requests each, at {args.rate:.0f}/s for {args.seconds:.0f} s")
        print(figures("POST /v1/purchases (new member, no profile)", plain))
        print(figures("POST /v1/members (data key + 4 sealed fields)", sealed))
        print(figures("GET /v1/members/{id}, bootstrap key", bootstrap))
        print(figures("GET /v1/members/{id}, stored key (cached)", keyed))


if __name__ == "__main__":
    main()
