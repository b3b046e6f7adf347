"""`loyalty run`'s restart policy: backoff that doubles to a ceiling, resets, and gives up on a loop."""

from __future__ import annotations

from services.restarts import RestartPolicy, Restarts

POLICY = RestartPolicy(backoff_s=1, backoff_max_s=8, limit=5, window_s=300, stable_s=60)


def test_backoff_doubles_up_to_its_ceiling() -> None:
    restarts = Restarts(RestartPolicy(backoff_s=1, backoff_max_s=8, limit=100, window_s=300))
    delays = [restarts.exited(now=float(i), uptime_s=0.5) for i in range(6)]
    assert delays == [1, 2, 4, 8, 8, 8]


def test_a_component_that_stayed_up_starts_over_from_the_first_backoff() -> None:
    restarts = Restarts(POLICY)
    assert [restarts.exited(now=t, uptime_s=1) for t in (0, 2, 5)] == [1, 2, 4]
    assert restarts.exited(now=100, uptime_s=90) == 1


def test_the_limit_of_exits_within_the_window_gives_the_component_up() -> None:
    restarts = Restarts(POLICY)
    assert all(restarts.exited(now=t, uptime_s=1) is not None for t in (0, 10, 20, 30))
    assert restarts.exited(now=40, uptime_s=1) is None


def test_exits_older_than_the_window_are_forgotten() -> None:
    restarts = Restarts(POLICY)
    for t in (0, 10, 20, 30):
        restarts.exited(now=t, uptime_s=100)
    assert restarts.exited(now=305, uptime_s=100) == 1
    assert len(restarts.recent) == 4
