"""The OpenAPI document: valid OpenAPI 3.1, served as built, and one source with the topics."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from bridge.api.app import create_app
from bridge.api.auth import TokenSet
from bridge.api.openapi import (
    MIN_RECOVERY_RATE,
    openapi_document,
    request_schema,
    request_validator,
    served_operations,
)
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService, body_errors
from bridge.contract.resources import load_json
from bridge.subscriptions.changes import MAX_LENGTHS, MIN_RATE_LIMIT
from tests.unit.api.conftest import Api, auth, control_service


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_issue_20_operation_is_described() -> None:
    operations = {
        operation["operationId"]
        for item in openapi_document()["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert operations >= {
        "listWebhooks", "createWebhook", "getWebhook", "updateWebhook", "deleteWebhook",
        "rotateWebhookSecret", "sendTestEvent", "listAttempts", "getDelivery", "getWebhookStats",
        "redeliver", "startRecovery", "getRecovery", "cancelRecovery", "listDeadLetters",
        "replayDeadLetters",
    }  # fmt: skip


def test_every_operation_but_the_document_needs_a_scope_and_answers_problems() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path == "/v1/openapi.json":
                continue
            (requirement,) = operation["security"]
            assert requirement["bearer"] == ["read" if method == "get" else "write"], path
            for status in ("400", "401", "403"):
                content = operation["responses"][status]["content"]
                assert list(content) == ["application/problem+json"], (path, method)


def test_the_app_serves_exactly_the_operations_marked_served() -> None:
    repository = MemoryRepository()
    app = create_app(WebhookService(repository), control_service(repository), TokenSet([]))
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if isinstance(route.resource, web.Resource) and route.method != "HEAD"
    }
    assert routes == set(served_operations())


def test_request_fields_are_the_subscription_schemas_fields() -> None:
    webhook = load_json("schemas/webhook.json")
    create = request_schema("WebhookCreate")
    for name, schema in create["properties"].items():
        if name == "id":  # the same, but for the dot segments a path cannot name
            assert {k: v for k, v in schema.items() if k not in ("not", "description")} == (
                webhook["properties"][name]
            )
            assert schema["not"] == {"enum": [".", ".."]}
        elif name != "secret":  # the same, with a description of its default
            # ... and bounded where a change must be (MAX_LENGTHS; a record read is not).
            bounded = dict(webhook["properties"][name])
            if name in MAX_LENGTHS:
                bounded["maxLength"] = MAX_LENGTHS[name]
            if name == "events":  # unique members of the enum: no more than it has
                bounded["maxItems"] = len(bounded["items"]["enum"])
            if name == "rate_limit":  # a change sets the lowest at least (one read is raised)
                del bounded["exclusiveMinimum"]
                bounded["minimum"] = MIN_RATE_LIMIT
                bounded["description"] = schema["description"]
            assert schema == bounded, name
    assert create["properties"]["secret"]["maxLength"] == MAX_LENGTHS["secret"]
    for request in (create, request_schema("WebhookUpdate")):
        rate = request["properties"]["rate_limit"]
        assert rate["minimum"] == MIN_RATE_LIMIT == MIN_RECOVERY_RATE == 0.01
        assert "exclusiveMinimum" not in rate
    assert create["anyOf"] == webhook["anyOf"]
    assert create["additionalProperties"] is False
    update = request_schema("WebhookUpdate")
    assert "secret" not in update["properties"]  # only rotation changes it, and returns it
    assert set(update["properties"]) < set(webhook["properties"])


def test_request_validators_refuse_what_the_topic_schema_refuses() -> None:
    validator = request_validator("WebhookCreate")
    good = {"url": "https://example.com/h", "events": ["post.created"], "site_id": "s"}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "events": ["post.exploded"]})
    assert not validator.is_valid({**good, "events": []})
    assert not validator.is_valid({"url": "https://example.com/h", "events": ["*"]})  # no scope
    assert not validator.is_valid({**good, "colour": "red"})


async def test_the_document_is_served_without_a_token(api: Api) -> None:
    response = await api.client.get("/v1/openapi.json")
    assert response.status == 200
    assert json.loads(await response.text()) == openapi_document()


async def test_an_update_the_webhooks_secret_cannot_take_is_a_documented_409(api: Api) -> None:
    # Standard Webhooks signing asked of a webhook whose secret is not whsec_: the conflict
    # the service answers must be one updateWebhook declares (the fuzzer on a real worker
    # reaches existing webhooks, and found it undeclared).
    created = await api.create()
    response = await api.client.patch(
        f"/v1/webhooks/{created['id']}", json={"standard_webhooks": True}, headers=auth()
    )
    assert response.status == 409
    update = openapi_document()["paths"]["/v1/webhooks/{webhook_id}"]["patch"]
    assert list(update["responses"]["409"]["content"]) == ["application/problem+json"]


def _arrays(schema: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every array schema in ``schema``, with where it is."""
    found: list[tuple[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "array" or "items" in schema:
            found.append((path, schema))
        for key, value in schema.items():
            found.extend(_arrays(value, f"{path}/{key}"))
    elif isinstance(schema, list):
        for n, value in enumerate(schema):
            found.extend(_arrays(value, f"{path}[{n}]"))
    return found


def test_every_array_a_request_may_send_is_bounded() -> None:
    """A body is judged on the event loop, item by item: an array without ``maxItems`` would
    let one request hold the worker for as long as its items take."""
    document = openapi_document()
    names = {
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "requestBody" in operation
    }
    assert {"WebhookCreate", "WebhookUpdate", "RecoveryCreate"} <= names
    arrays = [(name + where, a) for name in names for where, a in _arrays(request_schema(name))]
    assert arrays  # events, at least
    assert [where for where, array in arrays if not isinstance(array.get("maxItems"), int)] == []


@pytest.mark.parametrize(
    "events",
    [
        ["*", *range(1_000_000)],  # distinct, and not sortable together
        [0] * 1_000_000,
        [[n] for n in range(200_000)],
    ],
    ids=["distinct", "equal", "nested"],
)
def test_an_array_of_a_million_is_refused_for_its_length(events: list[Any]) -> None:
    """Refused first for its length, at most ten errors named, and at once: until 2026-12-05
    jsonschema compared every pair of items for ``uniqueItems`` (6,000 took 10 s of the event
    loop; a million, days) and made an error of every item (a 64 KiB body: 120 MB)."""
    began = time.process_time()
    errors = body_errors("WebhookUpdate", {"events": events})
    spent = time.process_time() - began
    assert (errors[0].field, errors[0].reason) == ("events", "maxItems")
    assert len(errors) <= 10
    assert spent < 1.0  # a bound far from both: ~0.05 s now, hours before
