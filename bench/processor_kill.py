"""What clients see when the processor is killed under load, through `loyalty run`.

Starts `loyalty run` on ports of its own, settles a history (N purchases over M members through
the inbound topic), sends POST /v1/purchases open-loop with vegeta at --rate, and kills the
processor with SIGKILL --kill-at seconds in; `loyalty run` starts it again. It prints, per 5 s
window of send time from the kill, the answers (201 decided, 202 accepted and decided later,
anything else) and p50/p99/max, then the totals and the client's errors, and the bare
transactional loop of the same run for scale. Extra settings for `loyalty run` go in as
NAME=VALUE arguments, for example `LOYALTY_PROCESSOR_WARM_S=0`.

    .venv/bin/python -m bench.processor_kill [--rate 200] [--seconds 80] [--kill-at 10]
        [--purchases 60000] [--members 2000] [NAME=VALUE ...]

vegeta: `go install github.com/tsenart/vegeta/v12@v12.13.0` (found on PATH or in ~/go/bin).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime

from bench.end_to_end import measure
from bench.processes import component_pid
from bench.serving_load import attack, purchase_targets, spread, vegeta
from bench.stack import RunningStack, loyalty_run

WINDOW_S = 5


def kill_processor(stack: RunningStack) -> float:
    """SIGKILL the processor child of `loyalty run`; when it was sent (epoch seconds)."""
    os.kill(component_pid(stack.process.pid, "processor"), signal.SIGKILL)
    return time.time()


def sent_at(result: dict[str, object]) -> float:
    """vegeta's RFC 3339 timestamp, nanoseconds cut to what datetime keeps."""
    stamp = str(result["timestamp"])
    head, dot, tail = stamp.partition(".")
    if dot:
        fraction = tail[: len(tail) - len(tail.lstrip("0123456789"))]
        stamp = f"{head}.{fraction[:6]}{tail[len(fraction) :]}"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def report(results: list[dict[str, object]], killed: float) -> None:
    windows: dict[int, list[dict[str, object]]] = {}
    for result in results:
        windows.setdefault(int((sent_at(result) - killed) // WINDOW_S) * WINDOW_S, []).append(result)
    print(f"by send time from the kill ({WINDOW_S} s windows): answers, then p50/p99/max of all (ms)")
    for start in sorted(windows):
        within = windows[start]
        codes = Counter(int(str(result["code"])) for result in within)
        latencies = sorted(int(str(result["latency"])) / 1e6 for result in within)
        print(f"  {start:+4d} s  {len(within):5d} sent  {dict(sorted(codes.items()))}  {spread(latencies)}")
    totals = Counter(int(str(result["code"])) for result in results)
    print(f"  total {len(results)} sent: {dict(sorted(totals.items()))}")
    errors = Counter(str(result.get("error") or "") for result in results if result.get("error"))
    for error, count in errors.most_common(5):
        print(f"  {count} x {error[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=80)
    parser.add_argument("--kill-at", type=float, default=10)
    parser.add_argument("--purchases", type=int, default=60_000)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("settings", nargs="*", help="NAME=VALUE for loyalty run")
    args = parser.parse_args()
    vegeta()
    extra = dict(setting.split("=", 1) for setting in args.settings)
    with loyalty_run(extra) as stack:
        measure(args.purchases, args.members, stack)
        targets = purchase_targets(stack, args.members, args.rate, args.seconds)
        results: list[dict[str, object]] = []
        load = threading.Thread(target=lambda: results.extend(attack(targets, args.rate, args.seconds)))
        load.start()
        time.sleep(args.kill_at)
        killed = kill_processor(stack)
        load.join()
        print(f"purchases at {args.rate}/s for {args.seconds:g} s, processor killed {args.kill_at:g} s in")
        report(results, killed)


if __name__ == "__main__":
    main()
