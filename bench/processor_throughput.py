"""Sustained purchases per second through the processor, against a bare transactional loop.

Loads N purchases into the inbound topic, then times the processors (each its own process) from
a warm-up after the group's first committed input offset (joins and the rebalance that follows
them) until every purchase is committed as events. The same backlog through a bare
consume-produce-commit loop (no decisions) gives this machine's ceiling.

    .venv/bin/python -m bench.processor_throughput [--purchases 100000] [--members 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from bench.processes import cpu_seconds
from bench.stack import bench_env
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics


def load(settings: LedgerSettings, topic: str, purchases: int, members: int, days: float = 0) -> None:
    """Purchases `o-0`, `o-1`, ... in turn for members `m-0` .. `m-{members - 1}`; all on one fixed
    date, or with `days`, dated in order over the `days` before now (one every days / purchases)."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024
    )
    first, step = datetime.now(UTC) - timedelta(days=days), timedelta(days=days) / max(purchases, 1)
    for index in range(purchases):
        occurred_at = (
            (first + index * step).strftime("%Y-%m-%dT%H:%M:%SZ") if days else "2026-11-22T10:00:00Z"
        )
        producer.send(topic, *purchase(index, members, occurred_at))
    producer.flush()
    producer.close()


def purchase(index: int, members: int, occurred_at: str) -> tuple[bytes, bytes]:
    """Purchase `o-{index}` of member `m-{index % members}`: the inbound record's value and key."""
    member = f"m-{index % members}"
    value = {
        "type": "purchase",
        "purchase_id": f"o-{index}",
        "member_id": member,
        "amount": f"{10 + index % 990}.{index % 100:02d}",
        "currency": "CNY",
        "occurred_at": occurred_at,
        "channel": "store",
        "items": [{"sku": "A1", "category": "beauty", "quantity": 1, "amount": "10.00"}],
    }
    return json.dumps(value).encode(), member.encode()


def committed_total(admin: KafkaAdminClient, group: str, topic: str) -> int:
    offsets = admin.list_group_offsets(group).get(group, {})
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def time_until_consumed(
    settings: LedgerSettings,
    group: str,
    topic: str,
    total: int,
    warmup: float,
    processes: Sequence[subprocess.Popen[bytes]] = (),
) -> float:
    """Seconds per `total` records, sustained: measured from `warmup` seconds after the group's first
    committed offset (start-up rebalances are not throughput) until all of them are committed.
    One of `processes` exiting meanwhile is an error (it would never finish)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)

    def committed(pause: float) -> int:
        time.sleep(pause)
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"a processor exited ({process.returncode}) before the backlog was consumed"
                )
        return committed_total(admin, group, topic)

    try:
        while committed(0.05) == 0:
            pass
        time.sleep(warmup)
        started, first, cpu = time.monotonic(), committed(0), cpu_seconds(p.pid for p in processes)
        if first >= total:
            raise RuntimeError("the backlog was consumed within the warm-up: use more --purchases")
        while (done := committed(0.1)) < total:
            pass
        if processes:
            spent = (cpu_seconds(p.pid for p in processes) - cpu) / max(done - first, 1)
            print(f"processor CPU: {spent * 1e6:,.0f} us per purchase", flush=True)
        return (time.monotonic() - started) * total / max(done - first, 1)
    finally:
        admin.close()


def bare_consumer(settings: LedgerSettings, source: str, group: str, **options: Any) -> KafkaConsumer:
    """A bare loop's consumer: a group of its own, committed records only, offsets its loop's."""
    return KafkaConsumer(
        source,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **options,
    )


def bare_loop(settings: LedgerSettings, source: str, total: int) -> float:
    """Poll up to 2,000 records, copy them to the (unused) DLQ topic, commit offsets: no other work."""
    group, sink = f"bare-{uuid.uuid4().hex[:6]}", settings.topic_dlq
    consumer = bare_consumer(settings, source, group, auto_offset_reset="earliest")
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, transactional_id=group, linger_ms=5, batch_size=256 * 1024
    )
    producer.init_transactions()
    moved, started = 0, None
    while moved < total:
        batch = consumer.poll(timeout_ms=500, max_records=2000)
        if not batch:
            continue
        started = started or time.monotonic()
        producer.begin_transaction()
        for records in batch.values():
            for record in records:
                producer.send(sink, key=record.key, value=record.value, partition=record.partition)
            moved += len(records)
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in batch.items()}
        producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
        producer.commit_transaction()
    elapsed = time.monotonic() - (started or time.monotonic())
    consumer.close()
    producer.close()
    return total / elapsed


def loaded(purchases: int, members: int) -> tuple[LedgerSettings, float]:
    """This run's topics, `purchases` loaded onto the inbound one, and the bare loop's ceiling
    over them (records/s), printed."""
    settings = LedgerSettings()
    ensure_topics(settings)
    print(f"loading {purchases} purchases for {members} members ...", flush=True)
    load(settings, settings.topic_purchases, purchases, members)
    ceiling = bare_loop(settings, settings.topic_purchases, purchases)
    print(f"bare transactional loop: {ceiling:,.0f} records/s", flush=True)
    return settings, ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=5_000)
    parser.add_argument("--processors", type=int, default=1, help="instances in the group, each a process")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the first commit not timed")
    args = parser.parse_args()
    with bench_env() as env:
        os.environ.update(env)  # the processes it starts and these settings read the same
        settings, ceiling = loaded(args.purchases, args.members)
        log = open(f"/tmp/bench-processor-{os.getpid()}.log", "wb")  # noqa: SIM115
        processors = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", "processor"],
                env={**os.environ, **env, "LOYALTY_PROCESSOR_INSTANCE": str(instance)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for instance in range(args.processors)
        ]
        try:
            seconds = time_until_consumed(
                settings,
                settings.processor_group,
                settings.topic_purchases,
                args.purchases,
                args.warmup,
                processors,
            )
        finally:
            for processor in processors:
                processor.terminate()
                processor.wait(timeout=30)
        rate = args.purchases / seconds
        print(
            f"processor: {rate:,.0f} purchases/s ({args.purchases} purchases in {seconds:.1f} s, "
            f"{rate / ceiling:.0%} of the bare loop)",
            flush=True,
        )


if __name__ == "__main__":
    main()
