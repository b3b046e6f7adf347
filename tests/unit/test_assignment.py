"""Co-partitioned cooperative assignment: balanced, sticky, and never two owners at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.assignment import plan


def _rebalance(numbers: list[int], owned: dict[str, set[int]]) -> tuple[dict[str, set[int]], int]:
    """Rounds until nobody gives anything up (as kafka-python rejoins after a revocation): the
    final ownership and the rounds it took. Checks each round on the way."""
    for rounds in range(1, 10):
        given = plan(numbers, owned)
        for member, mine in given.items():
            others = {n for other, theirs in owned.items() if other != member for n in theirs}
            assert not mine & others, f"{member} given what another still holds"
        assert sum(map(len, given.values())) == len(set().union(*given.values())), "one owner each"
        gave_up = any(owned[member] - given[member] for member in owned)
        owned = given
        if not gave_up:
            return owned, rounds
    raise AssertionError("no stable assignment after 9 rounds")


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=16),
    changes=st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=5)), min_size=1, max_size=8),
)
def test_members_joining_and_leaving_move_only_what_balance_needs(
    count: int, changes: list[tuple[bool, int]]
) -> None:
    numbers = list(range(count))
    owned: dict[str, set[int]] = {"m0": set()}
    owned, _ = _rebalance(numbers, owned)
    for joins, which in changes:
        member = f"m{which}"
        if joins:
            owned.setdefault(member, set())
        elif len(owned) > 1:
            owned.pop(member, None)
        before = {m: set(mine) for m, mine in owned.items()}
        owned, rounds = _rebalance(numbers, owned)
        assert rounds <= 2, "what moves is given up in one round and taken in the next"
        assert set().union(*owned.values()) == set(numbers), "every partition has an owner"
        sizes = [len(mine) for mine in owned.values()]
        assert max(sizes) - min(sizes) <= 1, "balanced"
        share = count // len(owned)
        for m, mine in before.items():
            assert len(mine & owned[m]) >= min(len(mine), share), f"{m} kept what its share allows"


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=12),
    claims=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]), st.sets(st.integers(min_value=0, max_value=11)), min_size=1
    ),
)
def test_claims_that_overlap_are_settled_without_two_owners(count: int, claims: dict[str, set[int]]) -> None:
    """A member out of date (a zombie, a lost generation) may claim what another holds: neither
    keeps it this round, and it is given once both have let go."""
    numbers = list(range(count))
    owned, rounds = _rebalance(numbers, {m: {n for n in mine if n < count} for m, mine in claims.items()})
    assert rounds <= 2
    assert set().union(*owned.values()) == set(numbers)


def test_a_member_joining_takes_its_share_from_the_one_that_had_all() -> None:
    first = plan([0, 1, 2, 3], {"a": {0, 1, 2, 3}, "b": set()})
    assert first == {"a": {0, 1}, "b": set()}, "b's share is withheld until a gives it up"
    assert plan([0, 1, 2, 3], {"a": {0, 1}, "b": set()}) == {"a": {0, 1}, "b": {2, 3}}
