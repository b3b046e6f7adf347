"""The processes of a `loyalty run` that a benchmark watches: found by component, their CPU, and
how much CPU they may have."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from localinfra.process import pid_alive
from localinfra.stack import LocalStack

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
# Short periods: a stack past its quota waits at most this long for the next one.
QUOTA_PERIOD_US = 10_000


def component_pid(parent: int, component: str) -> int:
    """The pid of the child of `parent` (`loyalty run`) that runs `component` (`processor`, `read-api`...)."""
    for pid, name in components(parent):
        if name == component:
            return pid
    raise SystemExit(f"no {component} among the children of process {parent}")


def components(run: int) -> list[tuple[int, str]]:
    """The children of `run` (`loyalty run`) that run a component, with its name; one that ends
    meanwhile is left out."""
    found = []
    for pid in children(run):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"services.cli" in args[:-1]:
            found.append((pid, args[args.index(b"services.cli") + 1].decode()))
    return found


def children(pid: int) -> list[int]:
    """The process's own children, as the kernel lists them for each of its threads (Linux)."""
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def with_children(pid: int) -> list[int]:
    """The process and its own children (an API's worker processes)."""
    return [pid, *children(pid)]


def workers(pid: int) -> list[int]:
    """An API's worker processes: its children but multiprocessing's resource tracker."""
    return [child for child in children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU the processes have used so far (Linux): a figure less noisy than a rate."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def stack_parts(run: int, servers: LocalStack) -> dict[str, list[int]]:
    """The processes of a `loyalty run` (pid `run`) by part, each with its own children (an API's
    workers, Postgres's backends): the supervisor itself, its components (several processors count
    as one part), and the broker and Postgres it started (`servers`), if local. A process that ends
    meanwhile is left out."""
    parts: dict[str, list[int]] = {"supervisor": [run]}
    for pid, name in components(run):
        parts.setdefault(name, []).extend(_with_children_alive(pid))
    broker = servers.kafka.running_pid() if servers.kafka is not None else None
    if broker is not None:
        parts["broker"] = [broker]
    postmaster = servers.postgres.data / "postmaster.pid" if servers.postgres is not None else None
    if (
        postmaster is not None
        and postmaster.exists()
        and pid_alive(pid := int(postmaster.read_text().split()[0]))
    ):
        parts["postgres"] = _with_children_alive(pid)
    return parts


def _with_children_alive(pid: int) -> list[int]:
    try:
        return with_children(pid)
    except FileNotFoundError:
        return []


def cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    """`cpu_seconds` of each process still running (a Postgres backend may end meanwhile)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds([pid])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def cpu_spent_by_pid(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """The CPU each process spent between two `cpu_by_pid` readings; one first seen in `after`
    counts from zero, one gone by then is left out."""
    return {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}


@contextmanager
def cpu_quota(cores: float) -> Iterator[Path | None]:
    """A cgroup whose processes together get `cores` cores' worth of CPU every 10 ms, or None
    for no limit: a machine with that much capacity, for the stack alone (the client stays
    outside it, unlike with `busy_cores`). Needs root and cgroup v1's cpu controller. Yields the
    file that a process joins it by."""
    if not cores:
        yield None
        return
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        raise SystemExit(f"no cgroup v1 cpu controller at {CGROUP_CPU}: a CPU quota needs one (and root)")
    group = CGROUP_CPU / f"loyalty-bench-{os.getpid()}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(int(cores * QUOTA_PERIOD_US)))
    try:
        yield group / "cgroup.procs"
    finally:
        try:
            group.rmdir()
        except OSError as error:  # a process of the stack outlived it
            print(f"cgroup {group} left: {error}", file=sys.stderr)


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes that each spin on a core of their own: a machine about half as fast, as
    the issues were measured on (here the bare transactional loop falls from 26,000-38,000 to
    13,000-17,000 records/s). It also adds what a shared machine adds: waits for a time slice."""
    spinners = [
        subprocess.Popen(
            [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
        )
        for core in sorted(os.sched_getaffinity(0))[:count]
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
