"""The benchmarks' made-up history (bench.backlog): the processor's own decisions, so it must keep
up with the commands they take (it once stopped at the first purchase, when purchases gained
their arrival time)."""

from __future__ import annotations

from collections import Counter, defaultdict

from bench.backlog import generate


def test_the_history_has_about_the_size_asked_and_every_kind_of_event_in_unbroken_chains() -> None:
    events = list(generate(5_000, 200))

    # About that many: the last command's events are kept whole.
    assert 5_000 <= len(events) <= 5_010
    kinds = Counter(type(event.data).__name__ for event in events)
    for kind in ("PurchaseRecorded", "PointsEarned", "PointsRedeemed", "PurchaseRefunded", "TierChanged"):
        assert kinds[kind] > 0, kinds
    sequences: defaultdict[str, list[int]] = defaultdict(list)
    for event in events:
        sequences[event.member_id].append(event.sequence)
    assert all(found == list(range(1, len(found) + 1)) for found in sequences.values())
