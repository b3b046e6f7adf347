"""The processor alone at a steady input rate: its CPU per purchase, and its transactions.

A backlog (`bench.processor_throughput`) shows what a purchase costs; a steady rate shows what a
transaction costs, as the processor then commits as soon as anything has arrived. Starts one
processor (its debug log on), publishes purchases to the inbound topic at `--rate` for an
uncounted warm-up and then for `--seconds`, and prints the processor's CPU per purchase (user
and system, from `/proc`), the transactions it committed and what each took, from its
`batch committed` lines: records, deciding, waiting for the input offsets, the commit (flush and
EndTxn), writing the local store. Then, in the same run, the same rate through a bare
consume-produce loop paced as the processor is (a transaction at most every
`processor_transaction_interval_ms`, six records out per record in, sent as the processor sends
them, no decisions): what the transactions alone cost here.

    .venv/bin/python -m bench.processor_rate [--rate 500] [--seconds 20] [--members 2000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType

from kafka import KafkaProducer
from kafka.structs import OffsetAndMetadata

from bench.processes import cpu_seconds
from bench.processor_throughput import bare_consumer, purchase
from bench.stack import bench_env
from services.kafka_compat import NO_CLIENT_METRICS, install_fixes, start_sending_offsets
from services.ledger.processor import transaction_records
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics

WARMUP_S = 8.0
PHASES = ("records", "decide_ms", "offsets_ms", "commit_ms", "store_ms")
# Records a purchase writes: two events and about four changelog records (README, "Benchmarks").
RECORDS_OUT = 6


def publish(producer: KafkaProducer, topic: str, first: int, rate: int, seconds: float, members: int) -> int:
    """Purchases `first`, `first + 1`, ... at `rate` a second for `seconds`, each sent at once:
    the index after the last."""
    started, index = time.monotonic(), first
    while (elapsed := time.monotonic() - started) < seconds:
        due = first + int(elapsed * rate)
        while index < due:
            producer.send(topic, *purchase(index, members, "2026-11-22T10:00:00Z"))
            index += 1
        producer.flush()
        time.sleep(0.001)
    return index


def paced_bare_loop(settings: LedgerSettings, transactions: Synchronized[int], stop: EventType) -> None:
    """Copy what arrives on the purchases topic, RECORDS_OUT times each, to the (unused) DLQ
    topic in transactions paced as the processor's, counting them, until `stop`."""
    install_fixes()  # the processor's clients, as the processor makes them
    group = f"bare-{os.getpid()}"
    consumer = bare_consumer(
        settings, settings.topic_purchases, group, auto_offset_reset="latest", **NO_CLIENT_METRICS
    )
    records = transaction_records(settings, group)
    producer = records.producer
    producer.init_transactions()
    interval_s, began = settings.processor_transaction_interval_ms / 1000, 0.0
    while not stop.is_set():
        time.sleep(max(0.0, began + interval_s - time.monotonic()))
        batch = consumer.poll(timeout_ms=200, max_records=2000)
        if not batch:
            continue
        began = time.monotonic()
        records.begin()
        offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in batch.items()}
        sent = start_sending_offsets(producer, offsets, consumer.group_metadata())
        for read in batch.values():
            for record in read:
                for _ in range(RECORDS_OUT):
                    records.send(settings.topic_dlq, record.partition, record.key, record.value)
        sent.wait()
        producer.flush()
        producer.commit_transaction()
        transactions.value += 1
    consumer.close()
    producer.close()


def bare(
    settings: LedgerSettings, producer: KafkaProducer, first: int, rate: int, seconds: float, members: int
) -> None:
    """The paced bare loop (a process of its own) over purchases published at `rate` after a
    warm-up; prints its CPU a purchase and a transaction."""
    spawn = multiprocessing.get_context("spawn")  # not a fork of this process and its clients' threads
    transactions, stop = spawn.Value("q", 0), spawn.Event()
    loop = spawn.Process(target=paced_bare_loop, args=(settings, transactions, stop))
    loop.start()
    try:
        warmed = publish(producer, settings.topic_purchases, first, rate, WARMUP_S, members)
        time.sleep(1)
        cpu, committed = cpu_seconds([loop.pid or 0]), transactions.value
        sent = publish(producer, settings.topic_purchases, warmed, rate, seconds, members)
        time.sleep(1)  # the last of them copied
        spent, committed = cpu_seconds([loop.pid or 0]) - cpu, transactions.value - committed
    finally:
        stop.set()
        loop.join(timeout=30)
        if loop.is_alive():
            loop.terminate()
    if loop.exitcode != 0 or not committed:
        raise SystemExit(f"the bare loop failed (exit code {loop.exitcode}, {committed} transactions)")
    print(
        f"bare loop paced alike, same run: {spent / (sent - warmed) * 1e6:,.0f} us a purchase; "
        f"{committed} transactions, {spent / committed * 1000:.2f} ms of CPU each"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--members", type=int, default=2_000)
    args = parser.parse_args()
    with bench_env() as env, tempfile.NamedTemporaryFile(prefix="bench-processor-rate-") as log:
        os.environ.update(env)
        settings = LedgerSettings()
        ensure_topics(settings)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
        try:
            sent = processor_at(settings, producer, args.rate, args.seconds, args.members, log.name)
            bare(settings, producer, sent, args.rate, args.seconds, args.members)
        finally:
            producer.close()


def processor_at(
    settings: LedgerSettings, producer: KafkaProducer, rate: int, seconds: float, members: int, log: str
) -> int:
    """One processor (its debug log to `log`) under purchases at `rate` after a warm-up; prints
    its CPU and its transactions' phases, and returns the index after the last purchase sent."""
    with open(log, "wb") as output:
        processor = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "processor"],
            env={**os.environ, "LOYALTY_LOG_LEVEL": "DEBUG"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        warmed = publish(producer, settings.topic_purchases, 0, rate, WARMUP_S, members)
        time.sleep(1)
        logged, cpu = os.path.getsize(log), cpu_seconds([processor.pid])
        sent = publish(producer, settings.topic_purchases, warmed, rate, seconds, members)
        time.sleep(1)  # the last of them decided
        spent = cpu_seconds([processor.pid]) - cpu
    finally:
        processor.terminate()
        processor.wait(timeout=30)
    with open(log, "rb") as lines:
        lines.seek(logged)
        batches = [json.loads(line) for line in lines if b'"batch committed"' in line]
    purchases = sent - warmed
    print(
        f"{purchases} purchases at {rate}/s: processor CPU "
        f"{spent / purchases * 1e6:,.0f} us a purchase; "
        f"{len(batches)} transactions ({len(batches) / seconds:.0f}/s), "
        f"{spent / max(len(batches), 1) * 1000:.2f} ms of CPU each",
        flush=True,
    )
    for phase in PHASES:
        values = [batch[phase] for batch in batches]
        if values:
            mean, p50 = statistics.mean(values), statistics.median(values)
            print(f"  {phase:>10}: mean {mean:6.2f}  p50 {p50:6.2f}  max {max(values):6.2f}", flush=True)
    return sent


if __name__ == "__main__":
    main()
