"""When `loyalty run` restarts a component that exited: the backoff, its reset, and when to stop trying."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    # This many exits within the window is a crash loop: the component is given up.
    limit: int = 5
    window_s: float = 300.0
    # Up this long, a component counts as healthy again: its next exit waits the first backoff.
    stable_s: float = 60.0


class Restarts:
    """One component's exits under a policy; time is the caller's monotonic clock."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.recent: deque[float] = deque()
        self.count = 0
        self._next_delay_s = policy.backoff_s

    def exited(self, now: float, uptime_s: float) -> float | None:
        """Seconds to wait before starting it again, or None when it is to be given up."""
        policy = self.policy
        if uptime_s >= policy.stable_s:
            self._next_delay_s = policy.backoff_s
        self.recent.append(now)
        while self.recent[0] <= now - policy.window_s:
            self.recent.popleft()
        if len(self.recent) >= policy.limit:
            return None
        delay = self._next_delay_s
        self._next_delay_s = min(delay * 2, policy.backoff_max_s)
        return delay
