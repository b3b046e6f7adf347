"""A request body size limit: 413 with a problem body, for a declared length or a streamed one."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.problems import Problem, problem_response


class _BodyTooLarge(Exception):
    """Raised into the app from `receive`, so that it stops reading a body it will never get whole."""


def _too_large(max_bytes: int) -> Problem:
    return Problem(
        413,
        "body_too_large",
        "The request body is too large",
        f"the body may be at most {max_bytes} bytes",
        max_bytes=max_bytes,
    )


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


class _BodyLimit:
    """ASGI middleware: refuse a body longer than `max_bytes`, before or while it is received.

    A declared `Content-Length` is checked before the app runs. A chunked body is counted as it
    arrives; past the limit, `receive` raises into the app, and whatever the app answers to that
    (FastAPI turns a failed read into a 400) is dropped in favour of the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self._max_bytes:
            await problem_response(_too_large(self._max_bytes))(scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await problem_response(_too_large(self._max_bytes))(scope, receive, send)


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    """Answer 413 `body_too_large` to any request whose body is longer than `max_bytes`.

    Install it before `install_http_metrics`, so that the timing middleware wraps it and
    records the 413s it sends.
    """
    app.add_middleware(_BodyLimit, max_bytes=max_bytes)
