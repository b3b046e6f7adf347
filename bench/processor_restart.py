"""How soon a restarted processor is ready: with its local state store, and without it.

Loads N purchases for M members, dated in order over the last 300 days (inside the 365-day
refund window, so every purchase stays in its member's state), and runs one processor until the
group has committed every purchase (its throughput). Then it stops the processor with SIGTERM
and starts it again twice with the same instance name: once with its local store (only the
changelog's tail to read), once with the store deleted (a full restore from the compacted
changelog). For each start it prints the time from process start to the last "partition
resumed" line of the assignment (ready: restored, and its accounts read into memory for at most
LOYALTY_PROCESSOR_WARM_S), each partition's restore, and the group joins and
assignments seen (more than one of either: the instance lost its membership). The changelog's
size and a bare transactional loop, measured in the same run, give the figures a scale.

    .venv/bin/python -m bench.processor_restart [--purchases 1000000] [--members 50000]

The processor runs as `services.cli processor` with the group coordinator's own log lines
(kafka-python's `kafka.coordinator`, INFO) added to its JSON log: joins, generations, lost
memberships. The logs stay in /tmp/bench-processor-restart-<pid>/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from bench.processor_throughput import bare_loop, committed_total, load, time_until_consumed
from bench.stack import STATE_ROOT, bench_env
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics

INSTANCE = "bench-restart"
# The coordinator's usual lines for one join; any other line of it is shown.
# (the joins and assignments themselves are counted), and so is a line of trouble of any logger.
JOIN_LINES = (
    "Discovered coordinator",
    "(Re-)joining group",
    "Received member id",  # the broker's first answer to a new member (KIP-394), then it joins
    "Successfully joined group",
    "Elected group leader",
    "Setting newly assigned partitions",
    "Revoking previously assigned partitions",
    "Leaving consumer group",
    "LeaveGroup request",
)
# Lines that mean the member was dropped by the group or its generation went stale.
LOST = (
    "lost membership",
    "unknown member",
    "unknownmember",
    "illegalgeneration",
    "generation id is not current",
    "session expired",
    "commitfailed",
    "rebalancing; rejoining",
    "marking the coordinator dead",
    "fenced",
    "transaction failed",
)
PROCESSOR_LINES = (
    "processor started",
    "processor stopped",
    "partitions assigned",
    "partition restored",
    "partition resumed",
)


class LogTail:
    """The JSON lines a process has written to its log so far; other lines come as level 'raw'."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        lines = []
        for raw in complete:
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if not isinstance(line, dict):
                line = {"level": "raw", "msg": raw.decode(errors="replace")}
            lines.append(line)
        return lines

    def close(self) -> None:
        self._file.close()


@dataclass
class Run:
    """What one processor process logged, read as it goes."""

    log: Path
    started: float  # wall clock, just before the process was spawned
    process: subprocess.Popen[bytes]
    assignments: list[tuple[float, list[int]]] = field(default_factory=list)
    restored: dict[int, dict[str, Any]] = field(default_factory=dict)  # of the latest assignment
    restored_at: float | None = None  # every partition of the latest assignment restored
    resumed: dict[int, dict[str, Any]] = field(default_factory=dict)  # of the latest assignment
    ready_at: float | None = None  # every partition of the latest assignment resumed (warmed)
    joins: list[tuple[float, str]] = field(default_factory=list)  # (when, generation)
    # A later assignment that came while the one before it was being restored: (when, restored, of).
    interrupted: list[tuple[float, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stop_requested: float | None = None
    stop_seconds: float | None = None
    _tail: LogTail | None = None
    _closed: bool = False

    def poll(self) -> None:
        if self._closed:
            return
        if self._tail is None:
            self._tail = LogTail(self.log)
        for line in self._tail.read():
            self._see(line)

    def _see(self, line: dict[str, Any]) -> None:
        msg = str(line.get("msg", ""))
        at = _wall(line)
        if msg == "partitions assigned":
            if self.assignments and self.ready_at is None:
                self.interrupted.append((at, len(self.restored), len(self.assignments[-1][1])))
            self.assignments.append((at, list(line.get("partitions", []))))
            self.restored, self.restored_at, self.resumed, self.ready_at = {}, None, {}, None
        elif msg in ("partition restored", "partition resumed"):
            partition = int(line["partition"])
            current = set(self.assignments[-1][1]) if self.assignments else set()
            if partition not in current:
                self.notes.append(self._describe(line, at, "(not in the latest assignment)"))
            elif msg == "partition restored":
                self.restored[partition] = line
                if set(self.restored) >= current:
                    self.restored_at = at
            else:
                self.resumed[partition] = line
                if set(self.resumed) >= current:
                    self.ready_at = at
        if msg.startswith("Successfully joined group"):
            generation = re.search(r"Generation (-?\d+)", msg)
            self.joins.append((at, generation.group(1) if generation else "?"))
        text = f"{msg} {line.get('exc', '')}".lower()
        if any(pattern in text for pattern in LOST):
            self.lost.append(self._describe(line, at))
        if msg in PROCESSOR_LINES or msg.startswith(JOIN_LINES):
            return
        if line.get("level") in ("warning", "error", "critical", "raw") or line.get("logger") is not None:
            self.notes.append(self._describe(line, at))

    def _describe(self, line: dict[str, Any], at: float, suffix: str = "") -> str:
        extra = {k: v for k, v in line.items() if k not in ("ts", "level", "logger", "msg", "exc")}
        when = f"+{at - self.started:.1f}s" if at else "       "
        stopping = " (after SIGTERM)" if self.stop_requested and at >= self.stop_requested else ""
        exc = f"\n        {line['exc'].splitlines()[-1]}" if line.get("exc") else ""
        return (
            f"{when} {line.get('level', '?')} {line.get('logger', '')}: {line.get('msg')} "
            f"{json.dumps(extra) if extra else ''}{suffix}{stopping}{exc}"
        )

    def stop(self) -> None:
        """SIGTERM, then wait for the process to exit (SIGKILL after 60 s)."""
        self.stop_requested = time.time()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.notes.append("did not exit within 60 s of SIGTERM: killed")
            self.process.kill()
            self.process.wait()
        self.stop_seconds = time.time() - self.stop_requested
        self.poll()
        self.close()

    def close(self) -> None:
        """Kill the process if it still runs; close the log."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._tail is not None:
            self._tail.close()
        self._closed = True


def _wall(line: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(line["ts"])).timestamp()
    except (KeyError, ValueError):
        return 0.0


def start_processor(log: Path) -> Run:
    """One processor process with the settings in os.environ, its output in `log`."""
    started = time.time()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.processor_restart", "--run-processor"],
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Run(log=log, started=started, process=process)


def run_processor() -> int:
    """`services.cli processor`, with the group coordinator's INFO lines in its log."""
    from services import cli

    # services.logs.configure sets "kafka" to ERROR; a level on the child logger overrides it.
    logging.getLogger("kafka.coordinator").setLevel(logging.INFO)
    return cli.main(["processor"])


def until_ready(run: Run, settle_s: float, timeout_s: float) -> None:
    """Until every partition of the latest assignment is restored and `settle_s` more have passed
    without a new assignment (a lost membership shows within a session timeout)."""
    deadline = time.time() + timeout_s
    while True:
        run.poll()
        if run.process.poll() is not None:
            raise RuntimeError(f"the processor exited ({run.process.returncode}); see {run.log}")
        if run.ready_at is not None and time.time() >= run.ready_at + settle_s:
            return
        if time.time() > deadline:
            raise RuntimeError(f"not ready within {timeout_s:.0f} s; see {run.log}")
        time.sleep(0.1)


@dataclass
class StoreSummary:
    keys: dict[int, int]  # live keys per partition
    positions: dict[int, int]  # the changelog offset each partition's copy reflects
    digest: str  # of every partition's records and due times


def store_summary(directory: Path) -> StoreSummary:
    """The local store's contents, read straight from its SQLite files (the processor is stopped)."""
    keys, positions, digest = {}, {}, hashlib.sha256()
    files = {int(path.stem.rsplit("-", 1)[1]): path for path in directory.glob("*.sqlite")}
    for partition, path in sorted(files.items()):
        db = sqlite3.connect(path)
        try:
            count = 0
            digest.update(f"partition {partition}\n".encode())
            for key, value in db.execute("SELECT key, value FROM records ORDER BY key"):
                digest.update(key.encode() + b"\0" + value + b"\n")
                count += 1
            for member, at in db.execute("SELECT member, at FROM due ORDER BY member"):
                digest.update(f"{member}\0{at}\n".encode())
            row = db.execute("SELECT value FROM meta WHERE name = 'position'").fetchone()
        finally:
            db.close()
        keys[partition], positions[partition] = count, int(row[0]) if row else 0
    return StoreSummary(keys, positions, digest.hexdigest()[:16])


def offsets(settings: LedgerSettings, topic: str) -> dict[int, tuple[int, int]]:
    """(first, end) offset of each partition; the end counts transaction markers too."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        first, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return {tp.partition: (first[tp], end[tp]) for tp in tps}
    finally:
        consumer.close()


def bytes_on_disk(topic: str, partition: int) -> int | None:
    """Size of a partition's segments when the broker is bench_env's own (its data under
    STATE_ROOT/bench-<pid>), None otherwise."""
    directory = STATE_ROOT / f"bench-{os.getpid()}" / "kafka" / "data" / f"{topic}-{partition}"
    if not directory.is_dir():
        return None
    return sum(path.stat().st_size for path in directory.glob("*.log"))


def report_restart(name: str, run: Run, before: StoreSummary, after: StoreSummary) -> float:
    """Print one restart's figures; returns the seconds from process start to ready."""
    assert run.ready_at is not None and run.restored_at is not None
    ready = run.ready_at - run.started
    assigned = run.assignments[-1][0] - run.started
    restored = run.restored_at - run.started
    cached = sum(int(line["cached"]) for line in run.resumed.values())
    print(f"restart {name}: ready {ready:.2f} s after process start", flush=True)
    print(
        f"  assigned {assigned:.2f} s after start; restored {restored - assigned:.2f} s after that; "
        f"{cached:,} accounts read into memory in the {ready - restored:.2f} s after that",
        flush=True,
    )
    total_records = 0
    for partition, line in sorted(run.restored.items()):
        records, seconds = int(line["records"]), float(line["seconds"])
        total_records += records
        print(
            f"  partition {partition}: {records:>10,} records in {seconds:7.2f} s "
            f"(from_scratch {str(line['from_scratch']).lower()})",
            flush=True,
        )
    if total_records and ready - assigned > 0:
        print(
            f"  {total_records:,} records read, {total_records / (ready - assigned):,.0f} records/s",
            flush=True,
        )
    print_group(run)
    same = after.digest == before.digest
    print(
        f"  local store after: {sum(after.keys.values()):,} keys, digest {after.digest} "
        f"({'same as' if same else 'DIFFERENT from'} the store before the restart, {before.digest})",
        flush=True,
    )
    print_notes(run)
    return ready


def print_group(run: Run) -> None:
    """The joins and assignments, and whether a restore was cut short or the membership lost."""
    joins = ", ".join(f"generation {g} at +{at - run.started:.2f} s" for at, g in run.joins) or "none logged"
    assignments = ", ".join(f"{p} at +{at - run.started:.2f} s" for at, p in run.assignments)
    print(f"  group: {len(run.joins)} join(s): {joins}", flush=True)
    print(f"  {len(run.assignments)} assignment(s): {assignments}", flush=True)
    for at, restored, of in run.interrupted:
        print(
            f"  a new assignment at +{at - run.started:.2f} s came while the one before it was restoring "
            f"({restored} of {of} partitions restored)",
            flush=True,
        )
    if run.lost:
        print(f"  lines that mean a lost membership or a failed transaction ({len(run.lost)}):", flush=True)
        for line in run.lost[:10]:
            print(f"    {line}", flush=True)
    print(
        f"  exactly one assignment: {'yes' if len(run.assignments) == 1 else 'NO'}; restore interrupted: "
        f"{'YES' if run.interrupted else 'no'}; membership-loss lines: {len(run.lost) or 'none'}",
        flush=True,
    )


def print_notes(run: Run) -> None:
    exit_text = f"exit {run.process.returncode}"
    print(f"  stopped by SIGTERM in {run.stop_seconds or 0:.2f} s ({exit_text}); log {run.log}", flush=True)
    if run.notes:
        print(f"  {len(run.notes)} other log line(s) of note:", flush=True)
        for note in run.notes[:30]:
            print(f"    {note}", flush=True)
        if len(run.notes) > 30:
            print(f"    ... {len(run.notes) - 30} more in {run.log}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=50_000)
    parser.add_argument("--days", type=float, default=300, help="purchases dated over the last DAYS days")
    parser.add_argument(
        "--bare-records",
        type=int,
        default=200_000,
        help="records through the bare loop (at most --purchases)",
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the first commit not timed")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds watched after ready")
    parser.add_argument("--timeout", type=float, default=1800.0, help="longest wait for a restart")
    parser.add_argument("--run-processor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_processor:
        sys.exit(run_processor())

    logs = Path(f"/tmp/bench-processor-restart-{os.getpid()}")
    logs.mkdir(parents=True, exist_ok=True)
    state_dir = STATE_ROOT / f"bench-restart-{os.getpid()}"
    runs: list[Run] = []
    with bench_env() as env:
        try:
            os.environ.update(env)  # the processes it starts and these settings read the same
            os.environ.update({"LOYALTY_STATE_DIR": str(state_dir), "LOYALTY_PROCESSOR_INSTANCE": INSTANCE})
            settings = LedgerSettings()
            store_dir = settings.state_dir / "processor" / settings.transactional_id
            ensure_topics(settings)
            print(
                f"loading {args.purchases:,} purchases for {args.members:,} members, "
                f"dated over the last {args.days:g} days ...",
                flush=True,
            )
            began = time.monotonic()
            load(settings, settings.topic_purchases, args.purchases, args.members, days=args.days)
            loading = time.monotonic() - began
            print(f"  loaded in {loading:.1f} s ({args.purchases / loading:,.0f}/s)", flush=True)
            bare = min(args.bare_records, args.purchases)
            ceiling = bare_loop(settings, settings.topic_purchases, bare)
            print(f"bare transactional loop: {ceiling:,.0f} records/s ({bare:,} records)", flush=True)

            first = start_processor(logs / "1-backlog.log")
            runs.append(first)
            seconds = time_until_consumed(
                settings,
                settings.processor_group,
                settings.topic_purchases,
                args.purchases,
                args.warmup,
                [first.process],
            )
            whole = time.time() - first.started
            rate = args.purchases / seconds
            print(
                f"processor: {rate:,.0f} purchases/s sustained ({seconds:.1f} s per {args.purchases:,} after "
                f"a {args.warmup:g} s warm-up; {rate / ceiling:.0%} of the bare loop); {whole:.1f} s from "
                f"process start to every purchase committed",
                flush=True,
            )
            first.stop()
            print_group(first)
            print_notes(first)

            events_before = sum(end for _, end in offsets(settings, settings.topic_events).values())
            kept = store_summary(store_dir)
            changelog = offsets(settings, settings.topic_state)
            print(f"changelog {settings.topic_state}:", flush=True)
            for partition, (start, end) in sorted(changelog.items()):
                on_disk = bytes_on_disk(settings.topic_state, partition)
                size = "" if on_disk is None else f", {on_disk / 2**20:,.1f} MiB on disk"
                print(
                    f"  partition {partition}: offsets {start:,}..{end:,}, "
                    f"{kept.keys.get(partition, 0):,} live keys (local store, at offset "
                    f"{kept.positions.get(partition, 0):,}){size}",
                    flush=True,
                )
            total_end = sum(end - start for start, end in changelog.values())
            live = sum(kept.keys.values())
            print(
                f"  total: {total_end:,} offsets (records and markers), {live:,} live keys "
                f"({live / max(args.members, 1):.1f} per member); local store digest {kept.digest}",
                flush=True,
            )

            second = start_processor(logs / "2-with-store.log")
            runs.append(second)
            until_ready(second, args.settle, args.timeout)
            second.stop()
            after_second = store_summary(store_dir)
            with_store = report_restart("with the local store", second, kept, after_second)

            shutil.rmtree(store_dir)
            third = start_processor(logs / "3-without-store.log")
            runs.append(third)
            until_ready(third, args.settle, args.timeout)
            third.stop()
            rebuilt = store_summary(store_dir)
            without_store = report_restart(
                "without the local store (deleted: a full restore)", third, after_second, rebuilt
            )

            events_after = sum(end for _, end in offsets(settings, settings.topic_events).values())
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
            committed = committed_total(admin, settings.processor_group, settings.topic_purchases)
            admin.close()
            print(
                f"events topic end offsets {events_before:,} before the restarts, {events_after:,} after; "
                f"group committed {committed:,} of {args.purchases:,} purchases",
                flush=True,
            )
            restored = sum(int(line["records"]) for line in third.restored.values())
            restore_s = third.restored_at - third.assignments[-1][0] if third.restored_at else 0.0
            print(
                f"ratios: ready with the store {with_store:.2f} s, without {without_store:.2f} s "
                f"({without_store / with_store:.1f}x); the full restore took "
                f"{without_store / whole:.0%} of the time the processor took for the backlog, and read "
                f"{restored / max(restore_s, 1e-9):,.0f} changelog records/s "
                f"({restored / max(restore_s, 1e-9) / ceiling:.1f}x the bare loop's records/s)",
                flush=True,
            )
        finally:
            for run in runs:
                run.close()
            shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
