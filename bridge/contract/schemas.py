"""Validation of events and subscriptions against the JSON Schemas in ``topics/schemas``.

Every instance is first checked by a compiled validator (fastjsonschema, a few microseconds);
only an instance it rejects goes through ``jsonschema``, which finds the errors and their
paths. ``tests/unit/contract/test_schemas.py`` checks that the two agree on which instances are
valid.

Messages never quote the instance: only JSON paths, the rule that failed with what the schema
expects, and the JSON type found (``$.previous_secret: expected string or null, got object``).
Records hold secrets (``secret``, ``previous_secret``, their encrypted forms, whatever a
producer adds) in any shape, and these messages go to logs, dead letters and error output.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, ValidationError, validators

from bridge.contract.jsoncanon import format_path
from bridge.contract.resources import load_json

__all__ = [
    "EVENT_TYPES",
    "MAX_ERRORS_READ",
    "Validator",
    "schema_errors",
    "event_data_errors",
    "event_data_schema",
    "is_valid",
]

#: The event types of the public documentation, in its order.
EVENT_TYPES: tuple[str, ...] = tuple(load_json("schemas/event.json")["properties"]["type"]["enum"])


#: Errors of an instance ``jsonschema`` goes through at most: the messages name five, and an
#: instance of a hostile producer can have millions.
MAX_ERRORS_READ = 50


def _unique_items(
    validator: Any, unique: bool, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """``uniqueItems`` in one pass over canonical forms, where jsonschema's own compares every
    pair of unhashable items (minutes for a record of thousands of objects); not judged for an
    array longer than the schema's ``maxItems``, which is refused for that already."""
    if not unique or not validator.is_type(instance, "array"):
        return
    most = schema.get("maxItems") if isinstance(schema, dict) else None
    if isinstance(most, int) and len(instance) > most:
        return
    seen: set[str] = set()
    for item in instance:
        try:
            key = json.dumps(item, sort_keys=True, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            return  # the compiled validator has judged it already: no message then
        if key in seen:
            yield ValidationError("has non-unique elements")
            return
        seen.add(key)


#: JSON Schema 2020-12 with :func:`_unique_items`: what checks the topics' records that the
#: compiled validator refused, and the API's request bodies, which hostile clients write.
Validator = validators.extend(Draft202012Validator, {"uniqueItems": _unique_items})


def _inlined(path: str, node: Any, depth: int = 0) -> Any:
    """``node`` with each ``{"$ref": "other.json"}`` (a sibling file of ``path``, as
    retry.json's ``event``) replaced by that file's schema: neither validator resolves a
    relative id from the package's data files by itself."""
    if isinstance(node, list):
        return [_inlined(path, item, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.endswith(".json") and "/" not in ref and ":" not in ref:
        if depth > 8:
            raise ValueError(f"{path}: $ref {ref!r} nests too deep")
        folder = path.rsplit("/", 1)[0]
        target = {k: v for k, v in load_json(f"{folder}/{ref}").items() if k not in _ROOT_ONLY}
        rest = {k: v for k, v in node.items() if k != "$ref"}
        # Keywords beside a $ref apply as well as the referenced schema's (2020-12), not in
        # place of them.
        return _inlined(path, {"allOf": [target], **rest} if rest else target, depth + 1)
    return {k: _inlined(path, v, depth) for k, v in node.items()}


#: Keywords of a schema file's root that an inlined copy leaves out: its own ``$id`` would
#: make refs inside it relative to another base, ``$schema`` is the including file's.
_ROOT_ONLY = frozenset({"$schema", "$id"})


@cache
def _schema(path: str) -> dict[str, Any]:
    schema: dict[str, Any] = _inlined(path, load_json(path))
    return schema


@cache
def _validator(path: str) -> Any:
    return Validator(_schema(path))


@cache
def _compiled(path: str) -> Callable[[Any], Any]:
    schema = dict(_schema(path))
    # fastjsonschema knows drafts 4, 6 and 7; the keywords these schemas use mean the same in
    # 2020-12 and in draft 7.
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return fastjsonschema.compile(schema)


def _first_error(path: str, instance: Any) -> fastjsonschema.JsonSchemaValueException | None:
    try:
        _compiled(path)(instance)
    except fastjsonschema.JsonSchemaValueException as exc:
        return exc
    except RecursionError:
        # Containers nested past what the validators' recursion holds (some 500 levels, where
        # a schema's uniqueItems compares them): no record of ours is (until 2026-12-07 the
        # RecursionError escaped, a subscription record's read failed outright).
        return fastjsonschema.JsonSchemaValueException(
            "data is nested too deeply", name="data", rule="depth"
        )
    return None


def is_valid(path: str, instance: Any) -> bool:
    """Whether ``instance`` satisfies the schema at ``path`` (fast: compiled)."""
    return _first_error(path, instance) is None


def _messages(path: str, instance: Any) -> list[str]:
    compiled_error = _first_error(path, instance)
    if compiled_error is None:
        return []
    if compiled_error.rule == "depth":
        return ["$: nested too deeply"]
    try:
        found = list(itertools.islice(_validator(path).iter_errors(instance), MAX_ERRORS_READ))
    except RecursionError:
        # The compiled check stopped at a shallow error first; this one went on into depths
        # past the recursion's (a RecursionError out of parse_webhook until 2026-12-07).
        return ["$: nested too deeply"]
    errors = sorted(found, key=lambda e: list(e.absolute_path))
    if not errors:
        # The compiled validator is the authority. jsonschema matches ``pattern`` with Python's
        # ``re``, whose ``$`` also matches before a final newline; JSON Schema patterns are
        # ECMA-262 regular expressions, where it does not ("...Z\n" is no timestamp).
        rule = compiled_error.rule or "schema"
        return [f"{format_path(compiled_error.path[1:])}: fails the {rule!r} rule"]
    out: list[str] = []
    for error in errors:
        message = f"{format_path(list(error.absolute_path))}: {_short(_describe(error))}"
        if message not in out:
            out.append(message)
        if len(out) == 5:
            break
    return out


def _describe(error: ValidationError) -> str:
    """What failed, in words that never quote the instance (jsonschema's own messages do)."""
    rule, expected, got = error.validator, error.validator_value, _json_type(error.instance)
    if rule == "type":
        names = [expected] if isinstance(expected, str) else list(expected)
        return f"expected {' or '.join(names)}, got {got}"
    if rule == "required" and isinstance(error.instance, dict):
        missing = [repr(name) for name in expected if name not in error.instance]
        if len(missing) == 1:
            return f"{missing[0]} is a required property"
        return f"missing the required properties {', '.join(missing)}"
    if rule == "enum":
        return f"expected one of {', '.join(json.dumps(v) for v in expected)}, got a {got}"
    if rule == "const":
        return f"expected {json.dumps(expected)}, got a {got}"
    if rule == "pattern":
        return f"a {got} that does not match {expected!r}"
    if rule in _BOUNDS:
        return _BOUNDS[rule].format(json.dumps(expected))
    if rule == "uniqueItems":
        return "has duplicate items"
    if rule in ("anyOf", "oneOf"):
        groups: list[list[str]] = [
            [str(name) for name in sub["required"]]
            for sub in expected
            if isinstance(sub, dict) and sub.get("required")
        ]
        if groups and len(groups) == len(expected):
            forms = " or ".join(", ".join(names) for names in groups)
            return f"needs {forms} (present and of the right type)"
        return f"matches none of the allowed forms ({rule})"
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [format_path([*error.absolute_path, k]) for k in error.instance if k not in allowed]
        return f"not allowed here: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"
    if rule == "format":
        return f"not a valid {expected}"
    return f"fails the {rule!r} rule (got {got})"


_BOUNDS = {
    "minLength": "shorter than {} characters",
    "maxLength": "longer than {} characters",
    "minItems": "fewer than {} items",
    "maxItems": "more than {} items",
    "minProperties": "fewer than {} properties",
    "maxProperties": "more than {} properties",
    "minimum": "less than {}",
    "maximum": "more than {}",
    "exclusiveMinimum": "not more than {}",
    "exclusiveMaximum": "not less than {}",
    "multipleOf": "not a multiple of {}",
}


def _json_type(value: Any) -> str:
    """The JSON type name of a decoded value (a Python type name for anything else)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for kind, name in _JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (tuple, "array"),
    (dict, "object"),
)


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def schema_errors(schema: str, instance: Any) -> list[str]:
    """Error messages (at most five, with JSON paths) of ``instance`` against a named schema.

    ``schema`` is ``"event"``, ``"webhook"``, ``"deadletter"``... The messages name paths,
    rules and JSON types, never a value of the instance.
    """
    return _messages(f"schemas/{schema}.json", instance)


def event_data_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema an event type's ``data`` is validated against (a copy): what receivers
    find in a delivery's ``data``."""
    schema: dict[str, Any] = copy.deepcopy(load_json(f"schemas/data/{event_type}.json"))
    return schema


def event_data_errors(event_type: str, data: Any) -> list[str]:
    """Error messages of an event's ``data`` against its type's schema."""
    return [f"$.data{m[1:]}" for m in _messages(f"schemas/data/{event_type}.json", data)]
