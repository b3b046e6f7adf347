"""The accounts of the partitions this instance owns: a local copy per partition, in use ones cached.

An account is read from the local copy the first time a batch needs it and kept in memory
(least recently used go first past `processor_cached_members`). Both the cache and the local copy
change only after the Kafka transaction that wrote the change has committed.

After a restart the cache is empty, and each member's first command paid for reading its account
(about 1.3 ms for a member with 75 purchases in the refund window, 1.7 ms with 125): at 200
commands/s over 2,000 members that doubled the median decision time for the first minute, and
under load from the start it saturated the processor (p50 1.3 s, 4% of commands past the API's
timeout). So a restored partition is warmed (`warm`) before its input is read, for at most
`processor_warm_s`, and the rest while the processor has nothing else to do, a few ms at a time.

The local copy is written on a thread of its own, one transaction's changes after another, while
the loop goes on deciding. Written in the loop, a write stalled 300-850 ms now and then at 200
commands/s (the disk is shared with Kafka and Postgres, and a checkpoint of SQLite's log syncs
it), and every command in flight waited. Whatever reads the local copy waits for the writes
before it; the cache is current at once.

A revoked partition is parked, not dropped: the eager rebalance protocol revokes every partition
and gives most of them straight back, and a partition given back keeps its cache unless the
restore found records another owner wrote meanwhile.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from services.ledger import state_records
from services.ledger.domain.account import Account
from services.ledger.local_state import PartitionStore
from services.ledger.settings import LedgerSettings
from services.ledger.state_records import Change

# Changes queued for the local copy at most before the loop waits for the oldest write: a disk
# slower than the loop for long holds the loop back instead of growing memory (a change is a few
# hundred bytes). Counted in changes, not writes: a transaction makes a write per partition it
# touched, and 16 writes (4 transactions at 200 commands/s) did not outlast a 650 ms stall.
CHANGES_QUEUED_MAX = 50_000


class StateStore:
    def __init__(self, settings: LedgerSettings) -> None:
        self._dir = settings.state_dir / "processor" / settings.transactional_id
        self._topic = settings.topic_state
        self._cache_limit = settings.processor_cached_members
        self._local: dict[int, PartitionStore] = {}
        self._cache: dict[int, OrderedDict[str, Account]] = {}
        # Members restored from a whole-account record, whose next write is complete.
        self._legacy: dict[int, set[str]] = {}
        self._owned: set[int] = set()
        # Per restored partition, the key from which its accounts are still to be read ahead.
        self._warm_from: dict[int, str] = {}
        self._writer: ThreadPoolExecutor | None = None
        self._writes: deque[tuple[Future[None], int]] = deque()  # with the changes each holds
        self._queued = 0  # changes in the writes queued
        self._write_failed: BaseException | None = None  # the writer thread's alone

    def local(self, partition: int) -> PartitionStore:
        """The partition's local copy, opened (or created) on first use, with every write done."""
        self._settle()
        if partition not in self._local:
            self._local[partition] = PartitionStore(self._path(partition))
            self._cache[partition] = OrderedDict()
            self._legacy[partition] = set()
        return self._local[partition]

    def _path(self, partition: int) -> Path:
        return self._dir / f"{self._topic}-{partition}.sqlite"

    def restored(self, partition: int, changed: bool) -> None:
        """The partition's local copy is up to date: its accounts can be used."""
        if changed:
            self._cache[partition].clear()
            self._legacy[partition].clear()
        self._owned.add(partition)
        self._warm_from[partition] = ""

    def owned(self) -> set[int]:
        return set(self._owned)

    def park(self, partitions: set[int]) -> None:
        """Revoked: no longer used until restored again."""
        self._owned -= partitions
        for partition in partitions:
            self._warm_from.pop(partition, None)

    def close(self, partitions: set[int]) -> None:
        try:
            self._settle()
        finally:
            for partition in partitions:
                self._owned.discard(partition)
                self._warm_from.pop(partition, None)
                store = self._local.pop(partition, None)
                if store is not None:
                    store.close()
                self._cache.pop(partition, None)
                self._legacy.pop(partition, None)
            if not self._local and self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def parked(self) -> set[int]:
        return set(self._local) - self._owned

    def get(self, partition: int, member_id: str) -> Account:
        cache = self._cache[partition]
        account = cache.get(member_id)
        if account is not None:
            cache.move_to_end(member_id)
            return account
        self._settle()
        rows = self._local[partition].member(member_id)
        if any(key.split("/", 2)[1] == state_records.LEGACY for key, _ in rows):
            self._legacy[partition].add(member_id)
        account = state_records.assemble(member_id, rows)
        self._remember(partition, account)
        return account

    def warming(self, partition: int | None = None) -> bool:
        """Whether accounts of a restored partition (of this one) are still to be read ahead."""
        return bool(self._warm_from) if partition is None else partition in self._warm_from

    def warm(self, budget_s: float) -> bool:
        """Read accounts not yet cached for about `budget_s`, until the cache is full; whether
        any are left to read."""
        deadline = time.perf_counter() + budget_s
        self._settle()
        for partition, low in list(self._warm_from.items()):
            cache = self._cache[partition]
            while len(cache) < self._cache_limit:
                member_id = self._local[partition].member_from(low)
                if member_id is None:
                    break
                if member_id not in cache:
                    self.get(partition, member_id)
                low = state_records.member_range(member_id)[1]
                if time.perf_counter() >= deadline:
                    self._warm_from[partition] = low
                    return True
            del self._warm_from[partition]
        return False

    def cached(self, partition: int | None = None) -> int:
        """Accounts in memory, of every partition or of one."""
        if partition is not None:
            return len(self._cache.get(partition, ()))
        return sum(len(cache) for cache in self._cache.values())

    def changes(self, partition: int, before: Account, after: Account) -> list[Change]:
        """The changelog records that take the member from `before` to `after`."""
        member_id = after.member_id
        if member_id not in self._legacy[partition]:
            return state_records.changes(before, after)
        # Written completely, the account no longer needs its whole-account record.
        return [
            *state_records.changes(before, after, complete=True),
            (state_records.key(member_id, state_records.LEGACY), None),
            (member_id, None),
        ]

    def committed(
        self, partition: int, changes: list[Change], accounts: list[Account], position: int
    ) -> None:
        """A transaction holding `changes` committed; the changelog holds them below `position`.

        The accounts are current at once; the local copy is written behind (see the module's doc).
        """
        while self._writes and self._queued + len(changes) > CHANGES_QUEUED_MAX:
            self._wait_oldest()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-state")
        write = self._writer.submit(self._write, self._local[partition], changes, position)
        self._writes.append((write, len(changes)))
        self._queued += len(changes)
        for account in accounts:
            self._legacy[partition].discard(account.member_id)
            self._remember(partition, account)

    def due(self, partition: int, now: datetime) -> list[str]:
        """Members with something for a clock tick to do at `now`, soonest first."""
        self._settle()
        return self._local[partition].due(round(now.timestamp() * 1_000_000))

    def _write(self, local: PartitionStore, changes: list[Change], position: int) -> None:
        """On the writer thread. After a failed write none is made: a later one would move the
        copy's position past changes it does not hold."""
        if self._write_failed is not None:
            raise self._write_failed
        try:
            local.apply(changes, position)
        except BaseException as error:
            self._write_failed = error
            raise

    def _settle(self) -> None:
        """Wait for the local writes queued, in order; a write that failed raises here."""
        while self._writes:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        write, changes = self._writes.popleft()
        self._queued -= changes
        write.result()

    def _remember(self, partition: int, account: Account) -> None:
        cache = self._cache[partition]
        cache[account.member_id] = account
        cache.move_to_end(account.member_id)
        while len(cache) > self._cache_limit:
            cache.popitem(last=False)
