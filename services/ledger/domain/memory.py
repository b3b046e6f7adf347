"""What a member's account remembers of the commands it has seen, and for how long.

Retries are recognised by what is remembered: command outcomes (by command id, and the
Idempotency-Key each was sent under) and business ids. Each is remembered while a retry of it
could still do harm, on the processing clock (the time each command's record reached the log,
never a command's own date), so that no part of an account grows with the member's history.
The horizon is fixed, not configured: an account is the fold of its events, and a setting would
fold one log into different accounts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from schemas.events import CommandRejected, Event, LotPoints

REMEMBERED_FOR = timedelta(days=30)
# Outcomes per member, whatever their age: a flood of commands cannot grow an account either.
OUTCOME_LIMIT = 1_000


@dataclass(frozen=True)
class Outcome:
    """What a command did: the sequences of its events, and whether it was rejected.

    `recorded_at`: when its record reached the log (None in state kept before outcomes had a
    time); `key`: the Idempotency-Key it was sent under (its correlation id, when that differs
    from the command id).
    """

    first_sequence: int
    last_sequence: int
    rejected: bool = False
    recorded_at: datetime | None = None
    key: str | None = None


class Spending(Protocol):
    @property
    def command_id(self) -> str: ...

    @property
    def from_lots(self) -> tuple[LotPoints, ...]: ...


S = TypeVar("S", bound=Spending)


def remember(outcomes: dict[str, Outcome], event: Event) -> tuple[dict[str, Outcome], set[str]]:
    """The outcomes, the oldest first, with this event's command last; and the command ids
    forgotten: those recorded more than REMEMBERED_FOR before this event, and the oldest beyond
    OUTCOME_LIMIT.

    Outcomes kept before they had a time count from the member's first event since.
    """
    known = outcomes.get(event.command_id)
    remembered = dict(outcomes)
    remembered.pop(event.command_id, None)
    if remembered and next(iter(remembered.values())).recorded_at is None:
        remembered = {
            command_id: o if o.recorded_at is not None else replace(o, recorded_at=event.recorded_at)
            for command_id, o in remembered.items()
        }
    remembered[event.command_id] = Outcome(
        first_sequence=known.first_sequence if known else event.sequence,
        last_sequence=event.sequence,
        rejected=isinstance(event.data, CommandRejected),
        recorded_at=event.recorded_at,  # every event of a command has its record's time
        key=event.correlation_id if event.correlation_id != event.command_id else None,
    )
    horizon = event.recorded_at - REMEMBERED_FOR
    forgotten: set[str] = set()
    for command_id, outcome in remembered.items():
        recorded_at = outcome.recorded_at or event.recorded_at
        if len(remembered) - len(forgotten) <= OUTCOME_LIMIT and recorded_at >= horizon:
            break
        forgotten.add(command_id)
    for command_id in forgotten:
        del remembered[command_id]
    return remembered, forgotten


def without_commands(ids: dict[str, str], forgotten: set[str]) -> dict[str, str]:
    """Business ids (-> their command) whose command's outcome is still remembered; the same dict
    when none goes. Ids whose outcomes were gone before outcomes had a time are a fixed set, and
    stay."""
    if not forgotten or not any(command_id in forgotten for command_id in ids.values()):
        return ids
    return {business_id: command_id for business_id, command_id in ids.items() if command_id not in forgotten}


def still_cancellable(redemptions: dict[str, S], outcomes: dict[str, Outcome], now: datetime) -> dict[str, S]:
    """The redemptions whose command is remembered, or some of whose points would still be alive:
    until then a redemption can be cancelled and its id must not be spent again. The same dict
    when none goes."""
    gone = []
    for redemption_id, redemption in redemptions.items():
        if redemption.command_id in outcomes or any(t.expires_at > now for t in redemption.from_lots):
            break  # the oldest first: the rest wait for it, at worst until its points expire
        gone.append(redemption_id)
    if not gone:
        return redemptions
    kept = dict(redemptions)
    for redemption_id in gone:
        del kept[redemption_id]
    return kept
