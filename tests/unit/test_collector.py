"""Full collections run when the service says, not whenever enough objects have survived, and
walk only what came since the last one, but for one over everything now and then."""

from __future__ import annotations

import gc
import weakref

from services.collector import FullCollections


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def full_collections_so_far() -> int:
    return int(gc.get_stats()[2]["collections"])


def full_collections_while_keeping(survivors: int) -> int:
    """How many full collections the interpreter ran while that many new objects stayed alive."""
    first = full_collections_so_far()
    kept = [[index] for index in range(survivors)]
    ran = full_collections_so_far() - first
    del kept
    return ran


def test_the_interpreter_runs_no_full_collection_of_its_own_meanwhile() -> None:
    assert full_collections_while_keeping(1_000_000) > 0, "on its own thresholds, it would"
    before = gc.get_threshold()
    with FullCollections(every_s=3600, all_every_s=3600):
        assert full_collections_while_keeping(1_000_000) == 0
        assert gc.get_threshold()[:2] == before[:2], "young collections as before"
    assert gc.get_threshold() == before, "the thresholds are given back"


def test_overlapping_users_give_the_thresholds_back_when_the_last_leaves() -> None:
    before = gc.get_threshold()
    second = FullCollections(every_s=60, all_every_s=3600)
    with FullCollections(every_s=60, all_every_s=3600):
        second.__enter__()
    try:
        assert gc.get_threshold()[2] != before[2], "the second still runs its own"
    finally:
        second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_a_cycle_among_long_lived_objects_is_freed_once_a_full_collection_is_due() -> None:
    waiting, due = FullCollections(every_s=3600, all_every_s=3600), FullCollections(0, all_every_s=3600)
    try:
        with waiting, due:
            a, b = Node(), Node()
            a.other, b.other = b, a
            gone = weakref.ref(a)
            gc.collect(1)
            gc.collect(1)  # both now in the oldest generation, where young collections do not look
            del a, b
            gc.collect(1)
            waiting.collect_if_due()
            assert gone() is not None, "not due: the cycle waits"
            due.collect_if_due()
            assert gone() is None
    finally:
        gc.unfreeze()


def long_lived_cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gc.collect(1)
    gc.collect(1)  # both in the oldest generation
    return a, weakref.ref(a)


def test_what_survives_a_collection_is_not_walked_again_until_one_over_everything() -> None:
    try:
        with FullCollections(every_s=0, all_every_s=3600) as since, FullCollections(0, 0) as everything:
            kept, gone = long_lived_cycle()
            since.collect_if_due()
            assert gc.get_freeze_count() > 0, "the survivors are set aside"
            del kept  # garbage now, but among the objects set aside
            since.collect_if_due()
            assert gone() is not None, "a collection walks only what came since the last"
            everything.collect_if_due()
            assert gone() is None, "the one over everything frees it"
            fresh, fresh_gone = long_lived_cycle()
            del fresh
            since.collect_if_due()
            assert fresh_gone() is None, "a cycle that came since is freed by the next collection"
    finally:
        gc.unfreeze()
