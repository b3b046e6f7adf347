"""Events applied per second by the projector, on a backlog, from an empty database.

Publishes N events across M members to the events topic (setup, not timed; see bench/backlog.py),
then times `loyalty projector` (its own process) from its launch until its checkpoints reach
the end of the log, and prints the per-batch figures the projector records with each checkpoint.

    .venv/bin/python -m bench.projector_throughput [--events 200000] [--members 20000] [--batch-max 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from bench.backlog import fresh_database, load, log_end, project, table_rows
from bench.stack import bench_env
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from services.migrations import migrate
from services.projector.checksums import READ_MODEL_TABLES

TARGET = 10_000  # events/s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--batch-max", type=int, default=None, help="projector_batch_max (default: its own)")
    args = parser.parse_args()
    with bench_env() as env:
        if args.batch_max is not None:
            env = {**env, "LOYALTY_PROJECTOR_BATCH_MAX": str(args.batch_max)}
        os.environ.update(env)
        settings = LedgerSettings()
        ensure_topics(settings)
        sent = load(settings.kafka_bootstrap, settings.topic_events, args.events, args.members)
        total = log_end(settings.kafka_bootstrap, settings.topic_events)
        with fresh_database(env["LOYALTY_DATABASE_URL"]) as url:
            migrate(url)
            log = Path(f"/tmp/bench-projector-{os.getpid()}.log")
            run = project(env, url, settings.topic_events, total, log)
            rows = table_rows(url, READ_MODEL_TABLES)
        steady = (total - run.first_batch) / max(run.seconds - run.startup, 1e-9)
        batch = os.environ.get("LOYALTY_PROJECTOR_BATCH_MAX", "5000 (default)")
        print(f"events {sent}  members {args.members}  partitions {settings.partitions}  batch max {batch}")
        print(
            f"projector: {total / run.seconds:,.0f} events/s ({total} events in {run.seconds:.1f} s from "
            f"launch; target >= {TARGET:,} events/s)"
        )
        print(
            f"  after its first batch: {steady:,.0f} events/s (start-up and group join took "
            f"{run.startup:.1f} s)"
        )
        print("  projector_checkpoints (a batch over k partitions counts in each; its apply_seconds, from")
        print("  decode to the last write before commit, are shared among them by records):")
        for row in run.checkpoints:
            print(
                f"    partition {row.partition}: {row.batches} batches, {row.records} records "
                f"({row.records / max(row.batches, 1):,.0f}/batch), apply_seconds {row.apply_seconds:.2f}"
            )
        records = sum(row.records for row in run.checkpoints)
        seconds = sum(row.apply_seconds for row in run.checkpoints)
        print(f"    all: {records} records, apply_seconds {seconds:.2f}")
        if run.polls:
            sizes = [records for records, _, _, _ in run.polls]
            times = sorted(seconds for _, _, _, seconds in run.polls)
            busy = sum(times)
            print(
                f"  polls applied (projector log): {len(run.polls)}, {statistics.mean(sizes):,.0f} records "
                f"each (max {max(sizes)}), {statistics.median(times) * 1000:.0f} ms median "
                f"(max {times[-1] * 1000:.0f} ms) decode to commit; {busy:.1f} s in all of the "
                f"{run.seconds:.1f} s"
            )
        print(f"  events applied {run.applied}, duplicates {run.duplicates}")
        if run.applied != total:
            print(f"  WARNING: {total - run.applied} of the {total} events were not applied; see {log}")
        print("  rows: " + "  ".join(f"{table} {count}" for table, count in rows.items()))
        print(f"  projector log: {log}")


if __name__ == "__main__":
    main()
