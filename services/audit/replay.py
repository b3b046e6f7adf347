"""`loyalty replay`: rebuild every read model from offset 0 of the log and compare with the live ones.

The live read models are measured in one snapshot: their checkpoints (where each partition is)
and a checksum per table. The rebuild applies the log up to exactly those positions, with the
projector's own code, into a fresh schema; equal checksums mean the live models are what the log
says. With --switch the rebuilt schema catches up with the log and takes the live schema's name
in one transaction; running projectors notice their checkpoints moved and resume from them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized

import psycopg
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from psycopg import sql

from services import collector
from services.kafka_offsets import committed_reader, end_offsets
from services.migrations import migrate, schema_options
from services.projector import store
from services.projector.checksums import READ_MODEL_TABLES, table_checksum
from services.projector.projector import OpenBatch
from services.projector.settings import ProjectorSettings

Sums = dict[str, tuple[int, str]]

# Connections that checksum tables side by side: Postgres' own parallel scans leave cores idle
# on the smaller tables.
CHECKSUM_CONNECTIONS = 2

# Records per poll: decoded and copied at once, so this bounds the events held in memory.
POLL_RECORDS = 5_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--into", metavar="SCHEMA", help="schema to rebuild into (default: a new, dated one)")
    parser.add_argument(
        "--switch",
        action="store_true",
        help="when the rebuild matches, bring it up to date and serve it in place of the live schema",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=200_000,
        help="events a worker folds into one transaction: each member's rows are written once per "
        "transaction, and its changes are held in memory until then",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes sharing the partitions (default: cores)",
    )


def fingerprint(sums: Sums) -> str:
    """One hash of every table's row count and checksum: equal fingerprints, equal read models."""
    return hashlib.sha256(json.dumps(sorted(sums.items())).encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    settings = ProjectorSettings()
    live = settings.read_schema
    target = args.into or f"{live}_replay_{datetime.now(UTC):%Y%m%d%H%M%S}"
    if target == live or _schema_exists(settings.database_url, target):
        print(
            f"loyalty replay: schema {target!r} already exists; choose another with --into", file=sys.stderr
        )
        return 2
    positions, live_sums = _live_snapshot(settings, sorted(_log_ends(settings)))
    migrate(settings.database_url, target)
    # Until it is switched in, a rebuild is only compared: its tables skip the write-ahead log
    # (about a tenth of a rebuild's time). A crash empties them; the replay is run again.
    _set_logged(settings.database_url, target, False)
    _rebuild(settings, target, positions, args.batch, args.workers)
    replayed = _checksums(settings.database_url, target)
    identical = _report(live, target, live_sums, replayed)
    if identical and args.switch:
        _rebuild(settings, target, _log_ends(settings), args.batch, args.workers)
        _set_logged(settings.database_url, target, True)
        retired = _switch(settings.database_url, live, target)
        print(f"switched: {live} serves the rebuilt read models; the previous ones are in {retired}")
    print(f"fingerprint {fingerprint(replayed)}")
    return 0 if identical else 1


def _log_ends(settings: ProjectorSettings) -> dict[int, int]:
    # A reader per question: its network thread must be gone before the workers are forked.
    reader = committed_reader(settings.kafka_bootstrap, "loyalty-replay")
    try:
        return end_offsets(reader, settings.topic_events)
    finally:
        reader.close()


def _connect(url: str, schema: str) -> psycopg.Connection:
    conn = psycopg.connect(url, options=schema_options(schema))
    # A rebuild lost in a crash is simply run again: no need to wait for each commit to be flushed.
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    return conn


def _set_logged(url: str, schema: str, logged: bool) -> None:
    with psycopg.connect(url) as conn, conn.transaction():
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
        for (table,) in tables:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET {}").format(
                    sql.Identifier(schema, table), sql.SQL("LOGGED" if logged else "UNLOGGED")
                )
            )


def _schema_exists(url: str, schema: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _live_snapshot(settings: ProjectorSettings, partitions: list[int]) -> tuple[dict[int, int], Sums]:
    """Positions and checksums of the live read models, from one consistent snapshot."""
    with psycopg.connect(settings.database_url, options=schema_options(settings.read_schema)) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            found = store.checkpoints(conn, settings.topic_events, partitions)
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert snapshot is not None
            sums = _checksums(settings.database_url, settings.read_schema, snapshot[0])
    return {partition: found.get(partition, 0) for partition in partitions}, sums


def _checksums(url: str, schema: str, snapshot: str | None = None) -> Sums:
    """Every read-model table's checksum, the tables shared among connections, largest first.

    With `snapshot` (exported by a transaction that stays open meanwhile), every connection sees
    the database as that transaction does.
    """
    with psycopg.connect(url, options=schema_options(schema)) as conn:
        sizes: dict[str, int] = dict(
            conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c "
                "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s)",
                (list(READ_MODEL_TABLES),),
            ).fetchall()
        )
    tables: queue.SimpleQueue[str] = queue.SimpleQueue()
    for table in sorted(READ_MODEL_TABLES, key=lambda name: -sizes.get(name, 0)):
        tables.put(table)
    sums: Sums = {}

    def work() -> None:
        with psycopg.connect(url, options=schema_options(schema)) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            if snapshot is not None:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            while True:
                try:
                    table = tables.get_nowait()
                except queue.Empty:
                    return
                sums[table] = table_checksum(conn, table)

    with ThreadPoolExecutor(max_workers=CHECKSUM_CONNECTIONS) as pool:
        for done in [pool.submit(work) for _ in range(CHECKSUM_CONNECTIONS)]:
            done.result()
    return sums


def _rebuild(
    settings: ProjectorSettings, schema: str, stop: dict[int, int], batch: int, workers: int
) -> None:
    """Apply the log from where `schema` stands up to `stop` (next offset per partition).

    Partitions are shared among worker processes: members never span partitions, and the rows
    they share (program days) are incremented in key order, so the result is the same. A schema
    rebuilt from nothing gets its secondary indexes at the end: one sort each is cheaper than
    keeping them up to date row by row (a sixth of a rebuild's time).
    """
    topic = settings.topic_events
    with _connect(settings.database_url, schema) as conn:
        done = store.checkpoints(conn, topic, stop)
        deferred = _drop_secondary_indexes(conn) if not done else []
    todo = {p: (done.get(p, 0), end) for p, end in stop.items() if end > done.get(p, 0)}
    progress = _Progress(sum(end - start for start, end in todo.values()))
    shares = _shares(todo, workers)
    # A forked worker starts at once; a spawned one imports everything again (about half a
    # second). Forking is safe only when no other thread may hold a lock the child inherits.
    context = (
        multiprocessing.get_context("fork")
        if threading.active_count() == 1
        else multiprocessing.get_context("spawn")
    )
    applied = context.Value("q", 0)
    processes = [
        context.Process(
            target=_rebuild_partitions,
            args=(
                settings.kafka_bootstrap,
                settings.database_url,
                schema,
                topic,
                share,
                batch,
                applied,
            ),
        )
        for share in shares
    ]
    for process in processes:
        process.start()
    while any(process.is_alive() for process in processes):
        progress.show(applied.value)
        if any(process.exitcode not in (None, 0) for process in processes):
            break  # the rebuild is lost: no need for the others to finish it
        time.sleep(0.5)
    if any(process.exitcode != 0 for process in processes):
        for process in processes:
            process.terminate()
            process.join()
        raise RuntimeError(f"a replay worker failed; its error is above, and schema {schema} is incomplete")
    with _connect(settings.database_url, schema) as conn, conn.transaction():
        for definition in deferred:
            conn.execute(definition)
        store.advance(conn, topic, stop)
    progress.show(applied.value)
    progress.finish()


def _shares(todo: dict[int, tuple[int, int]], workers: int) -> list[dict[int, tuple[int, int]]]:
    """Partitions dealt to workers, the longest first to the least loaded, so that all finish together."""
    shares: list[dict[int, tuple[int, int]]] = [{} for _ in range(min(workers, len(todo)))]
    loads = [0] * len(shares)
    for partition, (start, end) in sorted(todo.items(), key=lambda item: item[1][0] - item[1][1]):
        least = loads.index(min(loads))
        shares[least][partition] = (start, end)
        loads[least] += end - start
    return shares


def _drop_secondary_indexes(conn: psycopg.Connection) -> list[sql.SQL]:
    """Drop the schema's indexes that no constraint needs; return the statements that make them again."""
    rows = conn.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = current_schema()
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                          WHERE c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass)
        ORDER BY i.indexname
        """
    ).fetchall()
    for name, _ in rows:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    conn.commit()
    return [sql.SQL(definition) for _, definition in rows]


def _rebuild_partitions(
    bootstrap: str,
    url: str,
    schema: str,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    batch: int,
    applied: Synchronized[int],
) -> None:
    """One worker: its partitions from their start to their stop offset, with the projector's code.

    Each transaction folds polls until it holds `batch` events, so that a member's row is written
    once per transaction instead of once per poll.
    """
    reader = committed_reader(bootstrap, "loyalty-replay", max_partition_fetch_bytes=8 << 20)
    tps = [TopicPartition(topic, p) for p in sorted(ranges)]
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, ranges[tp.partition][0])
    open_tps = set(tps)
    with _connect(url, schema) as conn:
        while open_tps:
            with collector.paused(), conn.transaction():
                started = time.monotonic()
                folding = OpenBatch(conn, topic)
                while open_tps and folding.records < batch:
                    chunk = _next_chunk(reader, ranges, open_tps)
                    if chunk:
                        folding.add(chunk)
                        with applied.get_lock():
                            applied.value += sum(len(records) for records in chunk.values())
                if folding.records:
                    folding.write(started)
    reader.close()


def _next_chunk(
    reader: KafkaConsumer, ranges: dict[int, tuple[int, int]], open_tps: set[TopicPartition]
) -> dict[TopicPartition, list[ConsumerRecord]]:
    """The next poll's records below their partition's stop offset; partitions done are closed."""
    polled = reader.poll(timeout_ms=1000, max_records=POLL_RECORDS)
    chunk = {}
    for tp, records in polled.items():
        kept = [record for record in records if record.offset < ranges[tp.partition][1]]
        if kept:
            chunk[tp] = kept
    for tp in list(open_tps):
        if reader.position(tp) >= ranges[tp.partition][1]:
            open_tps.discard(tp)
            reader.pause(tp)
    return chunk


def _report(live: str, target: str, live_sums: Sums, replayed: Sums) -> bool:
    width = max(len(table) for table in replayed)
    print(f"{'table':<{width}}  {'rows ' + live:>14}  {'rows replay':>12}  checksum")
    identical = True
    for table in sorted(replayed):
        (live_rows, live_sum), (rows, checksum) = live_sums.get(table, (0, "-")), replayed[table]
        same = (live_rows, live_sum) == (rows, checksum)
        identical &= same
        verdict = checksum if same else f"{checksum} DIFFERS from {live} {live_sum}"
        print(f"{table:<{width}}  {live_rows:>14}  {rows:>12}  {verdict}")
    print(f"{target}: {'identical to' if identical else 'DIFFERENT from'} {live}")
    return identical


def _switch(url: str, live: str, target: str) -> str:
    retired = f"{live}_retired_{datetime.now(UTC):%Y%m%d%H%M%S}"
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(live), sql.Identifier(retired))
        )
        conn.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(target), sql.Identifier(live))
        )
    return retired


class _Progress:
    """A progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self._total, self._done = max(total, 0), 0
        self._started = time.monotonic()

    def show(self, done: int) -> None:
        self._done = done
        self._draw()

    def finish(self) -> None:
        self._draw()
        elapsed = time.monotonic() - self._started
        rate = self._done / elapsed if elapsed > 0 else 0.0
        print(f"\nreplayed {self._done:,} events in {elapsed:.1f} s ({rate:,.0f} events/s)", file=sys.stderr)

    def _draw(self) -> None:
        share = self._done / self._total if self._total else 1.0
        bar = "#" * int(share * 30)
        rate = self._done / max(time.monotonic() - self._started, 1e-9)
        print(
            f"\rreplay [{bar:<30}] {share:4.0%} {self._done:,}/{self._total:,} events, {rate:,.0f}/s",
            end="",
            file=sys.stderr,
            flush=True,
        )
