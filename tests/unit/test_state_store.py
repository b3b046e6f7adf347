"""The processor's accounts: read ahead into the cache after a restore, as the local copy has them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from services.ledger import state_records
from services.ledger.settings import LedgerSettings
from services.ledger.state_store import StateStore
from tests.unit.ledger_fixtures import given, purchase

PARTITION = 0


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
