"""Events per second of `loyalty replay` on a log of N events (target: >= 30,000 events/s).

Setup, not timed: N events across M members are published and projected by the live projector.
Timed: `loyalty replay --into <schema>` from start to finish (rebuild from offset 0, checksums of
both schemas, the comparison); the replay's own line gives the rebuild alone.

    .venv/bin/python -m bench.replay_throughput [--events 200000] [--members 20000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.backlog import fresh_database, load, log_end, project
from bench.stack import bench_env
from services import cli
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from services.migrations import migrate

TARGET = 30_000  # events/s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=20_000)
    args = parser.parse_args()
    with bench_env() as env:
        os.environ.update(env)
        settings = LedgerSettings()
        ensure_topics(settings)
        load(settings.kafka_bootstrap, settings.topic_events, args.events, args.members)
        total = log_end(settings.kafka_bootstrap, settings.topic_events)
        with fresh_database(env["LOYALTY_DATABASE_URL"]) as url:
            migrate(url)
            project(env, url, settings.topic_events, total, Path(f"/tmp/bench-replay-{os.getpid()}.log"))
            os.environ["LOYALTY_DATABASE_URL"] = url
            started = time.monotonic()
            code = cli.main(["replay", "--into", "bench_replay"])
            seconds = time.monotonic() - started
        print(
            f"replay: exit {code}, {total} events in {seconds:.1f} s end to end = {total / seconds:,.0f} "
            f"events/s (target >= {TARGET:,} events/s)"
        )


if __name__ == "__main__":
    main()
