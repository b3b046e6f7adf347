"""The published contract (schemas/json/, schemas/asyncapi.yaml) is what the models say, and what
the ledger writes and commerce services send validates against it, with no Python involved."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from schemas import publish
from schemas.events import CommandRejected, Event, EventData
from schemas.inbound import PurchaseMessage, RefundMessage
from schemas.rules import ProgramRules
from schemas.topics import KafkaSettings
from services.ledger.command_messages import InvalidRecord, parse_inbound_record
from services.ledger.domain.account import Account
from services.ledger.domain.chain import seal
from services.ledger.domain.commands import Command
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import LedgerError
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import at, log_of

SCHEMAS = publish.ROOT
GOLDEN_LOG = Path(__file__).resolve().parent.parent / "fixtures" / "golden-log.jsonl"
RULES = ProgramRules(pending_days=14)
Doc = dict[str, Any]


@cache
def registry() -> Registry[Any]:
    """Every schema file on disk under its `$id`, so that `$ref`s resolve as a consumer's would."""
    resources = [
        Resource.from_contents(json.loads(path.read_text(encoding="utf-8")), DRAFT202012)
        for path in sorted((SCHEMAS / "json").rglob("*.schema.json"))
    ]
    return Registry().with_resources((resource.id(), resource) for resource in resources)


def validator(path: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / "json" / path).read_text(encoding="utf-8"))
    return Draft202012Validator(schema, registry=registry())


def errors(path: str, document: Any) -> list[str]:
    return [error.message for error in validator(path).iter_errors(document)]


# (a) the committed files are the generated ones


def test_the_committed_files_are_what_the_models_generate() -> None:
    drifted = publish.drifted()
    assert not drifted, (
        f"the published schemas differ from the models: {', '.join(drifted)}; "
        "run `python -m schemas.publish` and commit the result"
    )


@pytest.mark.parametrize("path", sorted(p for p in publish.documents() if p.endswith(".json")))
def test_every_file_is_draft_2020_12_with_an_id_of_its_own_path(path: str) -> None:
    schema = json.loads((SCHEMAS / path).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == publish.BASE_ID + path.removeprefix("json/")


# (b) what the ledger writes validates, a broken event does not


def rejected(account: Account, command: Command) -> list[Event]:
    """A command the rules refuse, recorded as the processor records it."""
    try:
        decide(account, command, RULES)
    except LedgerError as error:
        data = CommandRejected(command=type(command).__name__, code=error.code, detail=error.detail)
        return seal(account, command, [data], RULES.version, command.occurred_at)[1]
    raise AssertionError(f"{command} was expected to be refused")


@cache
def history() -> list[Event]:
    """A crafted history that produces every event type, decided and sealed by the pure domain."""
    first = replace(
        make.purchase("p-1", 10000, at(2025, 1, 15), [make.item("beauty", "100.00")]),
        store_id="sh-07",
        channel="store",
    )
    busy = log_of(
        "s-1",
        first,  # enrolled; points pending for 14 days
        make.purchase("p-2", 300000, at(2025, 1, 20)),  # promoted to silver
        make.refund("f-1", "p-2", 100000, at(2025, 1, 25)),  # reversed from pending points
        make.tick(at(2025, 2, 10)),  # matured
        make.redeem("x-1", 50, at(2025, 3, 1)),
        make.cancel("x-1", at(2025, 3, 2)),  # cancelled, restored
        make.adjust("a-1", 20, at(2025, 3, 3)),
        make.adjust("a-2", -10, at(2025, 3, 3)),
        make.refund("f-2", "p-1", 10000, at(2025, 3, 4)),  # reversed from lots
        make.set_tier("gold", at(2025, 4, 1)),  # manual
        make.tick(at(2026, 4, 2)),  # demoted: nothing bought in the window
        make.tick(at(2027, 6, 1)),  # lots expire past 24 months
        rules=RULES,
    )
    kept = log_of(
        "s-2",
        make.purchase("k-1", 300000, at(2025, 1, 20)),
        make.purchase("k-2", 300000, at(2025, 12, 1)),
        make.tick(at(2026, 1, 21)),  # the window still qualifies: tier retained
        rules=RULES,
    )
    private = log_of(
        "s-3",
        make.enrol(at(2025, 2, 1), name="bmFtZQ=="),
        make.update_profile(at(2025, 2, 2), phone="cGhvbmU="),
        make.erase(at(2025, 2, 3)),
        rules=RULES,
    )
    program = log_of("$program", make.record_rules(at(2025, 1, 1)), rules=RULES)
    refused = rejected(make.given(make.purchase("o-9", 1000), rules=RULES), make.redeem("x-9", 10**6))
    return [*busy, *kept, *private, *program, *refused]


def test_the_history_covers_every_event_type() -> None:
    missing = set(EventData.registry) - {event.type for event in history()}
    assert not missing, f"add commands to history() that produce {sorted(missing)}"


@pytest.mark.parametrize("event", history(), ids=lambda e: f"{e.member_id}#{e.sequence}:{e.type}")
def test_every_event_the_ledger_writes_validates(event: Event) -> None:
    assert errors("event.schema.json", event.document()) == []


def golden_log() -> Iterator[Doc]:
    with GOLDEN_LOG.open(encoding="utf-8") as lines:
        yield from (json.loads(line) for line in lines)


def test_the_golden_log_validates_older_versions_included() -> None:
    invalid = {
        f"{doc['member_id']}#{doc['sequence']}": found
        for doc in golden_log()
        if (found := errors("event.schema.json", doc))
    }
    assert invalid == {}
    assert any(doc["schema_version"] < EventData.registry[doc["type"]].SCHEMA_VERSION for doc in golden_log())


def an(event_type: str) -> Doc:
    return copy.deepcopy(next(event.document() for event in history() if event.type == event_type))


def broken(event_type: str, change: str) -> Doc:
    doc = an(event_type)
    match change:
        case "points as a string":
            doc["data"]["points"] = str(doc["data"]["points"])
        case "data field missing":
            del doc["data"]["lot_id"]
        case "envelope field missing":
            del doc["hash"]
        case "unknown type":
            doc["type"] = "PointsGifted"
        case "unknown data field":
            doc["data"]["bonus"] = 5
        case "newer schema_version":
            doc["schema_version"] += 1
        case "data of another type":
            doc["data"] = an("PointsMatured")["data"]
        case "current version without its new field":
            del doc["data"]["currency"]
    return doc


@pytest.mark.parametrize(
    ("event_type", "change"),
    [
        ("PointsEarned", "points as a string"),
        ("PointsMatured", "data field missing"),
        ("PointsMatured", "envelope field missing"),
        ("PointsMatured", "unknown type"),
        ("TierChanged", "unknown data field"),
        ("PointsRedeemed", "newer schema_version"),
        ("PointsEarned", "data of another type"),
        ("PointsRedeemed", "current version without its new field"),
    ],
)
def test_a_broken_event_fails(event_type: str, change: str) -> None:
    assert errors("event.schema.json", broken(event_type, change)) != []


DROP = object()


def purchase(**changes: Any) -> Doc:
    """The purchase of DESIGN.md, as a commerce service publishes it."""
    doc = {
        "type": "purchase",
        "purchase_id": "ord-1001",
        "member_id": "m-42",
        "amount": "129.90",
        "currency": "CNY",
        "occurred_at": "2026-11-22T10:00:00Z",
        "store_id": "sh-07",
        "channel": "store",
        "items": [{"sku": "A1", "category": "beauty", "quantity": 1, "amount": "129.90"}],
    }
    return {key: value for key, value in {**doc, **changes}.items() if value is not DROP}


def refund(**changes: Any) -> Doc:
    doc = {
        "type": "refund",
        "refund_id": "rf-77",
        "purchase_id": "ord-1001",
        "member_id": "m-42",
        "amount": "50.00",
        "currency": "CNY",
        "occurred_at": "2026-11-23T09:00:00Z",
    }
    return {key: value for key, value in {**doc, **changes}.items() if value is not DROP}


INBOUND = [
    ("purchase", purchase(), True),
    ("purchase", purchase(store_id=DROP, channel=DROP, items=DROP), True),
    ("purchase", purchase(coupon="XMAS"), True),  # publishers may add fields
    ("purchase", purchase(amount=129.9), False),
    ("purchase", purchase(amount="129.901"), False),
    ("purchase", purchase(currency="USD"), False),
    ("purchase", purchase(member_id="m 42"), False),
    ("purchase", purchase(occurred_at=DROP), False),
    ("purchase", purchase(items=[{"sku": "A1", "category": "beauty", "quantity": 0, "amount": "1"}]), False),
    ("refund", refund(), True),
    ("refund", refund(refund_id=""), False),
    ("refund", refund(purchase_id=DROP), False),
]


@pytest.mark.parametrize(("kind", "doc", "valid"), INBOUND)
def test_inbound_messages_validate_as_the_models_do(kind: str, doc: Doc, valid: bool) -> None:
    assert (errors(f"inbound/{kind}.schema.json", doc) == []) is valid
    model = PurchaseMessage if kind == "purchase" else RefundMessage
    try:
        model.model_validate(doc)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is valid, "the schema and the model disagree"


def test_on_the_topic_a_message_needs_its_type() -> None:
    """The models' `type` has a default; on the topic it selects the model, so the topic requires it."""
    untyped = purchase(type=DROP)
    assert errors("inbound/purchase.schema.json", untyped) == []
    payload = asyncapi()["components"]["messages"]["purchase"]["payload"]
    on_topic = Draft202012Validator(resolved(payload), registry=registry())
    assert list(on_topic.iter_errors(purchase())) == []
    assert list(on_topic.iter_errors(untyped)) != []
    with pytest.raises(InvalidRecord):
        parse_inbound_record(json.dumps(untyped).encode(), datetime.now(UTC))


# (c) the AsyncAPI document


@cache
def asyncapi() -> Doc:
    doc: Doc = yaml.safe_load((SCHEMAS / publish.ASYNCAPI).read_text(encoding="utf-8"))
    return doc


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolved(node: Any) -> Any:
    """A node of the AsyncAPI document with its file `$ref`s turned into the schemas' `$id`s."""
    text = json.dumps(node).replace('"./json/', f'"{publish.BASE_ID}')
    return json.loads(text)


def test_the_asyncapi_document_has_a_channel_for_every_topic() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in doc["channels"].values()}
    topics = {
        field.default for name, field in KafkaSettings.model_fields.items() if name.startswith("topic_")
    }
    assert topics <= addresses
    used = {operation["channel"]["$ref"] for operation in doc["operations"].values()}
    assert used >= {f"#/channels/{name}" for name in doc["channels"]}


def test_every_ref_of_the_asyncapi_document_resolves() -> None:
    doc = asyncapi()
    for ref in refs(doc):
        if ref.startswith("#/"):
            node: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]
        else:
            assert (SCHEMAS / ref.split("#")[0]).is_file(), f"{ref} points to no file"
