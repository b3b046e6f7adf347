"""`loyalty verify`'s chain check on raw records, without Kafka: each kind of tampering is named."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import zip_longest
from typing import Any

import pytest

from schemas.canonical import GENESIS_HASH, event_hash
from services.audit.verify import Break, ChainCheck, Report, render
from tests.unit.ledger_fixtures import TWO_LOTS, adjust, log_of, purchase, record_rules, redeem, refund

Record = tuple[bytes | None, Any]  # key, and the JSON document (or raw bytes) as stored
Log = list[Record]


def documents(*logs: list[Any]) -> Log:
    """The members' events as published, interleaved one by one (each member's order kept)."""
    streams = [[(event.member_id.encode(), json.loads(event.to_bytes())) for event in log] for log in logs]
    return [record for row in zip_longest(*streams) for record in row if record is not None]


def program_and_two_members() -> Log:
    return documents(
        log_of("$program", record_rules()),
        log_of("m-a", *TWO_LOTS, redeem("r-1", 50), refund("rf-1", "o-1", 5000)),
        log_of("m-b", purchase("o-9", 30000), adjust("a-1", 20), redeem("r-2", 100)),
    )


def verified(log: Log) -> Report:
    check = ChainCheck()
    for offset, (key, document) in enumerate(log):
        value = document if isinstance(document, bytes) else json.dumps(document).encode()
        check.feed(key, value, 0, offset)
    return check.finish()


def where(log: Log, member_id: str, sequence: int) -> int:
    return next(
        index
        for index, (_, document) in enumerate(log)
        if isinstance(document, dict)
        and (document["member_id"], document["sequence"]) == (member_id, sequence)
    )


def resealed(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "hash": event_hash(document)}


def test_an_untouched_log_is_intact() -> None:
    log = program_and_two_members()
    report = verified(log)
    assert report.intact
    assert (report.events, report.streams, report.breaks) == (len(log), 3, 0)
    assert render(report, "events")[-1] == "chain intact"


def alter_points(log: Log) -> None:
    log[where(log, "m-a", 3)][1]["data"]["points"] += 1  # PointsEarned, not re-hashed


def drop(log: Log) -> None:
    del log[where(log, "m-b", 2)]


def swap(log: Log) -> None:
    i, j = where(log, "m-a", 4), where(log, "m-a", 5)
    log[i], log[j] = log[j], log[i]


def duplicate(log: Log) -> None:
    i = where(log, "m-a", 3)
    log.insert(i + 1, log[i])


def relink(log: Log) -> None:
    """A forged predecessor: the event's own hash is made to match, the link to sequence 2 is not."""
    i = where(log, "m-b", 3)
    log[i] = (log[i][0], resealed({**log[i][1], "prev_hash": "f" * 64}))


def forge_genesis(log: Log) -> None:
    i = where(log, "m-a", 1)
    log[i] = (log[i][0], resealed({**log[i][1], "prev_hash": "1" * 64}))


def rehash_altered(log: Log) -> None:
    """Altered and re-hashed: its own hash holds, the next event's prev_hash no longer does."""
    i = where(log, "m-a", 3)
    document = log[i][1]
    log[i] = (log[i][0], resealed({**document, "data": {**document["data"], "points": 1000}}))


def not_json(log: Log) -> None:
    log[where(log, "m-b", 2)] = (b"m-b", b'{"member_id": "m-b", "sequ')


def no_sequence(log: Log) -> None:
    i = where(log, "m-b", 2)
    log[i] = (b"m-b", {key: value for key, value in log[i][1].items() if key != "sequence"})


def no_correlation_id(log: Log) -> None:
    i = where(log, "m-a", 2)
    log[i] = (b"m-a", {key: value for key, value in log[i][1].items() if key != "correlation_id"})


def rekey(log: Log) -> None:
    i = where(log, "m-a", 2)
    log[i] = (b"m-z", log[i][1])


def drop_first(log: Log) -> None:
    del log[where(log, "m-b", 1)]


def drop_two(log: Log) -> None:
    del log[where(log, "m-a", 4)]
    del log[where(log, "m-a", 5)]


@pytest.mark.parametrize(
    ("tamper", "member_id", "sequence", "reason"),
    [
        (alter_points, "m-a", 3, "hash does not match the event as stored (altered)"),
        (drop, "m-b", 2, "sequence 2 missing (sequence 3 follows 1)"),
        (swap, "m-a", 4, "out of order: sequence 4 after 5"),
        (duplicate, "m-a", 3, "repeated: sequence 3 again (a copy)"),
        (relink, "m-b", 3, "prev_hash is not the hash of sequence 2"),
        (forge_genesis, "m-a", 1, "prev_hash of sequence 1 is not the genesis hash"),
        (rehash_altered, "m-a", 4, "prev_hash is not the hash of sequence 3"),
        (not_json, "m-b", None, "not JSON"),
        (no_sequence, "m-b", None, "sequence is not a positive integer"),
        (no_correlation_id, "m-a", 2, "missing correlation_id; hash does not match"),
        (rekey, "m-a", 2, "record key 'm-z' is not the member_id"),
        (drop_first, "m-b", 1, "sequence 1 missing (sequence 2 follows 0)"),
        (drop_two, "m-a", 4, "sequence 4..5 missing (sequence 6 follows 3)"),
    ],
)
def test_tampering_is_named_by_member_and_sequence(
    tamper: Callable[[Log], None], member_id: str, sequence: int | None, reason: str
) -> None:
    log = program_and_two_members()
    tamper(log)
    report = verified(log)
    assert not report.intact
    [found] = report.first_breaks
    assert (found.member_id, found.sequence) == (member_id, sequence)
    assert found.reason.startswith(reason)
    assert (
        render(report, "events")[-1]
        == f"first break: member {member_id} sequence {sequence or '?'}: {found.reason}"
    )


def test_a_swap_is_one_break_and_the_late_event_still_links() -> None:
    log = program_and_two_members()
    swap(log)
    assert verified(log).breaks == 1


def test_a_swapped_event_that_does_not_link_is_reported_too() -> None:
    log = program_and_two_members()
    i = where(log, "m-a", 4)
    log[i] = (b"m-a", resealed({**log[i][1], "prev_hash": GENESIS_HASH}))
    swap(log)
    [found] = verified(log).first_breaks
    assert found.reason == (
        "out of order: sequence 4 after 5; prev_hash is not the hash of sequence 3"
        "; prev_hash of sequence 5 is not the hash of 4"  # 4 was re-hashed
    )


def test_an_event_written_in_an_older_schema_version_verifies_as_stored() -> None:
    """The hash covers the document as written, not its upcast: PointsRedeemed v1 had no currency."""
    log = documents(log_of("m-a", *TWO_LOTS, redeem("r-1", 50)))
    prev_hash = GENESIS_HASH
    for index, (key, document) in enumerate(log):
        if document["type"] == "PointsRedeemed":
            data = {name: value for name, value in document["data"].items() if name != "currency"}
            document = {**document, "schema_version": 1, "data": data}
        log[index] = (key, resealed({**document, "prev_hash": prev_hash}))
        prev_hash = log[index][1]["hash"]
    assert verified(log).intact


def test_a_member_split_across_partitions_is_a_break() -> None:
    events = log_of("m-a", *TWO_LOTS)
    check = ChainCheck()
    for offset, event in enumerate(events):
        check.feed(b"m-a", event.to_bytes(), 0 if offset < 2 else 1, offset)
    [found] = check.finish().first_breaks
    assert found == Break("m-a", 3, 2, 1, "on partition 1, the member's earlier events on 0")


def test_the_listing_keeps_the_first_break_of_each_stream_and_caps_the_lines() -> None:
    check = ChainCheck()
    for index in range(25):
        check.feed(f"m-{index:02d}".encode(), b"garbage", index % 2, index)
        check.feed(f"m-{index:02d}".encode(), b"more garbage", index % 2, 100 + index)
    lines = render(check.finish(), "events")
    assert lines[:2] == [
        "50 events in 0 streams (members and $program) on events",
        "50 breaks in 25 streams; the first of each:",
    ]
    assert lines[2] == "  member m-00 sequence ? (partition 0, offset 0): not JSON"
    assert len(lines) == 2 + 20 + 2
    assert lines[-2:] == [
        "  ... and 5 more streams with breaks",
        "first break: member m-00 sequence ?: not JSON",
    ]
