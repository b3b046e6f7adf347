"""Replay workers get partitions dealt so that their shares of the log are as even as they can be."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.audit.replay import _shares

ranges = st.dictionaries(
    st.integers(0, 63),
    st.tuples(st.integers(0, 1000), st.integers(1, 5000)).map(lambda r: (r[0], r[0] + r[1])),
)


@given(ranges, st.integers(1, 4))
def test_every_partition_goes_to_exactly_one_worker(todo: dict[int, tuple[int, int]], workers: int) -> None:
    shares = _shares(todo, workers)
    assert len(shares) == min(workers, len(todo))
    dealt = [partition for share in shares for partition in share]
    assert sorted(dealt) == sorted(todo)
    assert {p: r for share in shares for p, r in share.items()} == todo


@given(ranges, st.integers(1, 4))
def test_no_worker_has_more_than_the_fair_share_plus_one_partition(
    todo: dict[int, tuple[int, int]], workers: int
) -> None:
    shares = _shares(todo, workers)
    loads = [sum(end - start for start, end in share.values()) for share in shares]
    longest = max((end - start for start, end in todo.values()), default=0)
    total = sum(end - start for start, end in todo.values())
    assert all(load <= total / max(len(shares), 1) + longest for load in loads)


def test_two_long_and_two_short_partitions_pair_up() -> None:
    todo = {0: (0, 100), 1: (0, 90), 2: (0, 10), 3: (0, 20)}
    loads = sorted(sum(end - start for start, end in share.values()) for share in _shares(todo, 2))
    assert loads == [110, 110]
