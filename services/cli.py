"""`loyalty`: one entry point for the services, the local infrastructure and (later) the auditor tools."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable

from services import logs

COMPONENTS = ("ledger-api", "processor", "scheduler", "projector", "read-api")
# Tools with options of their own: name -> (module, one-line help, what `--help` explains).
TOOLS = {
    "replay": (
        "services.audit.replay",
        "rebuild every read model from the log into a fresh schema and compare it with the live one",
        "Rebuilds every read model from offset 0 of the events topic into a fresh Postgres schema, up "
        "to the positions the live read models have reached, then compares the two table by table "
        "(rows and checksums) and prints a fingerprint of the rebuilt models. Exits 1 on any "
        "difference. With --switch, an identical rebuild catches up with the log and replaces the "
        "live schema atomically; the previous one is kept under a '_retired_' name.",
    ),
    "verify": (
        "services.audit.verify",
        "check every member's hash chain, that its points add up, and that the read models agree",
        "Walks the events topic from offset 0 to the end offsets taken at start and checks, for every "
        "stream (each member, and $program), that sequences run 1, 2, 3, ... and that prev_hash and "
        "hash chain over the documents as stored; that after each command earned + adjusted - "
        "redeemed - expired - reversed = available + pending, per member and for the program; and, "
        "when LOYALTY_DATABASE_URL is set, that every member's balance figures in the read models "
        "equal the log's up to the positions the projector has applied. Prints the counts, the first "
        "break of each stream, every difference and the first break overall. Exits 1 on any break or "
        "difference, 2 when the log or the read models cannot be read. --topic checks another topic.",
    ),
    "history": (
        "services.audit.history",
        "a member's events with the running balance and the rule behind each change in points",
        "Reads the member's events from the events topic (the source of truth) and prints them in "
        "sequence with the points each one moved, the running available and pending balances, and "
        "the rule and rules version that produced each change. --as-of cuts the history at an "
        "instant of business time.",
    ),
    "datakeys": (
        "services.personal_data.admin",
        "rotate the master key: rewrap every member's data key",
        "Members' data keys are wrapped by the master key (LOYALTY_MASTER_KEY). To rotate it, set the "
        "new one there and the old ones in LOYALTY_PREVIOUS_MASTER_KEYS, then run `loyalty datakeys "
        "rewrap`: every data key is wrapped anew; nothing in the log changes.",
    ),
    "keys": (
        "services.access.admin",
        "create, list and revoke API keys",
        "API keys for the ledger and read APIs. A key has an id, a name and scopes: commands "
        "(purchases, refunds, redemptions and their cancels), read (balances, tiers, activity, lots, "
        "segments, metrics), pii:read, audit (history), admin (adjustments, manual tiers, members' "
        "data). Only a hash of each key is stored; its token is shown once, at creation.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loyalty",
        description="Event-sourced loyalty points ledger. Settings come from LOYALTY_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="start local Kafka and Postgres if none are configured, then every service")
    infra = sub.add_parser("infra", help="manage the local Kafka and Postgres used when no endpoints are set")
    infra.add_argument("action", choices=("up", "down", "status"))
    sub.add_parser("topics", help="create the missing topics with their configs")
    sub.add_parser("migrate", help="apply the read models' SQL migrations")
    for component in COMPONENTS:
        sub.add_parser(component, help=f"run the {component} alone, in the foreground")
    tools = {name: importlib.import_module(module) for name, (module, _, _) in TOOLS.items()}
    for name, (_, help_text, description) in TOOLS.items():
        tools[name].add_arguments(sub.add_parser(name, help=help_text, description=description))
    args = parser.parse_args(argv)
    logs.configure()
    if args.command in tools:
        return int(tools[args.command].run(args))
    handlers: dict[str, Callable[[], int]] = {
        "run": _run,
        "topics": _topics,
        "migrate": _migrate,
        "ledger-api": _ledger_api,
        "processor": _processor,
        "scheduler": _scheduler,
        "projector": _projector,
        "read-api": _read_api,
    }
    if args.command == "infra":
        return _infra(args.action)
    return handlers[args.command]()


def _infra(action: str) -> int:
    from localinfra.process import InfraError
    from localinfra.stack import LocalStack

    stack = LocalStack.from_env()
    try:
        if action == "up":
            for name, value in stack.up().items():
                print(f"{name}={value}")
        elif action == "down":
            stack.down()
        for line in stack.status():
            print(line, file=sys.stderr)
    except InfraError as error:
        print(f"loyalty infra {action}: {error}", file=sys.stderr)
        return 1
    return 0


def _run() -> int:
    from services.supervisor import run_all

    return run_all()


def _topics() -> int:
    from services.ledger.settings import LedgerSettings
    from services.ledger.topics import ensure_topics

    ensure_topics(LedgerSettings())
    return 0


def _migrate() -> int:
    from services.migrations import migrate
    from services.projector.settings import ProjectorSettings

    settings = ProjectorSettings()
    migrate(settings.database_url, settings.read_schema)
    return 0


def _until_signalled(loop: Callable[[threading.Event], None]) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    loop(stop)
    return 0


def _processor() -> int:
    from schemas.rules import load_rules
    from services.ledger.processor import Processor
    from services.ledger.settings import LedgerSettings

    settings = LedgerSettings()
    return _until_signalled(Processor(settings, load_rules(settings.rules_file)).run)


def _scheduler() -> int:
    from services.ledger.scheduler import Scheduler
    from services.ledger.settings import LedgerSettings

    return _until_signalled(Scheduler(LedgerSettings()).run)


def _projector() -> int:
    from services.migrations import migrate
    from services.projector.projector import Projector
    from services.projector.settings import ProjectorSettings

    settings = ProjectorSettings()
    migrate(settings.database_url, settings.read_schema)
    return _until_signalled(Projector(settings).run)


def _ledger_api() -> int:
    from services.ledger.settings import LedgerSettings
    from services.serving import serve

    settings = LedgerSettings()
    return serve("services.ledger.api:app_from_env", settings.ledger_host, settings.ledger_port, settings)


def _read_api() -> int:
    from services.projector.settings import ProjectorSettings
    from services.serving import serve

    settings = ProjectorSettings()
    return serve("services.projector.api:app_from_env", settings.read_host, settings.read_port, settings)


if __name__ == "__main__":
    sys.exit(main())
