"""The command API: validates requests, hands them to the processor, answers with its decision."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Request, Response
from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.inbound import MEMBER_ID_PATTERN, ExternalId, MemberId, PurchaseMessage, RefundMessage
from schemas.position import encode_position
from services import collector, logs
from services.access.guard import Guard
from services.access.keys import Principal
from services.body_limit import install_body_limit
from services.children import end_with_parent
from services.http_metrics import install_http_metrics
from services.kafka_compat import NO_CLIENT_METRICS, install_fixes
from services.kafka_offsets import committed_reader, end_offsets
from services.ledger.command_messages import (
    AdjustmentBody,
    AnyBody,
    CancelBody,
    CommandMessage,
    CommandReply,
    EnrolBody,
    EraseBody,
    ProfileBody,
    RedemptionBody,
    TierBody,
)
from services.ledger.domain import errors
from services.ledger.domain.ids import derived_id
from services.ledger.ownership import Ownership
from services.ledger.replies import ReplyTracker
from services.ledger.settings import LedgerSettings
from services.ledger.topics import ensure_topics
from services.personal_data import keystore, profiles
from services.personal_data.profiles import Profile, ProfilePatch, fields_of
from services.problems import Problem, install_problem_handlers
from services.serving import overloaded, release_turn

IDEMPOTENCY_NAMESPACE = uuid.UUID("b7a9d0f4-3c6e-4a8e-9f51-6a0c2d9e4b27")

REJECTION_STATUS = {
    errors.InsufficientPoints.code: 409,
    errors.RefundExceedsPurchase.code: 409,
    errors.UnknownPurchase.code: 409,
    errors.UnknownRedemption.code: 404,
    errors.UnknownMember.code: 404,
    errors.UnknownTier.code: 422,
    errors.InvalidAmount.code: 422,
    errors.PurchaseTooOld.code: 422,
    errors.PurchaseInFuture.code: 422,
    errors.RefundInFuture.code: 422,
    errors.DuplicatePurchase.code: 409,
    errors.RefundWindowClosed.code: 409,
    errors.IdempotencyKeyReused.code: 422,
    errors.MemberExists.code: 409,
    errors.PersonalDataWasErased.code: 409,
    "processing_error": 500,
}

MemberIdPath = Annotated[str, Path(pattern=MEMBER_ID_PATTERN)]
IdempotencyKey = Annotated[str | None, Header(max_length=128)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedemptionRequest(_Request):
    redemption_id: ExternalId
    member_id: MemberId
    points: Annotated[int, Field(gt=0, le=1_000_000_000)]
    reward: Annotated[str, StringConstraints(max_length=200)] | None = None


class CancelRequest(_Request):
    member_id: MemberId


class AdjustmentRequest(_Request):
    adjustment_id: ExternalId
    member_id: MemberId
    points: Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000)]
    reason: Reason


class TierRequest(_Request):
    tier: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    reason: Reason


class EnrolRequest(_Request):
    member_id: MemberId
    profile: Profile


class Balance(BaseModel):
    available: int
    pending: int


class CommandOutcome(BaseModel):
    command_id: str
    status: Literal["applied", "duplicate", "rejected", "pending"]
    original_command_id: str | None = None
    code: str | None = None
    detail: str | None = None
    events: list[dict[str, Any]] = []
    balance: Balance | None = None
    tier: str | None = None
    position: str | None = None


class Health(BaseModel):
    status: str


def app_from_env() -> FastAPI:
    """The app as `loyalty ledger-api` serves it, made in each worker process."""
    logs.configure()
    end_with_parent()
    return create_app(LedgerSettings())


def create_app(settings: LedgerSettings) -> FastAPI:
    guard = Guard(settings)
    master, masters = settings.master_keys()
    commands = Depends(guard.require("commands"))
    admin = Depends(guard.require("admin"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_topics(settings)
        await guard.open()
        install_fixes()
        app.state.producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="loyalty-ledger-api",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            # send() waits for metadata on the event loop: bounded, so an outage answers 503 quickly.
            max_block_ms=2000,
            **NO_CLIENT_METRICS,
        )
        app.state.offsets = committed_reader(settings.kafka_bootstrap, "loyalty-ledger-api")
        app.state.ownership = Ownership(settings)
        app.state.replies = ReplyTracker(settings)
        app.state.replies.start()
        collector.freeze_survivors()
        try:
            yield
        finally:
            app.state.replies.stop()
            app.state.ownership.close()
            app.state.offsets.close()
            app.state.producer.close()
            await guard.close()

    app = FastAPI(title="Loyalty ledger: command API", version="1", lifespan=lifespan)
    install_problem_handlers(app, [guard.pool])
    install_body_limit(app, settings.max_body_bytes)
    install_http_metrics(app, "ledger-api", settings)

    async def submit(
        request: Request,
        response: Response,
        body: AnyBody,
        member_id: str,
        key: str | None,
        *,
        digest: str | None = None,
        own_key: str | None = None,
    ) -> CommandOutcome:
        """Send the command and answer with the processor's decision, or 202 past the timeout.

        `key` is the caller's Idempotency-Key, `digest` what tells its request from another (by
        default a digest of the body); `own_key` is a key the API made from the request itself.
        """
        message = _message(member_id, body, key, digest, own_key)
        command_id = message.command_id
        replies: ReplyTracker = request.app.state.replies
        reply = replies.get(command_id)
        if reply is None:
            if replies.behind(member_id):
                request.app.state.shed.labels("behind").inc()
                raise overloaded(
                    "the ledger is deciding this member's commands later than its budget; "
                    "retry after the given delay"
                )
            await _send(request, settings, member_id, message)
            reply = await replies.wait(command_id, settings.command_timeout_s)
            if reply is None:
                response.status_code = 202
                response.headers["Location"] = f"/v1/commands/{command_id}"
                return CommandOutcome(command_id=command_id, status="pending")
        elif reply.status == "applied":  # a retry this instance can answer from what it saw
            reply = reply.model_copy(update={"status": "duplicate", "original_command_id": command_id})
        outcome = _outcome(reply)
        if reply.status == "rejected":
            raise Problem(
                REJECTION_STATUS.get(reply.code or "", 409),
                reply.code or "rejected",
                "The command was rejected",
                reply.detail or "",
                command_id=command_id,
                position=outcome.position,
            )
        response.status_code = 201 if reply.status == "applied" else 200
        return outcome

    @app.post("/v1/purchases", status_code=201, response_model=CommandOutcome, dependencies=[commands])
    async def post_purchase(
        body: PurchaseMessage, request: Request, response: Response, idempotency_key: IdempotencyKey = None
    ) -> CommandOutcome:
        """Record a purchase: the member earns points on it (and is enrolled if new). 409
        duplicate_purchase for an id the member has with another amount or date; 422
        purchase_in_future for a date past the rules' tolerance."""
        return await submit(request, response, body, body.member_id, idempotency_key)

    @app.post("/v1/refunds", status_code=201, response_model=CommandOutcome, dependencies=[commands])
    async def post_refund(
        body: RefundMessage, request: Request, response: Response, idempotency_key: IdempotencyKey = None
    ) -> CommandOutcome:
        """Refund part or all of a purchase: the points its items earned are reversed (in proportion
        to the amount when it names none); 409 refund_window_closed past the refund window; 422
        refund_in_future for a date past the rules' tolerance."""
        return await submit(request, response, body, body.member_id, idempotency_key)

    @app.post("/v1/redemptions", status_code=201, response_model=CommandOutcome, dependencies=[commands])
    async def post_redemption(
        body: RedemptionRequest, request: Request, response: Response, idempotency_key: IdempotencyKey = None
    ) -> CommandOutcome:
        """Redeem points, oldest lots first; 409 insufficient_points when the balance is short."""
        command = RedemptionBody(**body.model_dump())
        return await submit(request, response, command, body.member_id, idempotency_key)

    @app.post(
        "/v1/redemptions/{redemption_id}/cancel",
        status_code=201,
        response_model=CommandOutcome,
        dependencies=[commands],
    )
    async def cancel_redemption(
        redemption_id: Annotated[ExternalId, Path()],
        body: CancelRequest,
        request: Request,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> CommandOutcome:
        """Cancel a redemption: the points go back to their lots, with their expiry."""
        command = CancelBody(redemption_id=redemption_id, member_id=body.member_id)
        return await submit(request, response, command, body.member_id, idempotency_key)

    @app.post("/v1/adjustments", status_code=201, response_model=CommandOutcome)
    async def post_adjustment(
        body: AdjustmentRequest,
        request: Request,
        response: Response,
        idempotency_key: IdempotencyKey = None,
        caller: Principal = admin,
    ) -> CommandOutcome:
        """Add or remove points by hand, with a reason; the caller's key id is recorded as the actor."""
        command = AdjustmentBody(**body.model_dump(), actor=caller.key_id)
        return await submit(request, response, command, body.member_id, idempotency_key)

    @app.put("/v1/members/{member_id}/tier", status_code=201, response_model=CommandOutcome)
    async def put_tier(
        member_id: MemberIdPath,
        body: TierRequest,
        request: Request,
        response: Response,
        idempotency_key: IdempotencyKey = None,
        caller: Principal = admin,
    ) -> CommandOutcome:
        """Set a member's tier by hand, with a reason; the caller's key id is recorded as the actor."""
        command = TierBody(member_id=member_id, tier=body.tier, reason=body.reason, actor=caller.key_id)
        return await submit(request, response, command, member_id, idempotency_key)

    async def member_key(member_id: str) -> tuple[str, bytes]:
        if master is None:
            raise Problem(
                503, "personal_data_unavailable", "No master key is configured (LOYALTY_MASTER_KEY)"
            )
        try:
            async with guard.pool.connection() as conn:
                return await keystore.data_key_made(conn, master, masters, member_id)
        except keystore.Erased:
            raise Problem(
                409, errors.PersonalDataWasErased.code, "The member's personal data was erased", member_id
            ) from None

    @app.post("/v1/members", status_code=201, response_model=CommandOutcome)
    async def post_member(
        body: EnrolRequest, request: Request, response: Response, caller: Principal = admin
    ) -> CommandOutcome:
        """Enrol a member with a profile, sealed with the member's own key before it enters any topic.

        The same body again answers 200 with the original outcome; another profile for a member
        who has one is 409.
        """
        key_id, data_key = await member_key(body.member_id)
        fields = fields_of(body.profile)
        # The same profile gives the same command.
        same = _profile_digest(data_key, fields)
        sealed = profiles.seal(key_id, data_key, body.member_id, fields)
        return await submit(
            request,
            response,
            EnrolBody(member_id=body.member_id, profile=sealed),
            body.member_id,
            None,
            own_key=f"enrol:{same}",
        )

    @app.patch("/v1/members/{member_id}/profile", status_code=201, response_model=CommandOutcome)
    async def patch_profile(
        member_id: MemberIdPath,
        body: ProfilePatch,
        request: Request,
        response: Response,
        idempotency_key: IdempotencyKey = None,
        caller: Principal = admin,
    ) -> CommandOutcome:
        """Change profile fields; only the changed fields are sealed into the log."""
        key_id, data_key = await member_key(member_id)
        fields = fields_of(body)
        sealed = profiles.seal(key_id, data_key, member_id, fields)
        return await submit(
            request,
            response,
            ProfileBody(member_id=member_id, profile=sealed),
            member_id,
            idempotency_key,
            # The sealed profile differs at every attempt: a retry is known by its clear fields.
            digest=_profile_digest(data_key, fields),
        )

    @app.delete("/v1/members/{member_id}/personal-data", status_code=201, response_model=CommandOutcome)
    async def erase_personal_data(
        member_id: MemberIdPath, request: Request, response: Response, caller: Principal = admin
    ) -> CommandOutcome:
        """Erase the member's personal data: the data key is destroyed, then PersonalDataErased is logged.

        Balances, points history and the hash chain are untouched; every copy of the profile,
        wherever it is, can no longer be read.
        """
        async with guard.pool.connection() as conn:
            erase_id = await keystore.erase(conn, member_id)
        body = EraseBody(member_id=member_id, actor=caller.key_id)
        try:
            return await submit(request, response, body, member_id, None, own_key=erase_id)
        except Problem as problem:
            if problem.code == errors.UnknownMember.code:  # nothing was erased: no mark is kept
                async with guard.pool.connection() as conn:
                    await keystore.forget_erasure(conn, member_id)
            raise

    @app.get("/v1/commands/{command_id}", response_model=CommandOutcome, dependencies=[commands])
    def get_command(command_id: Annotated[str, Path(max_length=128)], request: Request) -> CommandOutcome:
        """A command's status: pending until the processor has decided it."""
        reply = request.app.state.replies.get(command_id)
        if reply is not None:
            return _outcome(reply)
        if request.app.state.replies.expected(command_id):
            return CommandOutcome(command_id=command_id, status="pending")
        raise Problem(404, "command_not_found", "Unknown command", "no command with this id was seen here")

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health)
    def readyz(request: Request) -> Health:
        """Ready when every partition is owned by a ledger processor that has restored its state."""
        try:
            found = end_offsets(request.app.state.offsets, settings.topic_commands)
            unready = request.app.state.ownership.unready() if found else []
        except KafkaError as error:
            raise Problem(503, "not_ready", "Kafka is not reachable", str(error)) from None
        if not found:
            raise Problem(503, "not_ready", "The command topic does not exist yet")
        if unready:
            raise Problem(
                503,
                "not_ready",
                "The ledger processor has not restored every partition",
                f"partitions not yet owned and restored: {unready}",
            )
        return Health(status="ready")

    return app


def _message(
    member_id: str, body: AnyBody, key: str | None, digest: str | None, own_key: str | None
) -> CommandMessage:
    """The command, with ids that make a retry the same command.

    A key names a retry of the same kind of command: ids of different kinds never meet. A caller's
    key is the correlation id of every attempt under it, and the command id also names the
    request, so that the processor tells a retry (the same command id) from the key reused for
    another request (another command id under the same correlation id), in every API process.
    """
    now = datetime.now(UTC)
    if own_key is not None:
        command_id = derived_id(IDEMPOTENCY_NAMESPACE, f"{member_id}:{body.type}:{own_key}")
        return CommandMessage(command_id=command_id, correlation_id=command_id, issued_at=now, body=body)
    if key is None:
        command_id = str(uuid.uuid4())
        return CommandMessage(command_id=command_id, correlation_id=command_id, issued_at=now, body=body)
    key_id = derived_id(IDEMPOTENCY_NAMESPACE, f"{member_id}:{body.type}:{key}")
    command_id = derived_id(IDEMPOTENCY_NAMESPACE, f"{key_id}:{digest or _digest(body)}")
    return CommandMessage(command_id=command_id, correlation_id=key_id, issued_at=now, body=body, keyed=True)


def _digest(body: AnyBody) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _profile_digest(data_key: bytes, fields: dict[str, str]) -> str:
    """A digest keyed by the member's data key: it reveals nothing of the profile, and once the key
    is erased there is nothing left to test a guess against."""
    return hmac.new(data_key, json.dumps(sorted(fields.items())).encode(), hashlib.sha256).hexdigest()


async def _send(request: Request, settings: LedgerSettings, member_id: str, message: CommandMessage) -> None:
    """Hand the command to Kafka (acks=all) without holding a thread while it is acknowledged.

    The request's turn is given back once the producer has the command: waiting for the broker
    and then the processor is no work of this worker's, and a turn held across a slow ack (a busy
    broker) shed commands at 200/s.
    """
    loop = asyncio.get_running_loop()
    acknowledged: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if acknowledged.done():
            return
        if error is None:
            acknowledged.set_result(None)
        else:
            acknowledged.set_exception(error)

    sent_at = time.monotonic()
    try:
        sent = request.app.state.producer.send(
            settings.topic_commands, key=member_id.encode(), value=message.model_dump_json().encode()
        )
        sent.add_callback(lambda _: loop.call_soon_threadsafe(settle, None))
        sent.add_errback(lambda error: loop.call_soon_threadsafe(settle, error))
        release_turn(request.scope)
        await asyncio.wait_for(acknowledged, settings.command_timeout_s)
    except (KafkaError, TimeoutError) as error:
        raise Problem(503, "log_unavailable", "The ledger log is unavailable", str(error)) from None
    request.app.state.replies.expect(message.command_id, sent.value.partition, sent_at)


def _outcome(reply: CommandReply) -> CommandOutcome:
    return CommandOutcome(
        command_id=reply.command_id,
        status=reply.status,
        original_command_id=reply.original_command_id,
        code=reply.code,
        detail=reply.detail,
        events=reply.events,
        balance=Balance(available=reply.available, pending=reply.pending),
        tier=reply.tier or None,
        position=encode_position(reply.member_id, reply.sequence) if reply.sequence else None,
    )
