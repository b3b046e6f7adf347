"""The processor alone at a steady input rate: its CPU per purchase, and its transactions.

A backlog (`bench.processor_throughput`) shows what a purchase costs; a steady rate shows what a
transaction costs, as the processor then commits as soon as anything has arrived. Starts one
processor (its debug log on), publishes purchases to the inbound topic at `--rate` for an
uncounted warm-up and then for `--seconds`, and prints the processor's CPU per purchase (user
and system, from `/proc`), the transactions it committed and what each took, from its
`batch committed` lines: records, deciding, waiting for the input offsets, the commit (flush and
EndTxn), writing the local store.

    .venv/bin/python -m bench.processor_rate [--rate 500] [--seconds 20] [--members 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from kafka import KafkaProducer

from bench.processes import cpu_seconds
from bench.processor_throughput import purchase
from bench.stack import bench_env
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics

WARMUP_S = 8.0
PHASES = ("records", "decide_ms", "offsets_ms", "commit_ms", "store_ms")


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
        processor = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "processor"],
            env={**os.environ, "LOYALTY_LOG_LEVEL": "DEBUG"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
        try:
            warmed = publish(producer, settings.topic_purchases, 0, args.rate, WARMUP_S, args.members)
            time.sleep(1)
            logged, cpu = os.path.getsize(log.name), cpu_seconds([processor.pid])
            sent = publish(producer, settings.topic_purchases, warmed, args.rate, args.seconds, args.members)
            time.sleep(1)  # the last of them decided
            spent = cpu_seconds([processor.pid]) - cpu
        finally:
            producer.close()
            processor.terminate()
            processor.wait(timeout=30)
        with open(log.name, "rb") as lines:
            lines.seek(logged)
            batches = [json.loads(line) for line in lines if b'"batch committed"' in line]
    purchases = sent - warmed
    print(
        f"{purchases} purchases at {args.rate}/s: processor CPU "
        f"{spent / purchases * 1e6:,.0f} us a purchase; "
        f"{len(batches)} transactions ({len(batches) / args.seconds:.0f}/s), "
        f"{spent / max(len(batches), 1) * 1000:.2f} ms of CPU each"
    )
    for phase in PHASES:
        values = [batch[phase] for batch in batches]
        if values:
            mean, p50 = statistics.mean(values), statistics.median(values)
            print(f"  {phase:>10}: mean {mean:6.2f}  p50 {p50:6.2f}  max {max(values):6.2f}")


if __name__ == "__main__":
    main()
