"""`loyalty history` against a real events topic: only the member's own events, balanced as by hand."""

from __future__ import annotations

import json

import pytest

from schemas.events import Event
from services import cli
from services.ledger.partitioning import partition_for
from tests.conftest import Isolated
from tests.integration.projection import publish_events
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of
from tests.unit.test_history_rows import EXPECTED, MEMBER, crafted_log

NEIGHBOUR = "h-10"  # shares h-1's partition: only the record key tells their events apart
STRANGER = "h-2"  # in another partition, which the command never reads


def interleaved(*logs: list[Event]) -> list[Event]:
    """The logs' events taken in turn, as the processor appends members' events side by side."""
    longest = max(len(log) for log in logs)
    return [log[index] for index in range(longest) for log in logs if index < len(log)]


@pytest.fixture
def published(isolated: Isolated, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = isolated.ledger()
    assert partition_for(NEIGHBOUR, settings.partitions) == partition_for(MEMBER, settings.partitions)
    assert partition_for(STRANGER, settings.partitions) != partition_for(MEMBER, settings.partitions)
    others = [
        log_of(
            member_id, make.purchase("o-1", 99900, at(2025, 1, 20)), make.redeem("o-r", 500, at(2025, 2, 1))
        )
        for member_id in (NEIGHBOUR, STRANGER)
    ]
    publish_events(isolated, interleaved(crafted_log(), *others))
    isolated.export(monkeypatch)


def history(*argv: str) -> int:
    return cli.main(["history", *argv])


@pytest.mark.usefixtures("published")
def test_the_member_history_is_its_own_events_with_running_balances(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert history(MEMBER, "--format", "json") == 0

    documents = json.loads(capsys.readouterr().out)
    assert [
        (
            document["sequence"],
            document["type"],
            document["available_change"],
            document["pending_change"],
            document["available"],
            document["pending"],
            document["explanation"],
        )
        for document in documents
    ] == EXPECTED
    assert {document["rules_version"] for document in documents} == {2}


@pytest.mark.usefixtures("published")
def test_the_table_ends_with_the_balance_it_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert history(MEMBER) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "h-1: 16 event(s), available 377, pending 0"
    assert len(lines) == 2 + 16 + 2  # header, rule, the events, a blank line, the balance

    assert history(MEMBER, "--as-of", "2025-04-05") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "h-1 as of 2025-04-05T00:00:00Z: 11 event(s), available 127, pending 0"


@pytest.mark.usefixtures("published")
def test_a_member_without_events_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert history("h-nobody", "--format", "csv") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no events for member 'h-nobody'" in captured.err
