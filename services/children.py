"""The children of `loyalty run`: each started again after a backoff when it exits, and bound to
the supervisor's life, so that even a SIGKILL of it leaves no orphan holding a port or partition."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.restarts import RestartPolicy, Restarts

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class Component:
    """One child process, started again under the restart policy whenever it exits."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        policy: RestartPolicy,
        reachable: Callable[[], bool],
        nice: int = 0,
    ) -> None:
        self.name = name
        self._argv, self._env = argv, env
        # Added to the child's niceness before it starts a thread: every thread of it inherits it.
        self._nice = nice
        self.restarts = Restarts(policy)
        # Whether what the child needs (Kafka, Postgres) accepts connections: a restart waits for
        # it, since a child started into an outage only exits again and nears the crash-loop limit.
        self._reachable = reachable
        self.process: subprocess.Popen[bytes] | None = None
        self.given_up = False
        self._started_at = 0.0
        self._restart_at: float | None = None
        self._deferred = False

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def start(self, now: float) -> None:
        """Spawn the child; only ever from the main thread, whose end the death signal follows."""
        self.process = subprocess.Popen(
            self._argv,
            env=self._env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_before_exec(os.getpid(), self._nice),
        )
        self._started_at = now

    def check(self, now: float) -> None:
        """Notice an exit and schedule the restart (or give up); restart when it is due."""
        if self.process is not None and (code := self.process.poll()) is not None:
            self.process = None
            uptime_s = now - self._started_at
            delay = self.restarts.exited(now, uptime_s)
            facts = {
                "component": self.name,
                "exit_code": code,
                "signal": signal.Signals(-code).name if code < 0 else None,
                "uptime_s": round(uptime_s, 1),
                "exits_in_window": len(self.restarts.recent),
            }
            if delay is None:
                self.given_up = True
                log.error("component in a crash loop; given up, the rest keep running", extra=facts)
            else:
                self._restart_at = now + delay
                log.warning("component exited; restarting", extra={**facts, "restart_in_s": delay})
        if self._restart_at is not None and now >= self._restart_at:
            if not self._reachable():
                if not self._deferred:
                    log.warning(
                        "restart deferred until Kafka and Postgres accept connections",
                        extra={"component": self.name},
                    )
                    self._deferred = True
                return
            self._restart_at, self._deferred = None, False
            self.start(now)
            self.restarts.count += 1
            log.info("component restarted", extra={"component": self.name, "restarts": self.restarts.count})

    def terminate(self) -> None:
        self._restart_at = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("component did not stop in time; killed", extra={"component": self.name})
            self.process.kill()
            self.process.wait()


class ComponentMetrics(Collector):
    """The supervisor's view of its children, read when /metrics is scraped."""

    def __init__(self, components: Iterable[Component]) -> None:
        self._components = list(components)

    def collect(self) -> Iterator[Metric]:
        labels = ["component"]
        restarts = CounterMetricFamily(
            "loyalty_component_restarts", "Times loyalty run started the component again", labels=labels
        )
        up = GaugeMetricFamily("loyalty_component_up", "1 while the component's process runs", labels=labels)
        exits = GaugeMetricFamily(
            "loyalty_component_recent_exits",
            "Exits within the restart window (LOYALTY_RESTART_WINDOW_S)",
            labels=labels,
        )
        given_up = GaugeMetricFamily(
            "loyalty_component_given_up",
            "1 once the component was given up after a crash loop (LOYALTY_RESTART_LIMIT)",
            labels=labels,
        )
        for component in self._components:
            restarts.add_metric([component.name], component.restarts.count)
            up.add_metric([component.name], int(component.up))
            exits.add_metric([component.name], len(component.restarts.recent))
            given_up.add_metric([component.name], int(component.given_up))
        yield from (restarts, up, exits, given_up)


def _before_exec(parent: int, nice: int) -> Callable[[], None] | None:
    """Run in the child before exec: take the lower priority, and die when `parent` does, however
    it ends (Linux only).

    `prctl` is looked up before the fork, so that the child only makes the call. A parent that
    died before the call would never send the signal: the child checks and ends itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def bind() -> None:
        if nice:
            os.nice(nice)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return bind


def end_with_parent() -> None:
    """End this process when its parent does, however that ends (Linux only).

    For the processes that a child of `loyalty run` starts itself (uvicorn's workers of an API),
    which the death signal of `_before_exec` does not reach: without this, a killed API leaves its
    workers serving its port as orphans.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
