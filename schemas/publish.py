"""The message contract in standard formats, generated from the pydantic models.

`python -m schemas.publish` writes JSON Schema (draft 2020-12) into `schemas/json/` and an
AsyncAPI 3.0.0 document into `schemas/asyncapi.yaml`; `--check` writes nothing and lists the
files that differ. The files are committed so that other teams read the contract without
Python, and a test fails when they drift from the models. Output is byte-stable: keys sorted,
no timestamps, topic names from the settings' defaults rather than the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from schemas.events import Event, EventData
from schemas.inbound import MEMBER_ID_PATTERN, PurchaseMessage, RefundMessage
from schemas.topics import KafkaSettings
from schemas.upcasting import STEPS

ROOT = Path(__file__).resolve().parent
BASE_ID = "https://loyalty.example/schemas/"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI = "asyncapi.yaml"
JsonDoc = dict[str, Any]

ENVELOPE_FIELDS = {
    "event_id": "UUIDv5 of the command id, the member id and the event's index in the decision",
    "type": "the event type: the name of the `data` model",
    "schema_version": "version of this type's `data` when written; the current one is `x-schema-version` "
    "of events/<type>.schema.json, older ones are upcast on read (schemas/upcasting.py)",
    "member_id": "the member; `$program` is the program's own stream (ProgramRulesChanged)",
    "sequence": "1, 2, 3, ... per member, with no gaps",
    "occurred_at": "business time (from the command, or the clock tick)",
    "recorded_at": "timestamp of the input record the event was decided from",
    "command_id": "the command that caused the event",
    "correlation_id": "the correlation id of that command",
    "rules_version": "version of the program rules the event was decided under",
    "prev_hash": "`hash` of the member's previous event; 64 zeros for sequence 1",
    "hash": "SHA-256 (hex) of the canonical JSON of the envelope without `hash` (schemas/README.md)",
    "data": "the type's fields; its schema is chosen by `type` (see allOf)",
}


def _schema(model: type[BaseModel], path: str, description: str, **extra: Any) -> JsonDoc:
    return {
        **model.model_json_schema(),
        "$schema": DRAFT_2020_12,
        "$id": BASE_ID + path,
        "description": description,
        **extra,
    }


def event_data_schema(name: str, model: type[EventData]) -> JsonDoc:
    version = model.SCHEMA_VERSION
    summary = (model.__doc__ or f"The `data` of a {name} event.").strip()
    return _schema(
        model,
        f"events/{name}.schema.json",
        f"{summary} This is schema_version {version}.",
        title=name,
        **{"x-schema-version": version},
    )


def readable_versions(name: str, current: int) -> list[int]:
    """Versions of a type that readers accept: the current one and those an upcaster chain lifts."""
    versions = [current]
    while (name, versions[0] - 1) in STEPS:
        versions.insert(0, versions[0] - 1)
    return versions


def _data_by_type(name: str, current: int) -> JsonDoc:
    """`then` for one type: its versions, and `data` per the current one.

    Older versions have no model left (only an upcaster), so their `data` is not described.
    """
    data = {"data": {"$ref": f"events/{name}.schema.json"}}
    versions = readable_versions(name, current)
    if len(versions) == 1:
        return {"properties": {"schema_version": {"const": current}, **data}}
    return {
        "properties": {"schema_version": {"enum": versions}},
        "if": {"properties": {"schema_version": {"const": current}}},
        "then": {"properties": data},
    }


def envelope_schema() -> JsonDoc:
    """Event's own schema, with `type` closed to the known types and `data` chosen by `type`.

    The model types `data` as the empty base class and picks the model in a validator, which
    pydantic cannot express; the `if/then` pairs say the same in JSON Schema.
    """
    schema = _schema(Event, "event.schema.json", (Event.__doc__ or "").strip())
    schema.pop("$defs", None)
    properties = schema["properties"]
    properties["type"]["enum"] = sorted(EventData.registry)
    properties["data"] = {"type": "object"}
    for field, text in ENVELOPE_FIELDS.items():
        properties[field]["description"] = text
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": _data_by_type(name, model.SCHEMA_VERSION),
        }
        for name, model in sorted(EventData.registry.items())
    ]
    return schema


def json_schemas() -> dict[str, JsonDoc]:
    """Every JSON Schema file, by its path under schemas/."""
    found = {"json/event.schema.json": envelope_schema()}
    for name, model in sorted(EventData.registry.items()):
        found[f"json/events/{name}.schema.json"] = event_data_schema(name, model)
    inbound = (
        "on loyalty.purchases.v1 (key member_id) and the body of POST /v1/{}; unknown fields are accepted"
    )
    found["json/inbound/purchase.schema.json"] = _schema(
        PurchaseMessage, "inbound/purchase.schema.json", f"A purchase, {inbound.format('purchases')}."
    )
    found["json/inbound/refund.schema.json"] = _schema(
        RefundMessage, "inbound/refund.schema.json", f"A refund, {inbound.format('refunds')}."
    )
    return found


def _topic_binding(configs: dict[str, str]) -> JsonDoc:
    """Kafka channel binding; the partition count is a setting, the same for every topic."""
    topic_configuration: JsonDoc = {"cleanup.policy": configs["cleanup.policy"].split(",")}
    for name in ("retention.ms", "retention.bytes"):
        if name in configs:
            topic_configuration[name] = int(configs[name])
    return {"kafka": {"topicConfiguration": topic_configuration, "bindingVersion": "0.5.0"}}


def _message(title: str, summary: str, payload: JsonDoc, key: JsonDoc, **extra: Any) -> JsonDoc:
    return {
        "name": title,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": payload,
        "bindings": {"kafka": {"key": key, "bindingVersion": "0.5.0"}},
        **extra,
    }


MEMBER_KEY = {"type": "string", "pattern": MEMBER_ID_PATTERN, "description": "member_id, UTF-8"}
ANY_KEY = {"type": "string", "description": "member_id, UTF-8 (`$program` for the program's stream)"}
DLQ_HEADERS = {
    "error.code": "e.g. invalid_message, empty_value, processing_error",
    "error.message": "what was wrong, at most 1000 characters",
    "source.topic": "the topic the record was read from",
    "source.partition": "its partition, in decimal",
    "source.offset": "its offset, in decimal",
}
# `type` has a default, so the models' schemas leave it optional (as the HTTP bodies may); on the
# topic it is the discriminator that picks the model, and a record without it is dead-lettered.
MESSAGES = {
    "purchase": _message(
        "purchase",
        "A purchase by a member.",
        {"allOf": [{"$ref": "./json/inbound/purchase.schema.json"}, {"required": ["type"]}]},
        MEMBER_KEY,
    ),
    "refund": _message(
        "refund",
        "A refund of (part of) a purchase.",
        {"allOf": [{"$ref": "./json/inbound/refund.schema.json"}, {"required": ["type"]}]},
        MEMBER_KEY,
    ),
    "command": _message(
        "command",
        "A command for the ledger, or a clock tick.",
        {"type": "object", "required": ["command_id", "correlation_id", "issued_at", "body"]},
        {"type": "string", "description": "member_id, UTF-8; `$tick` for a clock tick"},
        description="`body.type` is purchase, refund, redemption, redemption_cancel, adjustment, "
        "tier_change, enrolment, profile_update, erasure or tick (services/ledger/command_messages.py). "
        "Ticks are keyed `$tick` and written to every partition; they reach every member of the "
        "partition with something due.",
    ),
    "event": _message("event", "One ledger event.", {"$ref": "./json/event.schema.json"}, ANY_KEY),
    "memberState": _message(
        "memberState",
        "One piece of a member's account, as the processor restores it.",
        {"type": ["object", "array", "integer", "string", "null"]},
        ANY_KEY,
        description="Keyed `{member_id}/{kind}/{item}`: the member's summary and one record per "
        "remembered purchase, lot, business id and command outcome, written when it changes; a null "
        "value (tombstone) removes it. Keys `/input/{topic}` record how far the transaction read "
        "that input partition. Internal to the ledger processor: no contract for others.",
    ),
    "processorStatus": _message(
        "processorStatus",
        "A processor owns a partition and has restored its state.",
        {"type": "object", "required": ["member_id", "generation", "instance"]},
        {"type": "string", "description": "the partition number"},
        description="{member_id, generation, instance}: the group member that announced it; "
        "internal to the ledger (services/ledger/ownership.py).",
    ),
    "deadLetter": _message(
        "deadLetter",
        "An input record that could not be decided on: its original bytes, unchanged.",
        {"description": "the original value, as it was published (possibly not JSON)"},
        {"description": "the original record's key, unchanged (possibly absent)"},
        contentType="application/octet-stream",
        headers={
            "type": "object",
            "description": "the original record's headers are kept, and these added (UTF-8 values)",
            "required": list(DLQ_HEADERS),
            "properties": {name: {"type": "string", "description": d} for name, d in DLQ_HEADERS.items()},
        },
    ),
    "commandReply": _message(
        "commandReply",
        "What the processor decided about a command from the ledger API.",
        {"type": "object", "required": ["command_id", "member_id", "status"]},
        MEMBER_KEY,
        description="{command_id, member_id, status (applied, duplicate, rejected), "
        "original_command_id, code, detail, events, sequence, available, pending, tier}; "
        "internal to the ledger (services/ledger/command_messages.py).",
    ),
}

# channel id -> (KafkaSettings field, description, message ids)
CHANNELS = {
    "purchases": ("topic_purchases", "Purchases and refunds from commerce services.", ["purchase", "refund"]),
    "commands": ("topic_commands", "Commands from the ledger API and clock ticks.", ["command"]),
    "events": ("topic_events", "The ledger: the source of truth, kept forever.", ["event"]),
    "ledgerState": ("topic_state", "Compacted changelog of member accounts.", ["memberState"]),
    "processorStatus": (
        "topic_status",
        "Which processor has restored each partition.",
        ["processorStatus"],
    ),
    "deadLetters": ("topic_dlq", "Input records that failed validation or processing.", ["deadLetter"]),
    "commandReplies": ("topic_replies", "The processor's answer to each API command.", ["commandReply"]),
}

# (service, action, channel id, summary): who writes and who reads each topic
OPERATIONS = [
    ("commerceServices", "send", "purchases", "Order service, POS and e-shop publish purchases and refunds."),
    ("ledgerApi", "send", "commands", "The HTTP command API turns each request into a command."),
    ("ledgerApi", "receive", "commandReplies", "The API answers a request once it is decided."),
    ("scheduler", "send", "commands", "A clock tick to every partition at an interval."),
    ("ledgerProcessor", "receive", "purchases", "Decide each purchase and refund."),
    ("ledgerProcessor", "receive", "commands", "Decide each command and tick."),
    ("ledgerProcessor", "send", "purchases", "Re-route a record keyed to the wrong partition."),
    ("ledgerProcessor", "send", "commands", "Re-route a record keyed to the wrong partition."),
    ("ledgerProcessor", "send", "events", "Events, in one transaction with state and offsets."),
    ("ledgerProcessor", "send", "ledgerState", "Each changed account, in the same transaction."),
    ("ledgerProcessor", "receive", "ledgerState", "Restore the accounts of assigned partitions."),
    ("ledgerProcessor", "send", "deadLetters", "Set aside a record that cannot be decided."),
    ("ledgerProcessor", "send", "commandReplies", "Answer API commands, in the same transaction."),
    ("ledgerProcessor", "send", "processorStatus", "Announce a partition once its state is restored."),
    ("ledgerApi", "receive", "processorStatus", "Ready once every partition is owned and restored."),
    ("projector", "receive", "events", "Build the read models (read_committed)."),
    ("auditors", "receive", "events", "Replay, verify the hash chains, explain a history."),
]


def asyncapi() -> JsonDoc:
    """The AsyncAPI 3.0.0 document: topics, their messages, and who writes and reads each."""
    defaults = KafkaSettings.model_construct()  # defaults only: the environment must not leak in
    configs = defaults.topic_configs()
    channels = {}
    for channel, (setting, description, messages) in CHANNELS.items():
        address = getattr(defaults, setting)
        channels[channel] = {
            "address": address,
            "description": f"{description} Topic name: setting LOYALTY_{setting.upper()}.",
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
            "bindings": _topic_binding(configs[address]),
        }
    operations = {}
    for service, action, channel, summary in OPERATIONS:
        operations[f"{service}.{action}.{channel}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in CHANNELS[channel][2]],
            "summary": summary,
            "tags": [{"name": service}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Loyalty ledger",
            "version": "1.0.0",
            "description": "Kafka topics of the loyalty ledger (see DESIGN.md). Every topic is keyed by "
            "member_id and has the same partition count (setting LOYALTY_PARTITIONS), so that one "
            "processor owns a member. Payload schemas are JSON Schema draft 2020-12 in ./json/.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": defaults.kafka_bootstrap, "protocol": "kafka"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": MESSAGES},
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # shared dicts are written out in full: no &anchors in a contract


def documents() -> dict[str, str]:
    """Every generated file's text, by its path under schemas/."""
    texts = {
        path: json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for path, doc in json_schemas().items()
    }
    texts[ASYNCAPI] = yaml.dump(asyncapi(), Dumper=_Dumper, sort_keys=True, allow_unicode=True, width=100)
    return texts


def drifted(root: Path = ROOT) -> list[str]:
    """Generated files that are missing or differ on disk, and stale ones no model produces."""
    expected = documents()
    stale = {p.relative_to(root).as_posix() for p in (root / "json").rglob("*.json")} - set(expected)
    changed = {
        path
        for path, text in expected.items()
        if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text
    }
    return sorted(changed | stale)


def write(root: Path = ROOT) -> None:
    expected = documents()
    for path in drifted(root):
        target = root / path
        if path not in expected:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(expected[path], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.publish", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for path in stale:
            print(f"drifted: schemas/{path}", file=sys.stderr)
        if stale:
            print("run `python -m schemas.publish` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
