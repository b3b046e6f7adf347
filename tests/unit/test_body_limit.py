"""The body limit answers 413 with a problem body, whether the length is declared or streamed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from services.body_limit import _BodyLimit, install_body_limit
from services.problems import PROBLEM_BASE, install_problem_handlers

LIMIT = 100


class Note(BaseModel):
    text: str


def tiny_app() -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    install_problem_handlers(app)
    install_body_limit(app, LIMIT)
    reached: list[str] = []

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        body = await request.body()
        reached.append("raw")
        return {"length": len(body)}

    @app.post("/notes")
    async def notes(note: Note) -> dict[str, int]:
        reached.append("notes")
        return {"length": len(note.text)}

    return app, reached


@pytest.fixture
def client_and_reached() -> Iterator[tuple[TestClient, list[str]]]:
    app, reached = tiny_app()
    with TestClient(app) as client:
        yield client, reached


def note_of(size: int) -> bytes:
    """A JSON note that is exactly `size` bytes long."""
    body = b'{"text": "' + b"x" * (size - 12) + b'"}'
    assert len(body) == size
    return body


def chunks(body: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == PROBLEM_BASE + "body_too_large"
    assert problem["status"] == 413
    assert problem["title"]
    assert problem["max_bytes"] == LIMIT


@pytest.mark.parametrize("path", ["/raw", "/notes"])
def test_a_declared_length_over_the_limit_is_refused_before_the_route_runs(
    client_and_reached: tuple[TestClient, list[str]], path: str
) -> None:
    client, reached = client_and_reached
    response = client.post(path, content=note_of(LIMIT + 1), headers={"Content-Type": "application/json"})
    assert_too_large(response)
    assert reached == []


@pytest.mark.parametrize("path", ["/raw", "/notes"])
def test_a_streamed_body_growing_past_the_limit_is_refused(
    client_and_reached: tuple[TestClient, list[str]], path: str
) -> None:
    client, reached = client_and_reached
    response = client.post(
        path, content=chunks(note_of(LIMIT + 1)), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_too_large(response)
    assert reached == []


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
@pytest.mark.parametrize("path", ["/raw", "/notes"])
def test_a_body_up_to_the_limit_passes(
    client_and_reached: tuple[TestClient, list[str]], path: str, streamed: bool
) -> None:
    client, reached = client_and_reached
    body = note_of(LIMIT)
    response = client.post(
        path, content=chunks(body) if streamed else body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert reached == [path.strip("/")]


def test_chunks_are_counted_together() -> None:
    """Many small `http.request` messages, each under the limit, add up past it."""
    reads: list[int] = []
    incoming: list[Message] = [
        {"type": "http.request", "body": b"x" * 40, "more_body": True} for _ in range(3)
    ]
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            reads.append(len(message["body"]))
            if not message.get("more_body"):
                break

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(_BodyLimit(app, LIMIT)(scope, receive, send))
    assert reads == [40, 40]
    assert sent[0]["status"] == 413
