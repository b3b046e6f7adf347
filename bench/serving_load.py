"""Both APIs under an outside open-loop client (vegeta), through `loyalty run`, beside a bare app.

Starts `loyalty run` on ports of its own, settles a history (N purchases over M members through
the inbound topic), then sends open-loop load with vegeta, a Go client that does not compete for
this project's GIL:
- GET /v1/members/{id}/balance at each --read-rates, random members;
- POST /v1/purchases at --command-rate, unique ids, each answered once decided, after an
  uncounted warm-up of --command-warmup seconds at that rate (its figures printed apart);
and prints per rate the achieved rate, the share answered 200 (201), the share shed (503) and
p50/p99/max of each. The ceiling beside them is a bare app (one constant JSON route, the same
worker count, same uvicorn) under the same client in the same run. For the commands it prints
where the time goes: in the processor (command appended to reply appended, from the records'
own timestamps) and the rest (HTTP, the API, the transaction's commit, the reply's delivery), and
the CPU every part of the stack spent per purchase (each component, the broker, Postgres).

    .venv/bin/python -m bench.serving_load [--read-rates 500,1000,3000] [--command-rate 200]
        [--seconds 20] [--command-warmup 5] [--purchases 20000] [--members 2000] [--busy-cores 0]
        [--cpu-quota 0]

With --busy-cores N, N processes spin on a core each for the whole run: a machine about half as
fast (the bare loop beside the figures shows how much). With --cpu-quota C, `loyalty run` and all
it starts get C cores' worth of CPU in all (a cgroup; root only), while the client gets the rest.

vegeta: `go install github.com/tsenart/vegeta/v12@v12.13.0` (found on PATH or in ~/go/bin).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.end_to_end import measure
from bench.processes import (
    busy_cores,
    component_pid,
    cpu_by_pid,
    cpu_quota,
    cpu_spent_by_pid,
    stack_parts,
    with_children,
    workers,
)
from bench.stack import RunningStack, loyalty_run, wait_ready
from localinfra.process import reserved_ports
from services.ledger.settings import LedgerSettings
from services.serving import ServingSettings

SUCCESS = {200, 201}
BARE_BODY = json.dumps({"member_id": "m-0000001", "available": 1200, "pending": 0}).encode()


def bare_app() -> Starlette:
    """The yardstick: what uvicorn with these workers serves when the app does nothing."""

    async def constant(_: Request) -> Response:
        return Response(BARE_BODY, media_type="application/json")

    return Starlette(routes=[Route("/bare", constant), Route("/readyz", constant)])


def vegeta() -> str:
    found = shutil.which("vegeta") or str(Path.home() / "go" / "bin" / "vegeta")
    if not Path(found).exists():
        raise SystemExit("vegeta not found: go install github.com/tsenart/vegeta/v12@v12.13.0")
    return found


def attack(targets: list[dict[str, object]], rate: int, seconds: float) -> list[dict[str, object]]:
    """Each result (code, latency in ns) of an open-loop attack over the targets, in turn."""
    with tempfile.TemporaryDirectory() as work:
        target_file = Path(work) / "targets.jsonl"
        target_file.write_text("\n".join(json.dumps(target) for target in targets) + "\n")
        results = subprocess.run(
            [
                vegeta(),
                "attack",
                "-format=json",
                f"-targets={target_file}",
                f"-rate={rate}",
                f"-duration={seconds}s",
                "-timeout=10s",
                "-max-workers=2000",
            ],
            capture_output=True,
            check=True,
        ).stdout
        encoded = subprocess.run(
            [vegeta(), "encode", "-to=json"], input=results, capture_output=True, check=True
        ).stdout
    return [json.loads(line) for line in encoded.splitlines() if line.strip()]


def report(name: str, rate: int, seconds: float, results: list[dict[str, object]]) -> None:
    codes = Counter(int(str(result["code"])) for result in results)
    total = len(results) or 1
    print(f"{name} at {rate}/s for {seconds:g} s: {len(results)} sent, codes {dict(sorted(codes.items()))}")
    for label, wanted in (("served", SUCCESS), ("shed 503", {503})):
        if found := latencies(results, wanted):
            print(
                f"  {label:9} {len(found) / total:7.2%}  p50 {pct(found, 0.5):7.1f}  "
                f"p99 {pct(found, 0.99):7.1f}  max {found[-1]:7.1f} ms"
            )
    other = total - sum(codes[code] for code in (200, 201, 503))
    if other:
        print(f"  other    {other / total:7.2%}  (errors, timeouts or other statuses)")


def latencies(results: list[dict[str, object]], codes: set[int]) -> list[float]:
    """The latencies in ms of the results answered with one of `codes`, sorted."""
    answered = (result for result in results if int(str(result["code"])) in codes)
    return sorted(int(str(result["latency"])) / 1e6 for result in answered)


def cpu_spent(spent: float, seconds: float, done: int, per: str) -> str:
    """A component's CPU over an attack: its share of a core, and per request that succeeded."""
    return f"{spent / seconds:.0%} of a core, {spent / max(done, 1) * 1e6:,.0f} us per {per}"


def pct(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * share))]


def spread(sorted_ms: list[float]) -> str:
    """p50, p99 and max of sorted latencies in ms, as the per-window lines print them."""
    return f"p50 {pct(sorted_ms, 0.5):6.0f}  p99 {pct(sorted_ms, 0.99):6.0f}  max {sorted_ms[-1]:6.0f}"


def ceiling(seconds: float) -> None:
    """The bare app at a rate past what it can serve: its achieved rate is the machine's ceiling."""
    workers = ServingSettings().api_workers
    with reserved_ports(1) as (port,), open(os.devnull, "wb") as quiet:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.serving_load:bare_app",
                "--factory",
                f"--port={port}",
                f"--workers={workers}",
                "--no-access-log",
            ],
            stdout=quiet,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, servers=[server])
        results = attack([{"method": "GET", "url": f"{base}/bare"}], 8000, seconds)
        served = sum(1 for result in results if result["code"] == 200)
        print(f"bare app ({workers} workers), same client, same run: {served / seconds:,.0f} served/s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def reads(stack: RunningStack, members: int, rates: list[int], seconds: float) -> None:
    rng = random.Random(7)
    auth = {"Authorization": [f"Bearer {stack.admin_key}"]}
    urls = [f"{stack.read}/v1/members/m-{rng.randrange(members)}/balance" for _ in range(20_000)]
    targets: list[dict[str, object]] = [{"method": "GET", "url": url, "header": auth} for url in urls]
    read_api = with_children(component_pid(stack.process.pid, "read-api"))
    read_workers = workers(read_api[0])
    for rate in rates:
        before, cpu = shed_by_reason(stack.read), cpu_by_pid(read_api)
        results = attack(targets, rate, seconds)
        by_pid = cpu_spent_by_pid(cpu, cpu_by_pid(read_api))
        after = shed_by_reason(stack.read)
        spent, by_worker = sum(by_pid.values()), [by_pid.get(pid, 0.0) for pid in read_workers]
        report("GET /v1/members/{id}/balance", rate, seconds, results)
        shed = {reason: after[reason] - before.get(reason, 0) for reason in after}
        served = len(latencies(results, {200}))
        print(
            f"  shed by reason (the read API's metrics): {dict(sorted(shed.items()))}; read API CPU "
            f"{cpu_spent(spent, seconds, served, 'read served')}; its workers' shares of a core: "
            + ", ".join(f"{worker / seconds:.0%}" for worker in by_worker)
        )
        sent = seconds_in(results)
        print(f"  503s by second of the attack: {shed_by_second(sent, results)}")
        print(f"  from the second second on: {after_ramp(sent, results)}")
        time.sleep(2)


def seconds_in(results: list[dict[str, object]]) -> list[float]:
    """When each request was sent, in seconds from the first."""
    sent = [datetime.fromisoformat(str(result["timestamp"])).timestamp() for result in results]
    start = min(sent, default=0.0)
    return [at - start for at in sent]


def shed_by_second(sent: list[float], results: list[dict[str, object]]) -> dict[int, int]:
    """The 503s by the second of the attack they were sent in (`sent`, from `seconds_in`): an
    episode, or spread thin."""
    pairs = zip(sent, results, strict=True)
    return dict(sorted(Counter(int(at) for at, result in pairs if result["code"] == 503).items()))


def after_ramp(sent: list[float], results: list[dict[str, object]]) -> str:
    """p99s without the first second. Past capacity, the client opens hundreds of connections at
    once as its first requests wait (vegeta starts a worker, with a connection of its own, for
    each request no worker is free for); their first requests make most of the overall p99."""
    later = [result for at, result in zip(sent, results, strict=True) if at >= 1.0]
    found = [
        f"{label} p99 {pct(ms, 0.99):.1f} max {ms[-1]:.1f} ms"
        for label, code in (("served", 200), ("shed", 503))
        if (ms := latencies(later, {code}))
    ]
    return ", ".join(found) or "nothing"


def shed_by_reason(base: str) -> dict[str, int]:
    """The API's 503s so far by why they were shed (`loyalty_http_requests_shed_total`)."""
    scrape = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        sample.labels["reason"]: int(sample.value)
        for family in text_string_to_metric_families(scrape)
        if family.name == "loyalty_http_requests_shed"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def commands(stack: RunningStack, members: int, rate: int, seconds: float, warmup: float) -> None:
    """Purchases at `rate`, after an uncounted warm-up at the same rate (printed too): until then
    the command path is cold (the seeded history reaches the processor on the inbound topic)."""
    if warmup:
        report(
            "POST /v1/purchases, warm-up (not counted)",
            rate,
            warmup,
            attack(purchase_targets(stack, members, rate, warmup), rate, warmup),
        )
    started_ms = time.time() * 1000
    parts = stack_parts(stack.process.pid, stack.servers)
    before = {part: cpu_by_pid(pids) for part, pids in parts.items()}
    results = attack(purchase_targets(stack, members, rate, seconds), rate, seconds)
    # Listed again: a process started meanwhile (a new Postgres backend) counts from zero.
    parts_after = stack_parts(stack.process.pid, stack.servers)
    after = {part: cpu_by_pid(pids) for part, pids in parts_after.items()}
    report("POST /v1/purchases", rate, seconds, results)
    decided = len(latencies(results, SUCCESS))
    spent = {part: sum(cpu_spent_by_pid(before.get(part, {}), cpus).values()) for part, cpus in after.items()}
    total = cpu_spent(sum(spent.values()), seconds, decided, "purchase decided")
    print(f"  CPU of every part of the stack: {total}")
    print(
        "  by part, us per purchase decided: "
        + ", ".join(
            f"{part} {cpu / max(decided, 1) * 1e6:,.0f}"
            for part, cpu in sorted(spent.items(), key=lambda item: -item[1])
        )
    )
    ended = sum(1 for part, cpus in before.items() for pid in cpus if pid not in after.get(part, {}))
    if ended:
        print(f"  ({ended} processes ended during the attack: their CPU is not counted)")
    in_processor(stack, started_ms)


def purchase_targets(stack: RunningStack, members: int, rate: int, seconds: float) -> list[dict[str, object]]:
    """Targets for new purchases, each with an id of its own."""
    auth = {"Authorization": [f"Bearer {stack.admin_key}"], "Content-Type": ["application/json"]}
    run = uuid.uuid4().hex[:6]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    targets: list[dict[str, object]] = []
    for index in range(int(rate * seconds) + rate):
        body = {
            "type": "purchase",
            "purchase_id": f"load-{run}-{index}",
            "member_id": f"m-{index % members}",
            "amount": "88.00",
            "currency": "CNY",
            "occurred_at": now,
        }
        targets.append(
            {
                "method": "POST",
                "url": f"{stack.ledger}/v1/purchases",
                "header": auth,
                "body": base64.b64encode(json.dumps(body).encode()).decode(),
            }
        )
    return targets


def in_processor(stack: RunningStack, since_ms: float) -> None:
    """Command record appended to reply record appended, per command of the API sent since
    `since_ms`, from their timestamps."""
    settings = LedgerSettings(kafka_bootstrap=stack.kafka)
    appended = _timestamps(stack.kafka, settings.topic_commands)
    replied = _timestamps(stack.kafka, settings.topic_replies)
    spans = sorted(
        replied[c] - appended[c] for c in appended.keys() & replied.keys() if appended[c] >= since_ms
    )
    if spans:
        print(
            f"  in the processor (command appended -> reply appended): p50 {pct(spans, 0.5):.0f}  "
            f"p99 {pct(spans, 0.99):.0f}  max {spans[-1]:.0f} ms, over {len(spans)} commands"
        )


def _timestamps(bootstrap: str, topic: str) -> dict[str, float]:
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or set())]
    reader.assign(tps)
    reader.seek_to_beginning(*tps)
    ends = reader.end_offsets(tps)
    found: dict[str, float] = {}
    while any(reader.position(tp) < end for tp, end in ends.items()):
        for records in reader.poll(timeout_ms=1000).values():
            for record in records:
                found[json.loads(record.value)["command_id"]] = float(record.timestamp)
    reader.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read-rates", default="500,1000,3000", help="none: no reads")
    parser.add_argument("--command-rate", type=int, default=200, help="0: no commands")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--command-warmup", type=float, default=5, help="uncounted seconds of purchases first"
    )
    parser.add_argument("--purchases", type=int, default=20_000)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--busy-cores", type=int, default=0, help="cores to keep busy meanwhile")
    parser.add_argument("--cpu-quota", type=float, default=0, help="cores' worth of CPU for the stack")
    args = parser.parse_args()
    vegeta()
    with (
        busy_cores(args.busy_cores),
        cpu_quota(args.cpu_quota) as cgroup,
        loyalty_run(cgroup=cgroup) as stack,
    ):
        measure(args.purchases, args.members, stack)
        ceiling(min(args.seconds, 10))
        if args.read_rates != "none":
            rates = [int(rate) for rate in args.read_rates.split(",")]
            reads(stack, args.members, rates, args.seconds)
        if args.command_rate:
            commands(stack, args.members, args.command_rate, args.seconds, args.command_warmup)


if __name__ == "__main__":
    main()
