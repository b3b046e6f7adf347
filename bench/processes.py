"""The processes of a `loyalty run` that a benchmark watches: found by component, and their CPU."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable


def component_pid(parent: int, component: str) -> int:
    """The pid of the child of `parent` (`loyalty run`) that runs `component` (`processor`, `read-api`...)."""
    for pid in children(parent):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if component.encode() in cmdline.read().split(b"\0"):
                return pid
    raise SystemExit(f"no {component} among the children of process {parent}")


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


def with_children(pid: int) -> list[int]:
    """The process and its own children (an API's worker processes)."""
    return [pid, *children(pid)]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU the processes have used so far (Linux): a figure less noisy than a rate."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total
