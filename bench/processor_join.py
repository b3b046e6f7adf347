"""What purchases see while a second processor joins the group under load.

Loads a history (N purchases over M members, on the inbound topic), has one processor settle it,
then sends purchases open-loop at --rate for --seconds and starts a second processor --join-at
seconds in. Each purchase's latency runs from its send to the moment a read_committed reader of
the events topic sees its PurchaseRecorded (what the projector sees). It prints, per 5 s window
of send time from the join, p50/p99/max apart for the partitions the first processor kept and
the ones that moved to the second, and the longest time any kept partition went without a
decision. A bare transactional loop of the same run gives the figures a scale.

    .venv/bin/python -m bench.processor_join [--rate 200] [--seconds 60] [--join-at 15]
        [--purchases 30000] [--members 2000]

The processors' logs (with the group coordinator's lines and each batch committed) stay in
/tmp/bench-processor-join-<pid>/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from bench.processor_throughput import loaded, time_until_consumed
from bench.serving_load import spread
from bench.stack import bench_env
from services.ledger.partitioning import partition_for
from services.ledger.settings import LedgerSettings

WINDOW_S = 5


def start_processor(instance: str, log: Path) -> subprocess.Popen[bytes]:
    """A processor process, its log with the group coordinator's lines and each batch committed."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.processor_restart", "--run-processor"],
            env={**os.environ, "LOYALTY_PROCESSOR_INSTANCE": instance, "LOYALTY_LOG_LEVEL": "DEBUG"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def assigned(log: Path) -> list[set[int]]:
    """Each "partitions assigned" of the log: the partitions newly assigned."""
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and (entry := json.loads(line)).get("msg") == "partitions assigned":
            found.append(set(entry["partitions"]))
    return found


class Decisions(threading.Thread):
    """Follows the events topic: when each purchase's PurchaseRecorded was first seen (monotonic)."""

    def __init__(self, settings: LedgerSettings) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self._stop_event = threading.Event()
        self._consumer = KafkaConsumer(
            settings.topic_events,
            bootstrap_servers=settings.kafka_bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        while not self._consumer.assignment():
            self._consumer.poll(timeout_ms=200)
        for tp in self._consumer.assignment():  # the end now, before any purchase is sent
            self._consumer.position(tp)

    def run(self) -> None:
        while not self._stop_event.is_set():
            for records in self._consumer.poll(timeout_ms=200).values():
                now = time.monotonic()
                for record in records:
                    event = json.loads(record.value)
                    if event["type"] == "PurchaseRecorded":
                        self.seen.setdefault(event["data"]["purchase_id"], now)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        self._consumer.close()


def send(settings: LedgerSettings, rate: int, seconds: float, members: int) -> dict[str, tuple[float, str]]:
    """Purchases open-loop at `rate`: purchase id -> (sent at, monotonic; member id)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=1)
    sent: dict[str, tuple[float, str]] = {}
    started = time.monotonic()
    for index in range(int(rate * seconds)):
        due = started + index / rate
        time.sleep(max(0.0, due - time.monotonic()))
        member, purchase_id = f"m-{index * 7919 % members}", f"live-{index}"
        value = {
            "type": "purchase",
            "purchase_id": purchase_id,
            "member_id": member,
            "amount": "25.00",
            "currency": "CNY",
            "occurred_at": "2026-11-22T10:00:00Z",
            "channel": "store",
            "items": [{"sku": "A1", "category": "beauty", "quantity": 1, "amount": "25.00"}],
        }
        sent[purchase_id] = (time.monotonic(), member)
        producer.send(settings.topic_purchases, key=member.encode(), value=json.dumps(value).encode())
    producer.flush()
    producer.close()
    return sent


def report(sent: dict[str, tuple[float, bool]], seen: dict[str, float], joined: float) -> None:
    """`sent`: purchase id -> (sent at, whether its partition moved)."""
    print(f"by send time from the join ({WINDOW_S} s windows): decided, then p50/p99/max (ms)")
    rows: dict[tuple[int, bool], list[float]] = {}
    for purchase_id, (at, moved) in sent.items():
        if purchase_id in seen:
            window = int((at - joined) // WINDOW_S) * WINDOW_S
            rows.setdefault((window, moved), []).append((seen[purchase_id] - at) * 1000)
    for window, moved in sorted(rows):
        latencies = sorted(rows[(window, moved)])
        print(f"  {window:+4d} s  {'moved' if moved else 'kept '}  {len(latencies):5d}  {spread(latencies)}")
    if missing := sum(purchase_id not in seen for purchase_id in sent):
        print(f"  {missing} purchases not decided by the end")
    kept = sorted(seen[p] for p, (_, moved) in sent.items() if p in seen and not moved)
    if len(kept) > 1:
        longest = max(later - earlier for earlier, later in itertools.pairwise(kept))
        print(f"  longest time without a decision in the kept partitions: {longest * 1000:,.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--join-at", type=float, default=15)
    parser.add_argument("--purchases", type=int, default=30_000)
    parser.add_argument("--members", type=int, default=2_000)
    args = parser.parse_args()
    logs = Path(f"/tmp/bench-processor-join-{os.getpid()}")
    logs.mkdir(exist_ok=True)
    with bench_env() as env:
        os.environ.update(env)
        settings, _ = loaded(args.purchases, args.members)
        first = start_processor("first", logs / "first.log")
        second = None
        try:
            seconds = time_until_consumed(
                settings, settings.processor_group, settings.topic_purchases, args.purchases, 1.0, [first]
            )
            print(
                f"history settled by one processor: {args.purchases / seconds:,.0f} purchases/s", flush=True
            )
            decisions = Decisions(settings)
            decisions.start()
            joined = time.monotonic() + args.join_at
            joining = args.join_at < args.seconds  # no second processor past --seconds

            def join() -> None:
                nonlocal second, joined
                time.sleep(args.join_at)
                joined = time.monotonic()
                second = start_processor("second", logs / "second.log")

            joiner = threading.Thread(target=join, daemon=True)
            if joining:
                joiner.start()
            sent = send(settings, args.rate, args.seconds, args.members)
            deadline = time.monotonic() + 60
            while len(decisions.seen) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.5)
            decisions.stop()
            if joining:
                joiner.join()
            moved = set().union(*assigned(logs / "second.log")) if second else set()
            before = [sorted(a) for a in assigned(logs / "first.log")]
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(timeout=30)
        print(f"moved to the second processor: {sorted(moved)}; the first one's assignments: {before}")
        by_partition = {
            purchase_id: (at, partition_for(member, settings.partitions) in moved)
            for purchase_id, (at, member) in sent.items()
        }
        report(by_partition, decisions.seen, joined)


if __name__ == "__main__":
    main()
