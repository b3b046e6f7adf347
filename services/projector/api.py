"""The read API: balances and the rest of the read models, straight from Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

import psycopg
from fastapi import FastAPI, Path, Request
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel

from schemas.inbound import MEMBER_ID_PATTERN
from services.kafka_offsets import committed_reader, end_offsets
from services.problems import Problem, install_problem_handlers
from services.projector import store
from services.projector.migrate import migrate
from services.projector.settings import ProjectorSettings

MemberIdPath = Annotated[str, Path(pattern=MEMBER_ID_PATTERN)]


class Balance(BaseModel):
    member_id: str
    available: int
    pending: int
    lifetime_earned: int
    redeemed: int
    expired: int
    reversed: int
    last_activity_at: datetime


class Health(BaseModel):
    status: str
    lag: int | None = None


def create_app(settings: ProjectorSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(settings.database_url)
        app.state.pool = ConnectionPool(settings.database_url, min_size=1, max_size=8, open=True)
        app.state.offsets = committed_reader(settings.kafka_bootstrap, "loyalty-read-api")
        try:
            yield
        finally:
            app.state.offsets.close()
            app.state.pool.close()

    app = FastAPI(title="Loyalty ledger: read API", version="1", lifespan=lifespan)
    install_problem_handlers(app)

    @app.get("/v1/members/{member_id}/balance", response_model=Balance)
    def get_balance(member_id: MemberIdPath, request: Request) -> Balance:
        """The member's points balance."""
        with request.app.state.pool.connection() as conn:
            row = conn.execute(
                "SELECT available, pending, lifetime_earned, redeemed, expired, reversed, last_event_at "
                "FROM member_balances WHERE member_id = %s",
                (member_id,),
            ).fetchone()
        if row is None:
            raise Problem(404, "member_not_found", "Unknown member", f"no member {member_id!r}")
        available, pending, earned, redeemed, expired, reversed_, last_at = row
        return Balance(
            member_id=member_id,
            available=available,
            pending=pending,
            lifetime_earned=earned,
            redeemed=redeemed,
            expired=expired,
            reversed=reversed_,
            last_activity_at=last_at,
        )

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    def readyz(request: Request) -> Health:
        """Ready when Postgres and Kafka answer and the projector is caught up enough to serve."""
        lag = _lag(request.app.state.pool, request.app.state.offsets, settings)
        if lag > settings.ready_max_lag:
            raise Problem(
                503, "not_ready", "The read models are behind the log", f"{lag} events behind", lag=lag
            )
        return Health(status="ready", lag=lag)

    return app


def _lag(pool: ConnectionPool, consumer: KafkaConsumer, settings: ProjectorSettings) -> int:
    """Committed events in the log that the read models have not applied yet."""
    try:
        ends = end_offsets(consumer, settings.topic_events)
    except KafkaError as error:
        raise Problem(503, "not_ready", "Kafka is not reachable", str(error)) from None
    try:
        with pool.connection(timeout=3) as conn:
            applied = store.checkpoints(conn, settings.topic_events, ends)
    except (psycopg.Error, PoolTimeout) as error:
        raise Problem(503, "not_ready", "Postgres is not reachable", type(error).__name__) from None
    return sum(max(0, end - applied.get(partition, 0)) for partition, end in ends.items())
