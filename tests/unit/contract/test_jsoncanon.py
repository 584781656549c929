"""bridge.contract.jsoncanon: exact bytes for each rule, and agreement with real V8 (Node.js).

The Node.js checks share one ``tests/node/roundtrip.js`` process per module; they are
skipped only when ``node`` is not on PATH.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import shutil
import struct
import subprocess
import sys
import tracemalloc
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.contract import jsoncanon
from bridge.contract.jsoncanon import (
    MAX_RECORD_INTEGER,
    MAX_SAFE_INTEGER,
    dumps,
    dumps_flat,
    dumps_str,
    find_lone_surrogate,
    loads,
)
from bridge.errors import InvalidRecord, UnencodableValue

ROUNDTRIP_JS = Path(__file__).resolve().parents[2] / "node" / "roundtrip.js"

#: Each example runs Node.js too: slower than hypothesis expects.
NODE = settings(suppress_health_check=[HealthCheck.too_slow])


# -------------------------------------------------------------------------- helpers


def slow_path(value: object) -> bytes:
    """The careful pure-Python encoder alone, bypassing the C fast path."""
    parts: list[str] = []
    jsoncanon._encode(value, parts, [], set())
    return "".join(parts).encode("utf-8")


def double_from_bits(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


# ------------------------------------------------------------------- table: scalars

SCALARS: list[tuple[object, bytes]] = [
    (None, b"null"),
    (True, b"true"),
    (False, b"false"),
    (0, b"0"),
    (-1, b"-1"),
    (42, b"42"),
    (MAX_SAFE_INTEGER, b"9007199254740991"),
    (-MAX_SAFE_INTEGER, b"-9007199254740991"),
    ("", b'""'),
    ("plain", b'"plain"'),
]


@pytest.mark.parametrize(("value", "expected"), SCALARS)
def test_scalars(value: object, expected: bytes) -> None:
    assert dumps(value) == expected


# ------------------------------------------------------------------- table: numbers

FLOATS: list[tuple[float, str]] = [
    (1.0, "1"),
    (100.0, "100"),
    (-2.5, "-2.5"),
    (0.1, "0.1"),
    (0.1 + 0.2, "0.30000000000000004"),
    (0.0, "0"),
    (-0.0, "0"),
    (1.5e-07, "1.5e-7"),
    (1e-07, "1e-7"),
    (-1e-07, "-1e-7"),
    (0.000001, "0.000001"),
    (0.00001, "0.00001"),
    (1.2345e-05, "0.000012345"),
    (1.23e-18, "1.23e-18"),
    (1e16, "10000000000000000"),
    (123456789012345680.0, "123456789012345680"),
    (1e20, "100000000000000000000"),
    (999999999999999900000.0, "999999999999999900000"),
    (1e21, "1e+21"),
    (1.5e21, "1.5e+21"),
    (2.5e25, "2.5e+25"),
    (1e300, "1e+300"),
    (-1e300, "-1e+300"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (5e-324, "5e-324"),
    (2.2250738585072014e-308, "2.2250738585072014e-308"),
    (float(2**53), "9007199254740992"),
    (float(2**53 + 2), "9007199254740994"),
    (float(2**60), "1152921504606847000"),  # shortest digits, zero-padded: not 2**60
    (123.456, "123.456"),
]


@pytest.mark.parametrize(("value", "expected"), FLOATS)
def test_floats_are_ecmascript_number_to_string(value: float, expected: str) -> None:
    assert dumps(value) == expected.encode()
    assert dumps([value]) == f"[{expected}]".encode()
    assert dumps({"x": value}) == f'{{"x":{expected}}}'.encode()


# ------------------------------------------------------------------- table: strings

_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


@pytest.mark.parametrize("code", range(0x20))
def test_control_characters(code: int) -> None:
    expected = _SHORT_ESCAPES.get(code, f"\\u{code:04x}")
    assert dumps(chr(code)) == f'"{expected}"'.encode()


STRINGS: list[tuple[str, bytes]] = [
    ('"', b'"\\""'),
    ("\\", b'"\\\\"'),
    ("/", b'"/"'),
    ("\x00", b'"\\u0000"'),
    ("\x1f", b'"\\u001f"'),
    ("\x1b[0m", b'"\\u001b[0m"'),
    ("\x7f", b'"\x7f"'),
    ("\x80\x9f", '"\x80\x9f"'.encode()),
    ("\u2028\u2029", '"\u2028\u2029"'.encode()),
    ("é ñ 漢字", '"é ñ 漢字"'.encode()),
    ("\ufeff", '"\ufeff"'.encode()),
    ("\U0001f600", b'"\xf0\x9f\x98\x80"'),
    # lone surrogates: lowercase \udxxx, as well-formed JSON.stringify writes them
    ("\ud800", b'"\\ud800"'),
    ("\udfff", b'"\\udfff"'),
    ("a\udbffb", b'"a\\udbffb"'),
    ("\ude00\ud83d", b'"\\ude00\\ud83d"'),  # low then high: two lone surrogates
    ("\ud83d\ud83d\ude00", b'"\\ud83d\xf0\x9f\x98\x80"'),
    # a high+low pair held as two Python code points is one character in JavaScript
    ("\ud83d\ude00", b'"\xf0\x9f\x98\x80"'),
    ("x\ud83d\ude00\t\ud800", b'"x\xf0\x9f\x98\x80\\t\\ud800"'),
]


@pytest.mark.parametrize(("value", "expected"), STRINGS)
def test_strings(value: str, expected: bytes) -> None:
    assert dumps(value) == expected
    assert dumps({value: value}) == b"{" + expected + b":" + expected + b"}"


# ------------------------------------------------------------------- table: objects


KEY_ORDER: list[tuple[dict[str, object], bytes]] = [
    ({"b": 1, "a": 2}, b'{"b":1,"a":2}'),
    ({"b": 1, "10": 2, "a": 3, "2": 4, "1": 5}, b'{"1":5,"2":4,"10":2,"b":1,"a":3}'),
    ({"x": 1, "0": 2}, b'{"0":2,"x":1}'),
    ({"4294967295": 1, "4294967294": 2}, b'{"4294967294":2,"4294967295":1}'),
    ({"01": 1, "1": 2}, b'{"1":2,"01":1}'),
    ({"00": 1, "0": 2}, b'{"0":2,"00":1}'),
    ({"-1": 1, "-0": 2, "0": 3}, b'{"0":3,"-1":1,"-0":2}'),
    (
        {"1.0": 1, "1e3": 2, "+1": 3, " 1": 4, "1 ": 5},
        b'{"1.0":1,"1e3":2,"+1":3," 1":4,"1 ":5}',
    ),
    ({"9007199254740993": 1, "5": 2}, b'{"5":2,"9007199254740993":1}'),
    (
        {"\uff11": 1, "\u0663": 2, "\u00b2": 3, "3": 4},
        '{"3":4,"１":1,"٣":2,"²":3}'.encode(),
    ),
    ({"10": {"b": 1, "2": 2}, "1": []}, b'{"1":[],"10":{"2":2,"b":1}}'),
    ({"__proto__": 1, "constructor": 2}, b'{"__proto__":1,"constructor":2}'),
]


@pytest.mark.parametrize(("value", "expected"), KEY_ORDER)
def test_object_key_order(value: dict[str, object], expected: bytes) -> None:
    assert dumps(value) == expected


def test_containers_are_compact() -> None:
    value = {"a": [1, "x", None, True, {}, []], "b": (), "c": ((1, 2), [3])}
    assert dumps(value) == b'{"a":[1,"x",null,true,{},[]],"b":[],"c":[[1,2],[3]]}'
    assert dumps([]) == b"[]"
    assert dumps({}) == b"{}"


class Colour(enum.Enum):
    RED = "red"


class StrColour(enum.StrEnum):
    RED = "red"

    def __str__(self) -> str:
        return "not used"


class Level(enum.IntEnum):
    HIGH = 3


class Ratio(float):
    def __repr__(self) -> str:
        return "not used"


class OddDict(dict[str, object]):
    pass


def test_subclasses_encode_as_their_base_value() -> None:
    value = OrderedDict(
        [
            ("s", StrColour.RED),
            ("i", Level.HIGH),
            ("f", Ratio(2.0)),
            ("d", OddDict(a=1)),
        ]
    )
    assert dumps(value) == b'{"s":"red","i":3,"f":2,"d":{"a":1}}'
    assert dumps({StrColour.RED: 1}) == b'{"red":1}'


# -------------------------------------------------------------------- table: errors

ERRORS: list[tuple[object, str, str]] = [
    (MAX_SAFE_INTEGER + 1, "unsafe_integer", "$"),
    (-(MAX_SAFE_INTEGER + 1), "unsafe_integer", "$"),
    ({"data": {"count": 10**20}}, "unsafe_integer", "$.data.count"),
    ({"items": [1, 2, {"n": -(2**60)}]}, "unsafe_integer", "$.items[2].n"),
    ({"a b": [2**64]}, "unsafe_integer", '$["a b"][0]'),
    ({"x": Level.HIGH, "y": 2**63}, "unsafe_integer", "$.y"),
    (math.nan, "non_finite_number", "$"),
    ({"data": {"ratio": math.inf}}, "non_finite_number", "$.data.ratio"),
    ([-math.inf], "non_finite_number", "$[0]"),
    (b"bytes", "unsupported_type", "$"),
    ({"when": object()}, "unsupported_type", "$.when"),
    ({"s": {1, 2}}, "unsupported_type", "$.s"),
    ({"c": Colour.RED}, "unsupported_type", "$.c"),
    ({"d": {1: "x"}}, "unsupported_type", "$.d"),
    ({"d": {None: "x"}}, "unsupported_type", "$.d"),
    ({"d": {("a",): "x"}}, "unsupported_type", "$.d"),
]


@pytest.mark.parametrize(("value", "reason", "path"), ERRORS)
def test_unencodable_values(value: object, reason: str, path: str) -> None:
    with pytest.raises(UnencodableValue) as info:
        dumps(value)
    assert info.value.reason == reason
    assert info.value.detail.endswith(f" at {path}")
    assert isinstance(info.value, InvalidRecord)


def test_error_messages_name_the_path_not_the_value() -> None:
    secret = 98765432109876543210
    with pytest.raises(UnencodableValue) as info:
        dumps({"token": "s3cr3t-value", "account": {"balance": secret}})
    assert str(secret) not in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert info.value.detail.endswith("at $.account.balance")


def test_circular_and_too_deep_values_are_refused() -> None:
    loop: dict[str, object] = {}
    loop["self"] = [loop]
    with pytest.raises(UnencodableValue) as info:
        dumps(loop)
    assert info.value.reason == "circular_reference"
    assert info.value.detail.endswith("at $.self[0]")

    deep: list[object] = []
    innermost = deep
    for _ in range(jsoncanon.MAX_DEPTH):
        inner: list[object] = []
        innermost.append(inner)
        innermost = inner
    with pytest.raises(UnencodableValue) as info:
        dumps({"k": deep})
    assert info.value.reason == "too_deep"
    assert len(info.value.detail) < 200
    assert dumps(deep[0]) == b"[" * jsoncanon.MAX_DEPTH + b"]" * jsoncanon.MAX_DEPTH


@pytest.mark.parametrize("leaf", [[], [1.0]], ids=["fast-path", "careful-encoder"])
@pytest.mark.parametrize("max_depth", [1, 2, 252, jsoncanon.MAX_DEPTH])
def test_a_value_nested_deeper_than_asked_is_refused(leaf: list[object], max_depth: int) -> None:
    """``max_depth`` leaves room for the records a value goes into (an event's data)."""
    value: list[object] = leaf
    for _ in range(max_depth - 1):
        value = [value]
    assert dumps(value, max_depth=max_depth) == dumps(value)
    with pytest.raises(UnencodableValue) as info:
        dumps([value], max_depth=max_depth)
    assert info.value.reason == "too_deep"
    assert f"nesting deeper than {max_depth} at $" in info.value.detail
    if max_depth < jsoncanon.MAX_DEPTH:
        assert dumps([value], max_depth=max_depth + 1) == b"[" + dumps(value) + b"]"


def test_shared_but_acyclic_references_are_fine() -> None:
    shared = {"z": 1}
    assert dumps([shared, shared, {"a": shared}]) == b'[{"z":1},{"z":1},{"a":{"z":1}}]'


def test_integral_floats_may_be_huge() -> None:
    assert dumps({"big": 1e300, "safe": float(2**60)}) == (
        b'{"big":1e+300,"safe":1152921504606847000}'
    )


# ---------------------------------------------------------------------------- loads

LOADS: list[tuple[bytes | str, object]] = [
    (b'{"a":[1,2.5,"x",null,true,false]}', {"a": [1, 2.5, "x", None, True, False]}),
    (b" \t\r\n[ 1 , 2 ]\n", [1, 2]),
    (b'"\\ud83d\\ude00"', "\U0001f600"),  # an escaped surrogate pair is one character
    (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, then text
    ('"é\u2028"', "é\u2028"),
    (b"123456789012345678901234567890", 123456789012345678901234567890),
    (b"-0", 0),
    (b"1e308", 1e308),
    (b"1e-400", 0.0),
    (b"1" + b"0" * 308, 10**308),  # V8 prints 1e+308: stays int, dumps refuses
    (b"9007199254740991", MAX_SAFE_INTEGER),
    (b"-9007199254740991", -MAX_SAFE_INTEGER),
    (b"9007199254740992", 2.0**53),  # beyond safe but JavaScript's text: a float
    (b"-9007199254740992", -(2.0**53)),
    (b"9007199254740993", 2**53 + 1),  # V8 would print ...992: stays int, dumps refuses
    (b"1152921504606847000", 2.0**60),
    (b"1152921504606846976", 2**60),  # exact 2**60, but V8 prints 1152921504606847000
    (b"100000000000000000000", 1e20),
    (b"1000000000000000000000", 10**21),  # V8 prints 1e+21
]


@pytest.mark.parametrize(("data", "expected"), LOADS)
def test_loads(data: bytes | str, expected: object) -> None:
    result = loads(data)
    assert result == expected
    assert type(result) is type(expected)


def test_loads_duplicate_keys_last_value_first_position() -> None:
    result = loads(b'{"a":1,"b":2,"a":3}')
    assert result == {"a": 3, "b": 2}
    assert isinstance(result, dict)
    assert list(result) == ["a", "b"]
    assert dumps(result) == b'{"a":3,"b":2}'


MALFORMED: list[tuple[bytes | str, str]] = [
    (b"", "line 1 column 1"),
    (b"{", "line 1 column 2"),
    (b'{"a":1,}', "line 1 column 8"),
    (b"[1,\n2,,]", "line 2 column 3"),
    (b"01", "line 1 column 2"),
    (b"1.", "line 1 column 2"),
    (b'"\x01"', "line 1 column 2"),
    (b"'x'", "line 1 column 1"),
    (b"\xef\xbb\xbf{}", "line 1 column 1"),  # a BOM is not JSON whitespace
    (b'"\xff"', "invalid UTF-8 at byte 1"),
    (b'"\xed\xa0\x80"', "invalid UTF-8 at byte 1"),  # an encoded surrogate
    (b"NaN", "NaN is not JSON"),
    (b"[Infinity]", "Infinity is not JSON"),
    (b'{"x":-Infinity}', "-Infinity is not JSON"),
    (b"1e400", "number beyond the double range"),
    (b"[-1.5e309]", "number beyond the double range"),
    (b"1" + b"0" * 309, "number beyond the double range"),
    (b"-" + b"9" * 5000, "number beyond the double range"),
    (b"[" * 100_000 + b"]" * 100_000, "nesting too deep"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_loads_rejects(data: bytes | str, message: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        loads(data)
    assert info.value.reason == "malformed_json"
    assert message in info.value.detail
    assert len(info.value.detail) < 100


LONE_SURROGATES: list[tuple[bytes | str, str]] = [
    (b'"\\ud800"', "$"),
    (b'"\\uDFFF"', "$"),
    (b'"\\udc00\\ud800"', "$"),  # low then high: no pair
    (b'"\\ud83d\\ud83d\\ude00"', "$"),  # a pair, after a lone high one
    (b'"x\\ud83d"', "$"),
    (b'{"id":"evt","data":{"title":["ok","t\\udbff"]}}', "$.data.title[1]"),
    (b'{"data":{"\\ud800":1}}', '$.data["\\ud800"]'),  # an object key
    (b'{"a\\\\":"\\\\ud800","b":"\\ud800"}', "$.b"),  # the first is an escaped backslash
    ('"\udcff"', "$"),  # a str: raw, as a non-UTF-8 command-line argument arrives
    ('{"k":"\ud800\udc00"}', "$.k"),  # a pair as two code points has no UTF-8 form either
]


@pytest.mark.parametrize(("data", "where"), LONE_SURROGATES)
def test_loads_refuses_lone_surrogates(data: bytes | str, where: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        loads(data)
    assert info.value.reason == "invalid_text"
    assert info.value.detail.endswith(f"at {where}")
    assert info.value.detail.isascii()  # printable anywhere, and never the text itself


def test_find_lone_surrogate_in_python_values() -> None:
    assert find_lone_surrogate({"a": ["x", {"k": "y\ud800"}]}) == "$.a[1].k"
    assert find_lone_surrogate(("\udfff",)) == "$[0]"
    assert find_lone_surrogate({1: "x", "é": "\U0001f600"}) is None
    deep: object = "\ud800"
    for _ in range(10_000):  # deeper than the recursion limit
        deep = [deep]
    assert find_lone_surrogate(deep) == "$[0][0][0][0][0][0][0][0]...(9988 more)...[0][0][0][0]"


def test_a_value_deep_and_wide_is_walked_in_memory_of_its_own_size() -> None:
    """Each value is queued once with a link to its parent's place, not a copy of its path:
    until 2026-12-05 a record of 0.9 MB (900 arrays deep around 450,000 numbers, and one
    surrogate pair, which sends a record through the walk) took 20 s and 3.3 GB to parse."""
    raw = "[" * 900 + ",".join(["0"] * 100_000) + ',"\\ud83d\\ude00","\\ud800"' + "]" * 900
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRecord) as info:
            loads(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "invalid_text"
    assert info.value.detail.endswith("[100001]")
    assert peak < 20_000_000  # the parsed value itself is most of it; 660 MB before


# ----------------------------------------------------------------------- strategies

SPECIAL_CHARS = [
    "\x00", "\x08", "\x1f", "\x7f", '"', "\\", "/", "\u2028", "\u2029", "\ufeff",
    "\ud800", "\udbff", "\udc00", "\udfff", "\U0001f600", "\U0010ffff", "é", "0", "9",
]  # fmt: skip
chars = st.one_of(
    st.characters(max_codepoint=0x7F),
    st.characters(exclude_categories=()),  # everything, surrogates included
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from(SPECIAL_CHARS),
)
texts = st.lists(chars, max_size=12).map("".join)
INDEX_LIKE = [
    "0", "1", "2", "10", "01", "00", "-1", "-0", "1.5", "1e3", " 1", "+1", "\uff11",
    "4294967294", "4294967295", "4294967296", "9007199254740993", "__proto__",
]  # fmt: skip
keys = st.one_of(
    texts,
    st.sampled_from(INDEX_LIKE),
    st.integers(min_value=0, max_value=2**33).map(str),
)
SPECIAL_FLOATS = [
    0.0, -0.0, 1.0, 0.1, 1e-7, 1.5e-7, 1e-6, 1e20, 1e21, 1e300, 5e-324,
    2.2250738585072014e-308, 1.7976931348623157e308, float(2**53),
    999999999999999900000.0,
]  # fmt: skip
finite_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=2**64 - 1).map(double_from_bits).filter(math.isfinite),
    st.sampled_from(SPECIAL_FLOATS),
    st.integers(-(10**6), 10**6).map(lambda n: n / 1000),
)
safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
scalars = st.one_of(st.none(), st.booleans(), safe_ints, finite_floats, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=25,
)
# No floats, lone surrogates or index-like keys: the C fast path encodes these.
plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), safe_ints, st.text()),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(), children, max_size=6),
    ),
    max_leaves=25,
)


# ----------------------------------------------------------------------- properties


@given(json_values)
def test_dumps_is_stable_through_loads(value: object) -> None:
    once = dumps(value)
    if find_lone_surrogate(loads_unchecked(once)) is not None:
        # dumps writes a lone surrogate as V8 does; loads refuses to read one back.
        for text in (once, once.decode("utf-8")):
            with pytest.raises(InvalidRecord) as info:
                loads(text)
            assert info.value.reason == "invalid_text"
        return
    assert dumps(loads(once)) == once
    assert dumps(loads(once.decode("utf-8"))) == once


def loads_unchecked(data: bytes) -> object:
    """What ``json`` reads, lone surrogates included."""
    return json.loads(data)


@given(st.one_of(json_values, plain_values))
def test_fast_path_agrees_with_careful_encoder(value: object) -> None:
    assert dumps(value) == slow_path(value)


@given(
    st.recursive(
        st.one_of(scalars, st.integers()),
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)
        ),
        max_leaves=10,
    ),
    st.integers(min_value=0, max_value=300),
    st.booleans(),
)
def test_check_encodable_raises_what_dumps_raises(
    value: object, depth: int, big_integers: bool
) -> None:
    for _ in range(depth):
        value = [value]
    try:
        dumps(value, big_integers=big_integers)
    except UnencodableValue as exc:
        with pytest.raises(UnencodableValue) as caught:
            jsoncanon.check_encodable(value, big_integers=big_integers)
        assert (caught.value.reason, caught.value.detail) == (exc.reason, exc.detail)
        return
    jsoncanon.check_encodable(value, big_integers=big_integers)


#: Integers of every size loads reads, and a few beyond.
any_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-MAX_RECORD_INTEGER - 2, max_value=MAX_RECORD_INTEGER + 2),
    st.sampled_from([MAX_SAFE_INTEGER + 1, MAX_RECORD_INTEGER, MAX_RECORD_INTEGER + 1]),
)
big_values = st.recursive(
    st.one_of(scalars, any_ints),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)
    ),
    max_leaves=10,
)


@given(big_values)
def test_big_integers_are_written_as_their_digits_and_read_back(value: object) -> None:
    """``big_integers`` (a subscription record): an integer loads reads is written exactly,
    and read back as it was; one beyond is unsafe_integer; anything else is written as
    without it."""
    try:
        strict: bytes | None = dumps(value)
    except UnencodableValue:
        strict = None
    try:
        written = dumps(value, big_integers=True)
    except UnencodableValue as exc:
        assert exc.reason in ("unsafe_integer", "circular_reference", "too_deep")
        with pytest.raises(UnencodableValue):
            dumps(value)
        return
    parts: list[str] = []
    jsoncanon._encode(value, parts, [], set(), 0, MAX_RECORD_INTEGER)
    assert written == "".join(parts).encode("utf-8")  # the fast path agrees
    assert strict is None or written == strict
    if find_lone_surrogate(loads_unchecked(written)) is None:
        assert dumps(loads(written), big_integers=True) == written


@pytest.mark.parametrize(
    "n", [MAX_SAFE_INTEGER + 2, 1234567890123456789, -(2**63), 2**64 + 1, MAX_RECORD_INTEGER]
)
def test_big_integers_keep_every_digit(n: int) -> None:
    text = str(n).encode()
    assert dumps({"crm_id": n}, big_integers=True) == b'{"crm_id":' + text + b"}"
    assert dumps([n], big_integers=True) == b"[" + text + b"]"
    assert loads(text) == n
    with pytest.raises(UnencodableValue) as caught:
        dumps({"crm_id": n})
    assert caught.value.reason == "unsafe_integer"


def test_big_integers_refuse_what_loads_would_not_read() -> None:
    with pytest.raises(UnencodableValue) as caught:
        dumps({"a": [MAX_RECORD_INTEGER + 1]}, big_integers=True)
    assert caught.value.reason == "unsafe_integer" and "$.a[0]" in caught.value.detail
    with pytest.raises(InvalidRecord):
        loads(str(MAX_RECORD_INTEGER + 1))
    with pytest.raises(UnencodableValue) as caught:
        dumps(json.loads("[" * 300 + "]" * 300), big_integers=True)
    assert caught.value.reason == "too_deep"


@given(st.dictionaries(keys, st.one_of(scalars, st.integers()), max_size=12))
def test_dumps_flat_is_dumps_for_flat_records(record: dict[str, object]) -> None:
    try:
        expected = dumps(record)
    except UnencodableValue as exc:
        with pytest.raises(UnencodableValue) as caught:
            dumps_flat(record)
        assert caught.value.reason == exc.reason
        return
    assert dumps_flat(record) == expected


@given(st.text(alphabet=st.characters(codec=None, categories=None)))
def test_dumps_str_is_dumps_for_strings(value: str) -> None:
    # Any code point, lone surrogates included (those take the careful encoder).
    assert dumps_str(value) == dumps(value)


def test_dumps_str_of_a_str_subclass_is_its_value() -> None:
    class Name(str):
        pass

    assert dumps_str(Name("a\ud800")) == dumps("a\ud800") == b'"a\\ud800"'


@given(finite_floats)
def test_float_text_parses_back_to_the_same_double(x: float) -> None:
    text = dumps(x).decode()
    assert float(text) == x
    assert text == jsoncanon._number_text(x)
    assert "e" not in text or 1e21 <= abs(x) or abs(x) < 1e-6


# -------------------------------------------------------------------------- Node.js


class NodeError(Exception):
    pass


class NodeOracle:
    """One ``node tests/node/roundtrip.js`` process answering one line per request."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"roundtrip.js exited with {self.proc.poll()}")
        return answer.rstrip("\n")

    def roundtrip(self, body: bytes) -> bytes:
        """``Buffer.from(JSON.stringify(JSON.parse(body)), 'utf8')``."""
        answer = self._ask(base64.b64encode(body).decode("ascii"))
        if answer.startswith("!"):
            raise NodeError(answer[1:])
        return base64.b64decode(answer)

    def number_string(self, x: float) -> str:
        """``String(x)``."""
        return self._ask("n:" + base64.b64encode(struct.pack("<d", x)).decode("ascii"))


@pytest.fixture(scope="module")
def node() -> Iterator[NodeOracle]:
    executable = shutil.which("node")
    if executable is None:
        pytest.skip("node is not on PATH: cannot compare with V8's JSON.stringify")
    proc = subprocess.Popen(
        [executable, str(ROUNDTRIP_JS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    try:
        yield NodeOracle(proc)
    finally:
        try:  # communicate() closes stdin: roundtrip.js then exits
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        if proc.returncode != 0:
            print(f"roundtrip.js exited {proc.returncode}: {stderr}", file=sys.stderr)


TABLES: list[tuple[object, bytes]] = (
    SCALARS
    + [(x, text.encode()) for x, text in FLOATS]
    + [(s, expected) for s, expected in STRINGS]
    + [(chr(c), dumps(chr(c))) for c in range(0x20)]
    + [(v, expected) for v, expected in KEY_ORDER]
)


@pytest.mark.parametrize(("value", "expected"), TABLES)
def test_table_expectations_are_v8_fixed_points(
    node: NodeOracle, value: object, expected: bytes
) -> None:
    assert node.roundtrip(expected) == expected


RAW_BODIES: list[bytes] = [
    b'{"b":1,"10":2,"a":3,"2":4,"01":5,"4294967295":6,"4294967294":7,"-1":8,"0":9}',
    b'{"a":1,"b":2,"a":3}',
    b'{"1":1,"x":2,"1":3,"0":4}',
    b'{"__proto__":{"x":1},"a":[]}',
    b"[1.0, 1e21, 1E+20, 1.5e-7, 0.000001, 1e-7, -0, -0.0, 5e-324, 1e-400, 0.1e1]",
    b'"\\u0000\\u001F\\u007f\\u2028\\/\\uD83D\\uDE00\\ud800\\udc00"',
    '  {"é":"ü", "\u2028":"\U0001f600"}\n'.encode(),
]


@pytest.mark.parametrize("body", RAW_BODIES)
def test_loads_then_dumps_matches_v8_on_raw_bodies(node: NodeOracle, body: bytes) -> None:
    assert node.roundtrip(body) == dumps(loads(body))


@pytest.mark.parametrize(
    ("body", "v8"),
    [
        (b"9007199254740993", b"9007199254740992"),
        (b"-9007199254740993", b"-9007199254740992"),
        (b"123456789012345678901", b"123456789012345680000"),
        (b"[1" + b"0" * 21 + b"]", b"[1e+21]"),
    ],
)
def test_unsafe_integers_change_in_v8_so_dumps_refuses_them(
    node: NodeOracle, body: bytes, v8: bytes
) -> None:
    assert node.roundtrip(body) == v8
    value = loads(body)  # loads keeps the exact integer ...
    with pytest.raises(UnencodableValue) as info:  # ... and dumps will not guess
        dumps(value)
    assert info.value.reason == "unsafe_integer"


@NODE
@given(json_values)
def test_v8_reproduces_our_bytes(node: NodeOracle, value: object) -> None:
    ours = dumps(value)
    assert node.roundtrip(ours) == ours


@NODE
@given(
    st.dictionaries(keys, st.one_of(safe_ints, finite_floats, texts), max_size=12),
    st.booleans(),
    st.sampled_from([None, 0, 2]),
)
def test_v8_reads_any_json_text_as_we_do(
    node: NodeOracle, value: dict[str, object], ascii_only: bool, indent: int | None
) -> None:
    # Foreign-looking JSON text (Python's escapes, key order, float style, whitespace):
    # what V8 re-serializes must be what loads + dumps gives.
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only travel escaped
        body = json.dumps(value, ensure_ascii=True, indent=indent).encode("ascii")
    if find_lone_surrogate(json.loads(body)) is not None:
        with pytest.raises(InvalidRecord, match="invalid_text"):  # V8 would read it
            loads(body)
        return
    assert node.roundtrip(body) == dumps(loads(body))


@NODE
@given(finite_floats)
def test_number_text_matches_v8_string(node: NodeOracle, x: float) -> None:
    assert dumps(x).decode("ascii") == node.number_string(x)


def test_node_oracle_reports_parse_errors(node: NodeOracle) -> None:
    with pytest.raises(NodeError):
        node.roundtrip(b"{")
    assert node.roundtrip(b"[1]") == b"[1]"
