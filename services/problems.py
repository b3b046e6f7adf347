"""RFC 9457 problem responses, mapped from errors in one place per app."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://loyalty.example/problems/"


class Problem(Exception):
    """An error that becomes a problem body; `code` is the last part of its `type` URI."""

    def __init__(self, status: int, code: str, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


def problem_response(problem: Problem) -> JSONResponse:
    """The problem as a response; a 503 always says when to try again (Retry-After, 1 s unless set)."""
    body = {"type": PROBLEM_BASE + problem.code, "title": problem.title, "status": problem.status}
    if problem.detail:
        body["detail"] = problem.detail
    body.update(problem.extra)
    headers = {"Retry-After": "1", **problem.headers} if problem.status == 503 else problem.headers
    return JSONResponse(
        body, status_code=problem.status, media_type="application/problem+json", headers=headers
    )


def install_problem_handlers(app: FastAPI, pools: Sequence[AsyncConnectionPool[Any]] = ()) -> None:
    """Map errors to problem responses. `pools`: checked when a request meets a lost database
    connection, so that after a Postgres restart the broken connections go at once rather than
    one failed request each. One check per pool at a time: during an outage every request fails,
    and each starting its own would test the same connections again and again."""
    checking: set[int] = set()

    async def check(pool: AsyncConnectionPool[Any]) -> None:
        if id(pool) in checking:
            return
        checking.add(id(pool))
        try:
            await pool.check()
        finally:
            checking.discard(id(pool))

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
            for error in exc.errors()
        ]
        detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        return problem_response(
            Problem(422, "invalid_request", "The request is not valid", detail, errors=errors)
        )

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(Problem(exc.status_code, "http_error", str(exc.detail)))

    async def on_busy(_: Request, exc: Exception) -> JSONResponse:
        return problem_response(
            Problem(503, "busy", "No database connection was free in time", type(exc).__name__)
        )

    async def on_unavailable(_: Request, exc: Exception) -> JSONResponse:
        """Postgres or Kafka unreachable (a restart, a failover): clients retry, the services reconnect."""
        what = "database" if isinstance(exc, psycopg.OperationalError) else "log"
        if what == "database":
            for pool in pools:
                await check(pool)
        return problem_response(
            Problem(503, f"{what}_unavailable", f"The {what} is unavailable", type(exc).__name__)
        )

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(Problem(500, "internal_error", "Internal error"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(PoolTimeout, on_busy)
    app.add_exception_handler(psycopg.OperationalError, on_unavailable)
    app.add_exception_handler(KafkaError, on_unavailable)
    app.add_exception_handler(Exception, on_unexpected)
