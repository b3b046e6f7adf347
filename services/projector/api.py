"""The read API: the read models in Postgres, with read-your-writes waits and lag you can see."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, LiteralString

import psycopg
from fastapi import Depends, FastAPI, Path, Query
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from schemas.events import Event
from schemas.inbound import MEMBER_ID_PATTERN
from schemas.position import InvalidPosition, decode_position, encode_position
from schemas.rules import ProgramRules
from services import collector, logs
from services.access.guard import Guard
from services.access.keys import Principal
from services.body_limit import install_body_limit
from services.children import end_with_parent
from services.http_metrics import install_http_metrics
from services.kafka_offsets import committed_reader, end_offsets
from services.ledger.domain.calendar import add_months
from services.migrations import migrate, schema_options
from services.personal_data import keystore, profiles
from services.personal_data.crypto import InvalidKey
from services.problems import Problem, install_problem_handlers
from services.projector import queries
from services.projector.cursors import decode_cursor, decode_int_cursor, encode_cursor
from services.projector.program_metrics import Period, period_count, period_starts, periods, value_in_force
from services.projector.segments import RECENCY, recency, recency_bounds
from services.projector.settings import ProjectorSettings
from services.projector.views import (
    Activity,
    ActivityItem,
    Balance,
    BalanceAt,
    Health,
    History,
    Lot,
    Lots,
    Member,
    NextTier,
    ProfileFields,
    ProfileView,
    ProgramMetrics,
    SegmentMember,
    SegmentMembers,
    TierChange,
    TierStatus,
    TierView,
)

log = logging.getLogger(__name__)
MemberIdPath = Annotated[str, Path(pattern=MEMBER_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=200)]
POLL_INTERVAL_S = 0.01
POOL_SIZE = 10
MAX_PERIODS = 400


def _not_found(member_id: str) -> Problem:
    return Problem(404, "member_not_found", "Unknown member", f"no member {member_id!r}")


class _Backend:
    """What the routes share: the pool, the rules in force (cached briefly), and a Kafka reader."""

    RULES_TTL_S = 2.0

    def __init__(self, settings: ProjectorSettings) -> None:
        self.settings = settings
        # Autocommit: every read is one statement, and BEGIN/COMMIT would triple the round trips.
        self.pool = AsyncConnectionPool(
            settings.database_url,
            # Every connection opened up front: one opened under load (a Postgres backend started,
            # authenticated) held up the requests behind it, most of the p99 at 1,000 reads/s.
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            # Admission bounds the requests in flight; a longer wait means Postgres is in trouble.
            timeout=2.0,
            open=False,
            kwargs={"autocommit": True, "options": schema_options(settings.read_schema)},
        )
        self._offsets: KafkaConsumer | None = None
        self._offsets_lock = threading.Lock()
        self._rules: tuple[float, ProgramRules] | None = None

    async def rules(self) -> ProgramRules:
        if self._rules is None or time.monotonic() - self._rules[0] > self.RULES_TTL_S:
            async with self.pool.connection() as conn:
                self._rules = (time.monotonic(), await queries.rules(conn))
        return self._rules[1]

    def _end_offsets(self) -> dict[int, int]:
        with self._offsets_lock:
            if self._offsets is None:
                self._offsets = committed_reader(self.settings.kafka_bootstrap, "loyalty-read-api")
            return end_offsets(self._offsets, self.settings.topic_events)

    async def partitions(self) -> list[dict[str, Any]]:
        """Per partition: end of the log, applied offset and batch statistics."""
        try:
            ends = await asyncio.to_thread(self._end_offsets)
        except KafkaError as error:
            raise Problem(503, "not_ready", "Kafka is not reachable", str(error)) from None
        try:
            async with self.pool.connection(timeout=3) as conn:
                cur = await conn.execute(
                    "SELECT partition, next_offset, batches, records, apply_seconds "
                    "FROM projector_checkpoints WHERE topic = %s",
                    (self.settings.topic_events,),
                )
                applied = {int(row[0]): row for row in await cur.fetchall()}
        except (psycopg.Error, PoolTimeout) as error:
            raise Problem(503, "not_ready", "Postgres is not reachable", type(error).__name__) from None
        result = []
        for partition, end in sorted(ends.items()):
            _, offset, batches, records, seconds = applied.get(partition, (partition, 0, 0, 0, 0.0))
            result.append(
                {
                    "partition": partition,
                    "end": end,
                    "applied": int(offset),
                    "lag": max(0, end - int(offset)),
                    "batches": int(batches),
                    "records": int(records),
                    "seconds": float(seconds),
                }
            )
        return result

    def close(self) -> None:
        with self._offsets_lock:
            if self._offsets is not None:
                self._offsets.close()


def app_from_env() -> FastAPI:
    """The app as `loyalty read-api` serves it, made in each worker process."""
    logs.configure()
    end_with_parent()
    return create_app(ProjectorSettings())


def create_app(settings: ProjectorSettings) -> FastAPI:
    backend = _Backend(settings)
    guard = Guard(settings)
    _, masters = settings.master_keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, settings.database_url, settings.read_schema)
        await backend.pool.open(wait=True)
        await guard.open()
        collector.freeze_survivors()
        try:
            yield
        finally:
            await guard.close()
            await backend.pool.close()
            backend.close()

    app = FastAPI(
        title="Loyalty ledger: read API",
        version="1",
        lifespan=lifespan,
        description="Balances, tiers, activity, lots, history, segments and program metrics. Every read "
        "accepts `min_position` (from a command's answer) to read its own writes.",
    )
    install_problem_handlers(app, [backend.pool, guard.pool])
    install_body_limit(app, settings.max_body_bytes)
    install_http_metrics(app, "read-api", settings, lambda _: _projector_metrics(backend))

    async def caught_up(
        min_position: Annotated[
            str | None, Query(description="wait until the read models include this position")
        ] = None,
    ) -> None:
        """Read-your-writes: wait, bounded, until the position is applied; 503 rather than stale data."""
        if min_position is None:
            return
        try:
            stream, sequence = decode_position(min_position)
        except InvalidPosition as error:
            raise Problem(422, "invalid_position", "The position token is not valid", str(error)) from None
        deadline = time.monotonic() + settings.read_wait_s
        while True:
            # A connection per check: waiting readers must not hold the pool from the others.
            async with backend.pool.connection() as conn:
                if await queries.stream_sequence(conn, stream) >= sequence:
                    return
            if time.monotonic() >= deadline:
                raise Problem(
                    503,
                    "position_not_applied",
                    "The read models have not applied that position yet",
                    f"still behind after {settings.read_wait_s:g} s",
                )
            await asyncio.sleep(POLL_INTERVAL_S)

    # The key is checked before any wait.
    v1 = [Depends(guard.require("read")), Depends(caught_up)]
    audit = [Depends(guard.require("audit")), Depends(caught_up)]
    pii = Depends(guard.require("pii:read"))

    async def member_now(
        conn: AsyncConnection, member_id: str
    ) -> tuple[dict[str, Any], ProgramRules, datetime, datetime]:
        """The member's row with its qualifying window as of now, the rules, the window start and now."""
        rules = await backend.rules()
        now = datetime.now(UTC)
        start = add_months(now, -rules.qualifying_window_months)
        row = await queries.member(conn, member_id, start, now)
        if row is None:
            raise _not_found(member_id)
        return row, rules, start, now

    @app.get("/v1/members/{member_id}", response_model=Member, dependencies=v1)
    async def get_member(member_id: MemberIdPath) -> Member:
        """Balance, tier with progress to the next, recency segment and last activity."""
        async with backend.pool.connection() as conn:
            row, rules, start, now = await member_now(conn, member_id)
        return Member(
            member_id=member_id,
            enrolled_at=row["enrolled_at"],
            balance=Balance.model_validate(row),
            tier=_tier_status(row, rules, start),
            segment=recency(row["last_kept_purchase_at"], recency_bounds(now, rules)),
            favourite_category=row["favourite"],
            profile=await _profile(member_id, row["profile_fields"], row["profile_erased"], masked=True),
            last_purchase_at=row["last_purchase_at"],
            last_activity_at=row["last_event_at"],
            position=encode_position(member_id, row["last_sequence"]),
        )

    async def _profile(
        member_id: str, sealed: dict[str, str] | None, erased: bool | None, masked: bool
    ) -> ProfileFields | None:
        if sealed is None:
            return None
        if erased:
            return ProfileFields(erased=True)
        try:
            async with guard.pool.connection() as conn:
                key = await keystore.data_key(conn, masters, member_id)
            if key is None:  # the key is destroyed: erased, even before the event is projected
                return ProfileFields(erased=True)
            fields = profiles.open_fields(key[1], member_id, sealed)
        except InvalidKey as error:
            log.error("profile unreadable", extra={"member_id": member_id, "reason": str(error)})
            if masked:  # an ordinary read goes on without it
                return None
            raise Problem(503, "profile_unreadable", "The profile cannot be decrypted now") from None
        return ProfileFields.model_validate(profiles.masked(fields) if masked else fields)

    # The key is checked before the wait: an outsider learns nothing from a position token.
    @app.get(
        "/v1/members/{member_id}/profile", response_model=ProfileView, dependencies=[pii, Depends(caught_up)]
    )
    async def get_profile(member_id: MemberIdPath, caller: Principal = pii) -> ProfileView:
        """The member's profile in clear; `{"erased": true}` after erasure. Every read is logged."""
        async with backend.pool.connection() as conn:
            if await queries.applied_sequence(conn, member_id) is None:
                raise _not_found(member_id)
            found = await queries.profile(conn, member_id)
        if found is None:
            raise Problem(
                404, "profile_not_found", "The member has no profile", f"no profile for {member_id!r}"
            )
        shown = await _profile(member_id, found[0], found[1], masked=False)
        assert shown is not None
        log.info("profile read", extra={"key_id": caller.key_id, "member_id": member_id})
        return ProfileView(member_id=member_id, **shown.model_dump())

    @app.get("/v1/members/{member_id}/balance", response_model=BalanceAt, dependencies=v1)
    async def get_balance(
        member_id: MemberIdPath,
        as_of: Annotated[
            datetime | None, Query(description="business time (occurred_at) to compute at")
        ] = None,
        known_at: Annotated[
            datetime | None, Query(description="count only events recorded (recorded_at) by then")
        ] = None,
    ) -> BalanceAt:
        """The balance now, or at any past instant as the log knew it at another."""
        async with backend.pool.connection() as conn:
            if as_of is None and known_at is None:  # the hot path: one row, not the member's history
                row = await queries.balance_now(conn, member_id)
                if row is None:
                    raise _not_found(member_id)
                sequence = row.pop("last_sequence")
            else:
                found = await queries.applied_sequence(conn, member_id)
                if found is None:
                    raise _not_found(member_id)
                sequence = found
                row = await queries.balance_at(conn, member_id, _aware(as_of), _aware(known_at))
        return BalanceAt(
            member_id=member_id,
            as_of=as_of,
            known_at=known_at,
            position=encode_position(member_id, sequence),
            **row,
        )

    @app.get("/v1/members/{member_id}/tier", response_model=TierView, dependencies=v1)
    async def get_tier(member_id: MemberIdPath) -> TierView:
        """Current tier, qualifying spend and purchases in the window, and every tier change."""
        async with backend.pool.connection() as conn:
            row, rules, start, _ = await member_now(conn, member_id)
            history = await queries.tier_history(conn, member_id)
        status = _tier_status(row, rules, start)
        return TierView(
            member_id=member_id,
            history=[TierChange.model_validate(change) for change in history],
            **status.model_dump(),
        )

    @app.get("/v1/members/{member_id}/lots", response_model=Lots, dependencies=v1)
    async def get_lots(member_id: MemberIdPath) -> Lots:
        """Open point lots, soonest expiry first; pending lots carry `matures_at`."""
        async with backend.pool.connection() as conn:
            if await queries.applied_sequence(conn, member_id) is None:
                raise _not_found(member_id)
            rows = await queries.lots(conn, member_id)
        return Lots(member_id=member_id, lots=[Lot.model_validate(row) for row in rows])

    @app.get("/v1/members/{member_id}/activity", response_model=Activity, dependencies=v1)
    async def get_activity(member_id: MemberIdPath, limit: Limit = 20, cursor: str | None = None) -> Activity:
        """Purchases, refunds, redemptions, expiries, adjustments and tier changes, newest first."""
        before = None if cursor is None else decode_int_cursor("activity", cursor)
        async with backend.pool.connection() as conn:
            if await queries.applied_sequence(conn, member_id) is None:
                raise _not_found(member_id)
            rows = await queries.activity(conn, member_id, before, limit + 1)
        items = [ActivityItem.model_validate(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Activity(
            member_id=member_id,
            items=items,
            next_cursor=encode_cursor("activity", items[-1].sequence) if more else None,
        )

    @app.get("/v1/members/{member_id}/history", response_model=History, dependencies=audit)
    async def get_history(member_id: MemberIdPath, limit: Limit = 100, cursor: str | None = None) -> History:
        """The member's events as in the log, in sequence, each at the current version of its type."""
        after = 0 if cursor is None else decode_int_cursor("history", cursor)
        async with backend.pool.connection() as conn:
            if await queries.applied_sequence(conn, member_id) is None:
                raise _not_found(member_id)
            rows = await queries.history(conn, member_id, after, limit + 1)
        page = rows[:limit]
        return History(
            member_id=member_id,
            events=[Event.model_validate(event).document() for _, event in page],
            next_cursor=encode_cursor("history", page[-1][0]) if len(rows) > limit else None,
        )

    @app.get("/v1/segments/{segment}/members", response_model=SegmentMembers, dependencies=v1)
    async def get_segment(
        segment: Annotated[
            str,
            Path(
                description="`active`, `silent`, `churned` (recency of the last purchase not refunded "
                "in full), `new` (never bought), `core`, a tier name, or `category:<name>` (favourite "
                "category)",
                max_length=80,
                pattern=r"^[^\x00]+$",
            ),
        ],
        limit: Limit = 50,
        cursor: str | None = None,
    ) -> SegmentMembers:
        """Members of a segment, by member id."""
        rules = await backend.rules()
        condition, params = _segment_condition(segment, rules, datetime.now(UTC))
        after = "" if cursor is None else decode_cursor("segment", cursor)
        async with backend.pool.connection() as conn:
            rows = await queries.segment_members(conn, condition, params, after, limit + 1)
        members = [SegmentMember.model_validate(row) for row in rows[:limit]]
        return SegmentMembers(
            segment=segment,
            members=members,
            next_cursor=encode_cursor("segment", members[-1].member_id) if len(rows) > limit else None,
        )

    @app.get("/v1/metrics", response_model=ProgramMetrics, dependencies=v1)
    async def get_program_metrics(
        period: Literal["day", "month"] = "month",
        start: Annotated[
            date | None, Query(alias="from", description="first day; default: a year or 30 days back")
        ] = None,
        end: Annotated[
            date | None, Query(alias="to", description="last day, included; default: today")
        ] = None,
    ) -> ProgramMetrics:
        """Members and growth, activity, spend per active member, liability, breakage and tiers per period."""
        rules = await backend.rules()
        last = end or datetime.now(rules.zone).date()
        if not date(1970, 1, 1) <= last <= date(9000, 12, 31) or (
            start is not None and not date(1970, 1, 1) <= start
        ):
            raise Problem(422, "invalid_period", "Dates must be between 1970-01-01 and 9000-12-31")
        first = start or _default_start(period, last)
        if first > last:
            raise Problem(422, "invalid_period", "`from` is after `to`")
        if period_count(period, first, last) > MAX_PERIODS:
            raise Problem(422, "invalid_period", "Too many periods", f"at most {MAX_PERIODS} per request")
        starts = period_starts(period, first, last)
        async with backend.pool.connection() as conn:
            days, tier_days = await queries.program_days(conn, rules.time_zone, starts[-1])
            active = await queries.active_members(conn, rules.time_zone, starts)
            recorded = await queries.recorded_rules(conn)
        values = [value_in_force(recorded, end, rules) for end in starts[1:]]
        return ProgramMetrics(
            period=period,
            rules_version=rules.version,
            periods=periods(starts, days, tier_days, active, values),
        )

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    async def readyz() -> Health:
        """Ready when Postgres and Kafka answer and the projector is caught up enough to serve."""
        lag = sum(partition["lag"] for partition in await backend.partitions())
        if lag > settings.ready_max_lag:
            raise Problem(
                503, "not_ready", "The read models are behind the log", f"{lag} events behind", lag=lag
            )
        return Health(status="ready", lag=lag)

    return app


def _aware(moment: datetime | None) -> datetime | None:
    """A time without an offset is taken as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _default_start(period: Period, last: date) -> date:
    if period == "day":
        return last - timedelta(days=29)
    return date(last.year - 1, last.month, 1) if last.month < 12 else date(last.year, 1, 1)


def _tier_status(row: dict[str, Any], rules: ProgramRules, window_start: datetime) -> TierStatus:
    names = [tier.name for tier in rules.tiers]
    name = row["tier"] or names[0]
    index = names.index(name) if name in names else 0
    spend, purchases = int(row["window_spend"]), int(row["window_purchases"])
    upper = rules.tiers[index + 1] if index + 1 < len(rules.tiers) else None
    return TierStatus(
        tier=name,
        benefit=rules.tiers[index].benefit if name in names else "",
        since=row["tier_changed_at"] or row["enrolled_at"],
        next_evaluation_at=row["next_evaluation_at"],
        qualifying_spend_minor=spend,
        purchase_count=purchases,
        window_start=window_start,
        next=None
        if upper is None
        else NextTier(
            tier=upper.name,
            spend_needed_minor=max(0, upper.qualifying_minor - spend),
            purchases_needed=max(0, upper.min_purchases - purchases),
        ),
    )


def _segment_condition(
    segment: str, rules: ProgramRules, now: datetime
) -> tuple[LiteralString, dict[str, Any]]:
    """The SQL fragment selecting a segment's members, with its parameters."""
    params: dict[str, Any] = {
        "window_start": add_months(now, -rules.qualifying_window_months),
        "need_spend": segment == "core",
        "need_favourite": segment.startswith("category:"),
        **recency_bounds(now, rules)._asdict(),
    }
    if segment in RECENCY:
        return RECENCY[segment], params
    if segment == "core":
        return "(m.tier = %(top)s OR r.place <= (SELECT size FROM core_size))", {
            **params,
            "top": rules.tiers[-1].name,
        }
    if segment.startswith("category:") and len(segment) > len("category:"):
        return "fav.category = %(category)s", {**params, "category": segment[len("category:") :]}
    if segment in {tier.name for tier in rules.tiers}:
        return "m.tier = %(tier)s", {**params, "tier": segment}
    raise Problem(
        404,
        "segment_not_found",
        "Unknown segment",
        f"{segment!r} is not active, silent, churned, new, core, category:<name> or a tier",
    )


async def _projector_metrics(backend: _Backend) -> Iterable[Metric]:
    reachable = GaugeMetricFamily(
        "loyalty_read_models_reachable", "1 when Kafka and Postgres answered this scrape, else 0"
    )
    try:
        partitions = await backend.partitions()
    except Problem:
        reachable.add_metric([], 0)
        return [reachable]
    reachable.add_metric([], 1)
    labels = ["topic", "partition"]
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "applied": GaugeMetricFamily(
            "loyalty_projector_applied_offset", "next offset to apply", labels=labels
        ),
        "end": GaugeMetricFamily(
            "loyalty_projector_end_offset", "last stable offset of the log", labels=labels
        ),
        "lag": GaugeMetricFamily("loyalty_projector_lag_records", "records not applied yet", labels=labels),
        "batches": CounterMetricFamily(
            "loyalty_projector_batches", "applied batches that held records of the partition", labels=labels
        ),
        "records": CounterMetricFamily(
            "loyalty_projector_batch_records",
            "records in applied batches (sum of batch sizes)",
            labels=labels,
        ),
        "seconds": CounterMetricFamily(
            "loyalty_projector_apply_seconds",
            "time spent applying batches, shared among partitions by their records",
            labels=labels,
        ),
    }
    for partition in partitions:
        values = [backend.settings.topic_events, str(partition["partition"])]
        for key, family in families.items():
            family.add_metric(values, partition[key])
    async with backend.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT reason, events FROM projector_skips WHERE topic = %s", (backend.settings.topic_events,)
        )
        skipped = CounterMetricFamily(
            "loyalty_projector_skipped_events", "events not applied", labels=["reason"]
        )
        for reason, events in await cur.fetchall():
            skipped.add_metric([reason], int(events))
    return [reachable, *families.values(), skipped]
