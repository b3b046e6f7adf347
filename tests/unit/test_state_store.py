"""The processor's accounts: read ahead into the cache after a restore, as the local copy has them,
and written to the local copy behind the loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.ledger import state_records, state_store
from services.ledger.domain.account import Account
from services.ledger.local_state import PartitionStore
from services.ledger.settings import LedgerSettings
from services.ledger.state_store import StateStore
from tests.unit.ledger_fixtures import given, purchase

PARTITION = 0


def _account(member_id: str, *purchase_ids: str) -> Account:
    return given(
        *(replace(purchase(p, 1000), member_id=member_id, command_id=f"purchase:{p}") for p in purchase_ids),
        member_id=member_id,
    )


def _store(tmp_path: Path, members: list[str], cached: int = 100) -> StateStore:
    store = StateStore(
        LedgerSettings(state_dir=tmp_path, processor_instance="test", processor_cached_members=cached)
    )
    changes = [
        (key, value)
        for member_id in members
        for key, value in state_records.records(
            given(replace(purchase(f"o-{member_id}", 1000), member_id=member_id), member_id=member_id)
        ).items()
    ]
    changes.append((state_records.input_key("purchases"), b"7"))  # a key of the processor's own
    store.local(PARTITION).apply(changes, position=len(changes))
    store.restored(PARTITION, changed=False)
    return store


def test_restored_accounts_are_read_ahead_until_none_are_left(tmp_path: Path) -> None:
    members = [f"m-{i}" for i in range(30)]
    store = _store(tmp_path, members)
    while store.warm(budget_s=0.001):
        pass
    local = store.local(PARTITION)
    local.close()  # every account now comes from the cache, none from the local copy
    for member_id in members:
        account = store.get(PARTITION, member_id)
        assert f"o-{member_id}" in account.purchases


def test_reading_ahead_stops_at_the_cache_limit(tmp_path: Path) -> None:
    store = _store(tmp_path, [f"m-{i}" for i in range(30)], cached=10)
    assert not store.warm(budget_s=5.0), "nothing is left to read once the cache is full"
    assert len(store._cache[PARTITION]) == 10


def test_a_revoked_partition_is_not_read_ahead(tmp_path: Path) -> None:
    store = _store(tmp_path, ["m-1", "m-2"])
    store.park({PARTITION})
    assert not store.warm(budget_s=5.0)
    assert not store._cache[PARTITION]


@pytest.fixture
def held_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Local writes wait while the event is clear (the test's stand-in for a slow disk)."""
    release = threading.Event()
    release.set()
    apply = PartitionStore.apply

    def held(self: PartitionStore, *args: object, **kwargs: object) -> None:
        release.wait(timeout=30)
        apply(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PartitionStore, "apply", held)
    yield release
    release.set()


def _commit(store: StateStore, after: Account, position: int | None = None) -> int:
    """Commit `after` at `position`, by default just past the local copy's (once it is written)."""
    before = store.get(PARTITION, after.member_id)
    position = position or store.local(PARTITION).position + 1
    store.committed(PARTITION, store.changes(PARTITION, before, after), [after], position)
    return position


def test_a_commit_does_not_wait_for_the_local_write_and_reads_see_it(
    tmp_path: Path, held_writes: threading.Event
) -> None:
    store = _store(tmp_path, ["m-1", "m-2"], cached=1)
    held_writes.clear()
    position = _commit(store, _account("m-1", "o-m-1", "o-m-1-again"))
    assert store._writes and not store._writes[-1][0].done(), "the commit returned with its write held"
    # m-2 pushes m-1 out of the one-account cache: reading m-1 again must wait for its write
    # instead of reading the copy from before it.
    store._remember(PARTITION, _account("m-2", "o-m-2"))
    assert "m-1" not in store._cache[PARTITION]
    threading.Timer(0.2, held_writes.set).start()
    assert "o-m-1-again" in store.get(PARTITION, "m-1").purchases
    assert store.local(PARTITION).position == position


def test_commits_queue_up_to_a_bound_in_changes_then_wait_for_the_disk(
    tmp_path: Path, held_writes: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path, [f"m-{i}" for i in range(40)])
    while store.warm(budget_s=1.0):  # every account cached: no commit reads the local copy
        pass
    position = store.local(PARTITION).position
    held_writes.clear()
    for i in range(40):  # more transactions than a stall of the disk used to be given
        _commit(store, _account(f"m-{i}", f"o-m-{i}", f"o-m-{i}-again"), position + 1 + i)
    assert len(store._writes) == 40, "every commit returned with its write held"
    monkeypatch.setattr(state_store, "CHANGES_QUEUED_MAX", store._queued)
    third = _account("m-0", "o-m-0", "o-m-0-again", "o-m-0-third")
    one_more = threading.Thread(target=_commit, args=(store, third, position + 41))
    one_more.start()
    one_more.join(timeout=0.3)
    assert one_more.is_alive(), "past the bound, a commit waits for the local copy"
    held_writes.set()
    one_more.join(timeout=10)
    assert not one_more.is_alive()
    assert store.local(PARTITION).position == position + 41, "every write done, in order"
    store._cache[PARTITION].clear()
    assert "o-m-0-third" in store.get(PARTITION, "m-0").purchases


def test_after_a_failed_local_write_no_later_one_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path, ["m-1", "m-2"])
    position = store.local(PARTITION).position
    apply = PartitionStore.apply
    failures = iter([OSError("disk full")])

    def failing_once(self: PartitionStore, *args: object, **kwargs: object) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        apply(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PartitionStore, "apply", failing_once)
    _commit(store, _account("m-1", "o-m-1", "o-m-1-again"))
    store.committed(PARTITION, [], [], position + 2)  # would move the position past the lost write
    with pytest.raises(OSError, match="disk full"):
        store.local(PARTITION)
    monkeypatch.setattr(PartitionStore, "apply", apply)
    assert store._local[PARTITION].position == position
