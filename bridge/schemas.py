"""Validation of events and subscriptions against the JSON Schemas in ``topics/schemas``.

Every instance is first checked by a compiled validator (fastjsonschema, a few microseconds);
only an instance it rejects goes through ``jsonschema``, which words the errors with their
paths. ``tests/unit/test_schemas.py`` checks that the two agree on which instances are valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

from .resources import load_json

__all__ = ["EVENT_TYPES", "schema_errors", "event_data_errors"]

#: The event types of the public documentation, in its order.
EVENT_TYPES: tuple[str, ...] = tuple(load_json("schemas/event.json")["properties"]["type"]["enum"])


@cache
def _validator(path: str) -> Draft202012Validator:
    return Draft202012Validator(load_json(path))


@cache
def _compiled(path: str) -> Callable[[Any], Any]:
    schema = dict(load_json(path))
    # fastjsonschema knows drafts 4, 6 and 7; the keywords these schemas use mean the same in
    # 2020-12 and in draft 7.
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return fastjsonschema.compile(schema)


def _first_error(path: str, instance: Any) -> fastjsonschema.JsonSchemaValueException | None:
    try:
        _compiled(path)(instance)
    except fastjsonschema.JsonSchemaValueException as exc:
        return exc
    return None


def is_valid(path: str, instance: Any) -> bool:
    """Whether ``instance`` satisfies the schema at ``path`` (fast: compiled)."""
    return _first_error(path, instance) is None


def _messages(
    path: str, instance: Any, redact: Callable[[], Sequence[str]] | None = None
) -> list[str]:
    compiled_error = _first_error(path, instance)
    if compiled_error is None:
        return []
    errors = sorted(_validator(path).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if not errors:
        # The compiled validator is the authority. jsonschema matches ``pattern`` with Python's
        # ``re``, whose ``$`` also matches before a final newline; JSON Schema patterns are
        # ECMA-262 regular expressions, where it does not ("...Z\n" is no timestamp).
        rule = compiled_error.rule or "schema"
        return [f"{_json_path(compiled_error.path[1:])}: fails the {rule!r} rule"]
    secrets = redact() if redact is not None else ()
    out = []
    for error in errors[:5]:
        where = _json_path(error.absolute_path)
        message = error.message
        if any(secret in message for secret in secrets):
            # Schema messages quote the offending value: say which rule failed instead.
            message = f"fails the {error.validator!r} rule (value withheld)"
        out.append(f"{where}: {_short(message)}")
    return out


def _json_path(parts: Iterable[Any]) -> str:
    """``$.data.items[2]``: a JSON path from property names and array indexes."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def schema_errors(
    schema: str, instance: Any, redact: Callable[[], Sequence[str]] | None = None
) -> list[str]:
    """Error messages (at most five, with JSON paths) of ``instance`` against a named schema.

    ``schema`` is ``"event"``, ``"webhook"`` or ``"deadletter"``. A message that would quote
    one of the strings ``redact()`` returns (forms of a secret) names only the rule that
    failed; ``redact`` is called only for an invalid instance.
    """
    return _messages(f"schemas/{schema}.json", instance, redact)


def event_data_errors(event_type: str, data: Any) -> list[str]:
    """Error messages of an event's ``data`` against its type's schema."""
    return [f"$.data{m[1:]}" for m in _messages(f"schemas/data/{event_type}.json", data)]
