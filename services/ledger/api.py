"""The command API: validates requests and hands them to the processor as commands."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Header, Request, Response
from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel

from schemas.inbound import PurchaseMessage
from services.kafka_offsets import end_offsets, offsets_consumer
from services.ledger.command_messages import CommandMessage
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from services.problems import Problem, install_problem_handlers

IDEMPOTENCY_NAMESPACE = uuid.UUID("b7a9d0f4-3c6e-4a8e-9f51-6a0c2d9e4b27")


class CommandAccepted(BaseModel):
    command_id: str
    status: Literal["accepted"] = "accepted"


class Health(BaseModel):
    status: str


def create_app(settings: LedgerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_topics(settings)
        app.state.producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="loyalty-ledger-api",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
        )
        app.state.offsets = offsets_consumer(settings.kafka_bootstrap, "loyalty-ledger-api")
        try:
            yield
        finally:
            app.state.offsets.close()
            app.state.producer.close()

    app = FastAPI(title="Loyalty ledger: command API", version="1", lifespan=lifespan)
    install_problem_handlers(app)

    def submit(
        request: Request,
        response: Response,
        member_id: str,
        message: PurchaseMessage,
        idempotency_key: str | None,
    ) -> CommandAccepted:
        command_id = (
            str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{member_id}:{idempotency_key}"))
            if idempotency_key
            else str(uuid.uuid4())
        )
        command = CommandMessage(command_id=command_id, correlation_id=command_id, body=message)
        producer: KafkaProducer = request.app.state.producer
        try:
            producer.send(
                settings.topic_commands, key=member_id.encode(), value=command.model_dump_json().encode()
            ).get(timeout=settings.command_timeout_s)
        except KafkaError as error:
            raise Problem(503, "log_unavailable", "The ledger log is unavailable", str(error)) from None
        response.status_code = 202
        response.headers["Location"] = f"/v1/commands/{command_id}"
        return CommandAccepted(command_id=command_id)

    @app.post("/v1/purchases", status_code=202, response_model=CommandAccepted)
    def post_purchase(
        message: PurchaseMessage,
        request: Request,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> CommandAccepted:
        """Record a purchase: the member earns points on it."""
        return submit(request, response, message.member_id, message, idempotency_key)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    def readyz(request: Request) -> Health:
        """Ready when the Kafka cluster answers and the command topic exists."""
        try:
            found = end_offsets(request.app.state.offsets, settings.topic_commands)
        except KafkaError as error:
            raise Problem(503, "not_ready", "Kafka is not reachable", str(error)) from None
        if not found:
            raise Problem(503, "not_ready", "The command topic does not exist yet")
        return Health(status="ready")

    return app
