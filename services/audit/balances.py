"""`loyalty verify`'s balance checks: every member's points add up, and the read models agree.

`BalanceCheck` is pure: fed the records in log order, it folds each member's figures with
`schemas.effects`, the meaning the ledger and the projector give the events. After each command
(a member's events of one command are contiguous) earned + adjusted - redeemed - expired -
reversed must equal available + pending, where available and pending are what the events moved
in and out of lots, less the debt: an event whose figures say more or less than its lots moved
breaks it. The figures are also kept as they stood at the projector's positions (a member's first
record at or past its partition's position freezes them), to compare with the read models read
in one snapshot with those positions, as `loyalty replay` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from schemas.effects import Points, effect
from services.migrations import schema_options
from services.projector.fold import DUPLICATE, Decoded, decode

FIGURES = Points._fields
NOTHING = Points()
LISTED = 20


@dataclass(frozen=True)
class Unbalanced:
    """A member whose points stopped adding up after the command that ends at `sequence`."""

    member_id: str
    sequence: int
    points: Points


@dataclass(frozen=True)
class Difference:
    member_id: str
    figure: str
    log: int | str
    read_model: int | str


@dataclass(slots=True)
class _Member:
    sequence: int = 0
    command_id: str = ""
    points: Points = NOTHING
    # The figures at the projector's positions: set by the first record at or past them.
    at_positions: Points | None = None
    past_positions: bool = False


@dataclass(frozen=True)
class ReadModels:
    """The projector's positions (next offset per partition) and the members' figures at them."""

    positions: dict[int, int]
    members: dict[str, Points]


@dataclass(frozen=True)
class BalanceReport:
    program: Points
    unbalanced: list[Unbalanced]
    # Members' figures at the read models' positions (those with events before them).
    at_positions: dict[str, Points]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def members(self) -> int:
        return len(self.at_positions)


class BalanceCheck:
    """Folds records fed in log order; applies each member's events once, as the projector does."""

    def __init__(self, positions: dict[int, int] | None = None) -> None:
        self._positions = positions
        self._members: dict[str, _Member] = {}
        self._unbalanced: dict[str, Unbalanced] = {}
        self._skipped: dict[str, int] = {}

    def feed(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        record = decode(value)
        if not isinstance(record, Decoded):
            self._skipped[record] = self._skipped.get(record, 0) + 1
            return
        event = record.event
        member = self._members.get(event.member_id)
        if member is None:
            member = self._members[event.member_id] = _Member()
        past = self._positions is not None and offset >= self._positions.get(partition, 0)
        if past and not member.past_positions:
            member.past_positions = True
            member.at_positions = member.points if member.sequence else None
        if event.sequence <= member.sequence:
            self._skipped[DUPLICATE] = self._skipped.get(DUPLICATE, 0) + 1
            return
        if event.command_id != member.command_id:
            self._check(event.member_id, member)
        member.sequence, member.command_id = event.sequence, event.command_id
        member.points = member.points.plus(effect(event.data).points)

    def finish(self) -> BalanceReport:
        program = NOTHING
        at_positions = {}
        for member_id, member in self._members.items():
            self._check(member_id, member)
            program = program.plus(member.points)
            held = member.at_positions if member.past_positions else member.points
            if held is not None:
                at_positions[member_id] = held
        unbalanced = sorted(self._unbalanced.values(), key=lambda found: found.member_id)
        return BalanceReport(program, unbalanced, at_positions, dict(self._skipped))

    def _check(self, member_id: str, member: _Member) -> None:
        if member.sequence and not member.points.conserved and member_id not in self._unbalanced:
            self._unbalanced[member_id] = Unbalanced(member_id, member.sequence, member.points)


def differences(log: dict[str, Points], read: dict[str, Points]) -> list[Difference]:
    """Every figure the read models hold otherwise than the log says, member by member."""
    found = []
    for member_id in sorted(log.keys() | read.keys()):
        said, held = log.get(member_id), read.get(member_id)
        if said is None or held is None:
            found.append(
                Difference(
                    member_id, "row", "none" if said is None else "events", "none" if held is None else "row"
                )
            )
            continue
        found.extend(
            Difference(member_id, name, mine, theirs)
            for name, mine, theirs in zip(FIGURES, said, held, strict=True)
            if mine != theirs
        )
    return found


def read_models(url: str, schema: str, topic: str) -> ReadModels | None:
    """The projector's positions on `topic` and every member's figures, from one snapshot; None
    when the schema holds no projection of that topic."""
    with psycopg.connect(url, options=schema_options(schema)) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            found = conn.execute("SELECT to_regclass('projector_checkpoints')").fetchone()
            if found is None or found[0] is None:
                return None
            positions = conn.execute(
                "SELECT partition, next_offset FROM projector_checkpoints WHERE topic = %s", (topic,)
            ).fetchall()
            if not positions:
                return None
            query = sql.SQL("SELECT member_id, {} FROM members").format(
                sql.SQL(", ").join(map(sql.Identifier, FIGURES))
            )
            members = {row[0]: Points(*row[1:]) for row in conn.execute(query)}
    return ReadModels({int(p): int(offset) for p, offset in positions}, members)


def render(report: BalanceReport, compared: list[Difference] | str, listed: int = LISTED) -> list[str]:
    """What the auditor reads: whether the points add up, and whether the read models agree (or
    why they were not compared)."""
    rule = "earned + adjusted - redeemed - expired - reversed = available + pending"
    if report.unbalanced:
        lines = [f"balances: {len(report.unbalanced)} member(s) break {rule}; where each first does:"]
        lines += [
            f"  member {u.member_id} sequence {u.sequence}: {_sides(u.points)}"
            for u in report.unbalanced[:listed]
        ]
        lines.append(f"  program: {_sides(report.program)}")
    else:
        lines = [f"balances: {rule} for every member and the program: {_sides(report.program)}"]
    left_out = {why: n for why, n in sorted(report.skipped.items()) if why != DUPLICATE}
    if left_out:
        listing = ", ".join(f"{n} {why}" for why, n in left_out.items())
        lines.append(f"balances: events left out, as the projector leaves them: {listing}")
    if isinstance(compared, str):
        return [*lines, f"read models: not compared ({compared})"]
    if not compared:
        return [
            *lines,
            f"read models: {report.members} streams agree with the log up to the projector's positions",
        ]
    lines.append(f"read models: {len(compared)} difference(s) from the log up to the projector's positions:")
    lines += [
        f"  member {d.member_id} {d.figure}: log {d.log}, read model {d.read_model}"
        for d in compared[:listed]
    ]
    return lines


def _sides(points: Points) -> str:
    earned, adjusted, redeemed, expired, reversed_ = (
        points.lifetime_earned,
        points.adjusted,
        points.redeemed,
        points.expired,
        points.reversed,
    )
    return (
        f"{earned} + {adjusted} - {redeemed} - {expired} - {reversed_} = {points.net}, "
        f"{points.available} + {points.pending} = {points.outstanding}"
    )
