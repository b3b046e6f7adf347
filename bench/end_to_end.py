"""Purchases from the inbound topic to settled balances, through `loyalty run` as a user starts it.

Starts `loyalty run` on ports and a state directory of its own (local Kafka and Postgres
included), waits for its banner (both APIs ready), publishes N purchases over M members dated
over the last 300 days, and times until the processor has consumed every one and the
projector's checkpoints reach the end of the events topic. The bare transactional loop over the
same records, in the same run, gives this machine's ceiling.

    .venv/bin/python -m bench.end_to_end [--purchases 60000] [--members 1000]
"""

from __future__ import annotations

import argparse
import time

import psycopg
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from bench.processor_throughput import bare_loop, committed_total, load
from bench.stack import RunningStack, loyalty_run
from services.ledger.settings import LedgerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=60_000)
    parser.add_argument("--members", type=int, default=1_000)
    args = parser.parse_args()
    with loyalty_run() as stack:
        measure(args.purchases, args.members, stack)


def measure(purchases: int, members: int, stack: RunningStack) -> None:
    settings = LedgerSettings(kafka_bootstrap=stack.kafka)
    started = time.monotonic()
    load(settings, settings.topic_purchases, purchases, members, days=300)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed")
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        while committed_total(admin, settings.processor_group, settings.topic_purchases) < purchases:
            time.sleep(0.2)
        decided = time.monotonic() - started
        events = reader.partitions_for_topic(settings.topic_events) or set()
        end = sum(reader.end_offsets([TopicPartition(settings.topic_events, p) for p in events]).values())
        query = "SELECT coalesce(sum(next_offset), 0) FROM projector_checkpoints"
        while (row := db.execute(query).fetchone()) is None or row[0] < end:
            time.sleep(0.2)
        settled = time.monotonic() - started
    admin.close()
    reader.close()
    print(
        f"decided:  {purchases / decided:,.0f} purchases/s ({decided:.1f} s from the first sent)", flush=True
    )
    print(f"settled:  {purchases / settled:,.0f} purchases/s ({settled:.1f} s, every balance projected)")
    ceiling = bare_loop(settings, settings.topic_purchases, purchases)
    print(f"bare transactional loop, same run: {ceiling:,.0f} records/s", flush=True)


if __name__ == "__main__":
    main()
