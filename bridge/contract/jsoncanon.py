"""JSON bytes that survive a JavaScript receiver's ``JSON.stringify(JSON.parse(body))``.

Receivers following our documentation verify the HMAC over the *re-serialized* parsed
body, so what we sign and send must already be that re-serialization: ``dumps`` produces
exactly the UTF-8 bytes V8's ``JSON.stringify`` gives after ``JSON.parse`` — compact,
non-ASCII unescaped, V8's string escapes (lone surrogates as ``\\udxxx``), numbers as
ECMAScript ``Number::toString``, and object keys in V8's own-property order (array-index
keys ascending, then the rest in insertion order). ``loads`` parses strictly.

Text rule: a lone surrogate (``"\\ud800"`` escaped without its pair) is valid JSON but no
Unicode text: it has no UTF-8 form, so an id, key or header made from it fails wherever it is
encoded. ``loads`` refuses it (``InvalidRecord("invalid_text")``, as I-JSON, RFC 7493, does);
:func:`find_lone_surrogate` finds one in values built in Python. ``dumps`` still writes one as
V8 does (``\\udxxx``), since it encodes whatever it is given.

Integer rule: a JavaScript number is a double, so a Python ``int`` with
``abs(n) > MAX_SAFE_INTEGER`` (2**53 - 1) would change on the receiver's round trip;
``dumps`` refuses it (``UnencodableValue("unsafe_integer")``) rather than send bytes
the receiver cannot reproduce. Integral *floats* of any size (``1e300``) are fine. With
``big_integers=True`` it writes an integer of any size :func:`loads` reads (up to
:data:`MAX_RECORD_INTEGER`) as its exact digits: for records that are the bridge's own state
(a subscription record, which a producer may give a 64-bit id in a field of its own), never
for what a JavaScript receiver or client reads (delivery bodies, answers, attempts, dead
letters).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence

from bridge.errors import InvalidRecord, UnencodableValue

__all__ = [
    "MAX_SAFE_INTEGER",
    "MAX_RECORD_INTEGER",
    "MAX_DEPTH",
    "dumps",
    "dumps_flat",
    "dumps_str",
    "loads",
    "loads_encodable",
    "check_encodable",
    "check_text",
    "find_lone_surrogate",
    "format_path",
]

#: Largest integer n such that n and n + 1 are both exactly representable as doubles.
MAX_SAFE_INTEGER = 2**53 - 1

#: Largest integer :func:`loads` reads (the next one is nearer to 2**1024, beyond the doubles:
#: JavaScript reads it as Infinity), and the largest ``dumps(..., big_integers=True)`` writes.
MAX_RECORD_INTEGER = 2**1024 - 2**970 - 1

#: Containers nested deeper than this are refused (``too_deep``), well inside Python's
#: recursion limit: a value of this many levels (an empty array is one) is the deepest
#: :func:`dumps` encodes.
MAX_DEPTH = 256
_MAX_ARRAY_INDEX = 2**32 - 2
_DIGITS = frozenset("0123456789")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: The JSON escape of a surrogate code point (a pair is two of them).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

_encode_str = json.encoder.encode_basestring  # the C escaper when available

# The C encoder (``_c_encode`` below, this object's ``encode`` when there is no C
# accelerator), used only for values ``_plain`` vouched for (acyclic, exact types, no floats
# needing reformatting, no array-index keys); surrogates make the ``.encode("utf-8")`` fail.
_C_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)


def _no_default(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _c_encoder() -> Callable[[object], str]:
    """``_C_ENCODER.encode``, without the C encoder ``JSONEncoder.encode`` builds per call."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator
        return _C_ENCODER.encode
    # The arguments JSONEncoder.iterencode passes: markers (None: check_circular=False),
    # default, the string encoder, indent, key and item separators, sort_keys, skipkeys,
    # allow_nan.
    iterencode = make(None, _no_default, _encode_str, None, ":", ",", False, False, False)

    def encode(value: object) -> str:
        if type(value) is str:
            return _encode_str(value)
        return "".join(iterencode(value, 0))

    return encode


_c_encode = _c_encoder()


class _Unencodable(Exception):
    """Internal: the reason, and the JSON path segments of the offending value."""

    def __init__(self, reason: str, what: str, path: list[str | int]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.what = what
        self.path = path


def dumps(value: object, *, max_depth: int = MAX_DEPTH, big_integers: bool = False) -> bytes:
    """Encode ``value`` to the bytes ``JSON.stringify(JSON.parse(...))`` reproduces.

    Raises ``UnencodableValue`` with reason ``unsafe_integer``, ``non_finite_number``,
    ``unsupported_type`` (also for non-``str`` dict keys), ``circular_reference`` or
    ``too_deep`` (nested more than ``max_depth`` levels, at most :data:`MAX_DEPTH`: a value
    that goes inside others, for those to encode too); the message names the JSON path, never
    the value.

    With ``big_integers`` an integer beyond :data:`MAX_SAFE_INTEGER` is written as its exact
    digits, up to :data:`MAX_RECORD_INTEGER` (``unsafe_integer`` beyond): bytes a JavaScript
    reader would not reproduce, for a record the bridge keeps (a subscription record), never
    one it sends or answers with. Every other value is written as without it.
    """
    # Nesting is counted from the depth that leaves ``max_depth`` levels below MAX_DEPTH.
    above = MAX_DEPTH - min(max_depth, MAX_DEPTH)
    limit = MAX_RECORD_INTEGER if big_integers else MAX_SAFE_INTEGER
    try:
        if _plain(value, above, limit):
            try:
                return _c_encode(value).encode("utf-8")
            except UnicodeEncodeError:  # a surrogate code point: needs V8's escaping
                pass
        parts: list[str] = []
        _encode(value, parts, [], set(), above, limit)
    except _Unencodable as exc:
        where = format_path(exc.path)
        raise UnencodableValue(exc.reason, f"{exc.what} at {where}") from None
    except RecursionError:  # only if the caller's own stack is already deep
        raise UnencodableValue("too_deep", "nesting too deep at $") from None
    return "".join(parts).encode("utf-8")


def check_encodable(value: object, *, big_integers: bool = False) -> None:
    """Raise what :func:`dumps` of ``value`` (with ``big_integers`` as given) raises
    (``UnencodableValue``), if anything; the bytes are built only when the fast path cannot
    vouch for them (a value read is checked for later writes without being encoded now)."""
    if not _plain(value, 0, MAX_RECORD_INTEGER if big_integers else MAX_SAFE_INTEGER):
        dumps(value, big_integers=big_integers)


def dumps_flat(record: dict[str, object]) -> bytes:
    """:func:`dumps` for a dict of strings, numbers, booleans and ``None`` (a record the bridge
    writes, such as an attempt orjson could not write as it is): the same bytes, without
    walking the values twice."""
    # The checks of ``_plain`` inline.
    for key, value in record.items():
        if type(key) is not str or key[:1] in _DIGITS:
            return dumps(record)
        kind = type(value)
        if kind is str or value is None or kind is bool:
            continue
        if kind is int:
            if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
                continue
        elif kind is float:
            if _plain_float(value):  # type: ignore[arg-type]
                continue
        return dumps(record)
    try:
        return _c_encode(record).encode("utf-8")
    except UnicodeEncodeError:  # a surrogate code point: needs V8's escaping
        return dumps(record)


def dumps_str(value: str) -> bytes:
    """:func:`dumps` of a ``str`` (the same bytes, without the general checks)."""
    if type(value) is str:
        try:
            return _encode_str(value).encode("utf-8")
        except UnicodeEncodeError:  # a surrogate code point: needs V8's escaping
            pass
    return dumps(value)


def _plain(value: object, depth: int, limit: int = MAX_SAFE_INTEGER) -> bool:
    """True when the C encoder's output for ``value`` is already V8's (bar surrogates), its
    integers within ``limit`` (Python's digits are JavaScript's up to MAX_SAFE_INTEGER; beyond,
    they are what ``big_integers`` asks for).

    False means "use the careful encoder", which also reports every error properly.
    """
    if type(value) is str:
        return True
    if type(value) is dict:
        if depth >= MAX_DEPTH:
            return False
        for k, v in value.items():
            if type(k) is not str or k[:1] in _DIGITS or not _plain(v, depth + 1, limit):
                return False
        return True
    if type(value) is int:
        return -limit <= value <= limit
    if type(value) is list or type(value) is tuple:
        if depth >= MAX_DEPTH:
            return False
        for v in value:
            if not _plain(v, depth + 1, limit):
                return False
        return True
    if value is None or type(value) is bool:
        return True
    if type(value) is float:
        return _plain_float(value)
    return False


def _plain_float(value: float) -> bool:
    """True when Python's ``repr`` of ``value`` is also JavaScript's ``Number::toString``."""
    r = float.__repr__(value)
    # Python and JS agree on fixed notation with a fraction; "1.0", "1e-07" differ.
    return "." in r and "e" not in r and not r.endswith(".0")


def _encode(
    value: object,
    parts: list[str],
    path: list[str | int],
    active: set[int],
    above: int = 0,
    limit: int = MAX_SAFE_INTEGER,
) -> None:
    """Append V8's JSON text for ``value`` to ``parts``; ``path`` locates errors, ``above``
    levels above it count towards :data:`MAX_DEPTH`, integers beyond ``limit`` are refused
    (:data:`MAX_SAFE_INTEGER`, or :data:`MAX_RECORD_INTEGER` for ``big_integers``)."""
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(_string_text(str.__str__(value)))
    elif isinstance(value, int):
        n = int.__int__(value)
        if not -limit <= n <= limit:
            what = (
                "integer beyond +/-(2**53 - 1) (send a string)"
                if limit == MAX_SAFE_INTEGER
                else "integer beyond the double range"
            )
            raise _Unencodable("unsafe_integer", what, path)
        parts.append(int.__repr__(n))
    elif isinstance(value, float):
        x = float.__float__(value)
        if not math.isfinite(x):
            raise _Unencodable("non_finite_number", "NaN or Infinity", path)
        parts.append(_number_text(x))
    elif isinstance(value, (dict, list, tuple)):
        if len(path) + above >= MAX_DEPTH:
            raise _Unencodable("too_deep", f"nesting deeper than {MAX_DEPTH - above}", path)
        if id(value) in active:
            raise _Unencodable("circular_reference", "a container contains itself", path)
        active.add(id(value))
        if isinstance(value, dict):
            _encode_object(value, parts, path, active, above, limit)
        else:
            parts.append("[")
            for i, item in enumerate(value):
                if i:
                    parts.append(",")
                path.append(i)
                _encode(item, parts, path, active, above, limit)
                path.pop()
            parts.append("]")
        active.discard(id(value))
    else:
        raise _Unencodable("unsupported_type", f"unsupported type {type(value).__name__}", path)


def _encode_object(
    obj: dict[object, object],
    parts: list[str],
    path: list[str | int],
    active: set[int],
    above: int,
    limit: int,
) -> None:
    items: list[tuple[str, object]] = []
    indexed: list[tuple[int, str, object]] = []
    for k, v in dict.items(obj):
        if not isinstance(k, str):
            raise _Unencodable("unsupported_type", f"object key of type {type(k).__name__}", path)
        key = str.__str__(k)
        index = _array_index(key)
        if index is None:
            items.append((key, v))
        else:
            indexed.append((index, key, v))
    if indexed:  # V8 enumerates array-index keys first, ascending, then the others
        indexed.sort(key=lambda entry: entry[0])
        items = [(key, v) for _, key, v in indexed] + items
    parts.append("{")
    for i, (key, v) in enumerate(items):
        if i:
            parts.append(",")
        parts.append(_string_text(key))
        parts.append(":")
        path.append(key)
        _encode(v, parts, path, active, above, limit)
        path.pop()
    parts.append("}")


def _array_index(key: str) -> int | None:
    """The index if ``key`` is an array index: canonical "0" .. "4294967294"."""
    if not key or len(key) > 10 or not key.isascii() or not key.isdigit():
        return None
    if key[0] == "0" and len(key) > 1:
        return None
    n = int(key)
    return n if n <= _MAX_ARRAY_INDEX else None


def _string_text(s: str) -> str:
    """``s`` as a JSON string literal, as well-formed ``JSON.stringify`` writes it."""
    if s.isascii() or not _SURROGATE.search(s):
        return _encode_str(s)
    # Python may hold a UTF-16 surrogate *pair* as two code points; in JavaScript that
    # is one astral character, so join such pairs first. Only lone ones are escaped.
    s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", _encode_str(s))


def _number_text(x: float) -> str:
    """ECMAScript ``Number::toString(x)`` for a finite double (``-0`` gives ``"0"``)."""
    r = float.__repr__(x)  # shortest round-trip digits, like ECMAScript
    if "e" not in r:  # Python chose fixed notation: 1e-4 <= |x| < 1e16 or zero
        if r.endswith(".0"):
            r = r[:-2]
            return "0" if r == "-0" else r
        return r
    mantissa, _, exp = r.partition("e")
    sign = ""
    if mantissa[0] == "-":
        sign, mantissa = "-", mantissa[1:]
    digits = mantissa.replace(".", "")
    k = len(digits)
    n = int(exp) + 1  # x = 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        e = f"e{'+' if n > 0 else '-'}{abs(n - 1)}"
        text = digits + e if k == 1 else f"{digits[0]}.{digits[1:]}{e}"
    return sign + text


def format_path(path: Sequence[str | int]) -> str:
    """``$.data.items[3]["odd key"]``: printable anywhere (other keys quoted and escaped to
    ASCII, cut after 40 characters); long paths keep their head and tail only."""
    out = ["$"]
    for i, seg in enumerate(path):
        if len(path) > 12 and 8 <= i < len(path) - 4:
            if i == 8:
                out.append(f"...({len(path) - 12} more)...")
            continue
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif seg.isidentifier() and seg.isascii():
            out.append(f".{seg}")
        else:
            shown = seg if len(seg) <= 40 else seg[:40] + "..."
            out.append(f"[{json.dumps(shown)}]")
    return "".join(out)


class _BadNumber(ValueError):
    """Internal: a number literal JavaScript would not read back as a finite number."""


def _parse_float(s: str) -> float:
    x = float(s)
    if math.isinf(x):
        raise _BadNumber("number beyond the double range")
    return x


def _parse_int(s: str) -> int | float:
    if len(s) < 16:  # |n| < 10**15: a safe integer
        return int(s)
    # Over 309 characters may pass the double range (JavaScript: Infinity); checking
    # first also keeps int() clear of its 4300-digit limit.
    x = float(s)
    if math.isinf(x):
        raise _BadNumber("number beyond the double range")
    n = int(s)
    if abs(n) > MAX_SAFE_INTEGER and _number_text(x) == s:
        # Exactly how JavaScript prints the double x (e.g. our own dumps(2.0**60)):
        # nothing is lost by reading it as that double, and dumps writes it back as is.
        return x
    return n


def _parse_constant(name: str) -> object:
    raise _BadNumber(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant
)
#: :data:`_DECODER` for text without a run of 16 digits, whose integer literals are all safe
#: integers that ``int`` reads as :func:`_parse_int` does: the C scanner reads them itself,
#: without a call into Python for each.
_SHORT_INTS_DECODER = json.JSONDecoder(parse_float=_parse_float, parse_constant=_parse_constant)
#: Sixteen digits: the fewest an integer beyond MAX_SAFE_INTEGER is written with.
_LONG_DIGITS = re.compile("[0-9]{16}")


def loads(data: bytes | str) -> object:
    """Parse JSON strictly, like ``JSON.parse`` but refusing what cannot round-trip.

    Rejects invalid UTF-8, ``NaN``/``Infinity`` literals and numbers beyond the double
    range with ``InvalidRecord("malformed_json")``, and strings (keys too) holding a lone
    surrogate with ``InvalidRecord("invalid_text")``. Duplicate keys: the last value wins,
    at the first key's position (as in JavaScript). An integer literal beyond
    ``MAX_SAFE_INTEGER`` stays an exact ``int`` (which ``dumps`` refuses, but for
    ``big_integers``), unless its text
    is exactly JavaScript's rendering of the double it denotes ("9007199254740992",
    "1152921504606847000"): then it is that ``float``, so ``dumps(loads(dumps(v)))``
    equals ``dumps(v)``.
    """
    text = _text(data)
    decoder = _DECODER if _LONG_DIGITS.search(text) is not None else _SHORT_INTS_DECODER
    return _decoded(text, decoder, literal_surrogates=isinstance(data, str))


def loads_encodable(data: bytes | str) -> object:
    """:func:`loads`, refusing also what :func:`dumps` would refuse of the value read, with
    the error ``dumps`` raises (``UnencodableValue``, an ``InvalidRecord``, naming the first
    such value's path): an integer beyond :data:`MAX_SAFE_INTEGER` (``unsafe_integer``) or
    containers nested more than :data:`MAX_DEPTH` levels (``too_deep``). For what a client
    sends that is answered to JavaScript readers (an API request's body).

    Judged as the text is read rather than by encoding the value (which took longer than
    reading it: until 2026-12-07 the API did so for every body): integers by the parser's
    hook, which only text with a run of 16 digits needs; nesting by counting brackets, and
    pairing them only when there are more than :data:`MAX_DEPTH` of them.
    ``dumps`` runs only for a value it refuses, to name where.
    """
    text = _text(data)
    unsafe: list[str] = []
    if _LONG_DIGITS.search(text) is None:
        decoder = _SHORT_INTS_DECODER  # no integer beyond 10**16 - 1 can be written
    else:

        def parse_int(literal: str) -> int | float:
            n = _parse_int(literal)
            if type(n) is int and not -MAX_SAFE_INTEGER <= n <= MAX_SAFE_INTEGER:
                unsafe.append(literal)
            return n

        decoder = json.JSONDecoder(
            parse_float=_parse_float, parse_int=parse_int, parse_constant=_parse_constant
        )
    value = _decoded(text, decoder, literal_surrogates=isinstance(data, str))
    if unsafe or (text.count("[") + text.count("{") > MAX_DEPTH and _deeper_than(text, MAX_DEPTH)):
        dumps(value)  # raises what it refuses there, naming the path
    return value


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"invalid UTF-8 at byte {exc.start}"
        raise InvalidRecord("malformed_json", detail) from None


def _decoded(text: str, decoder: json.JSONDecoder, *, literal_surrogates: bool) -> object:
    """``text`` read by ``decoder``, as :func:`loads` reads it (``literal_surrogates``: the
    text was given as a ``str``, which may hold a surrogate unescaped)."""
    try:
        value = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(
            "malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _BadNumber as exc:
        raise InvalidRecord("malformed_json", str(exc)) from None
    except RecursionError:
        raise InvalidRecord("malformed_json", "nesting too deep") from None
    # Per record on the hot path: a search for a backslash (memchr) rules out every escape
    # in most records; the pattern then rules out the other escapes; only a surrogate escape
    # (a pair is two) or, in a str, a raw surrogate costs a walk over the decoded strings.
    if ("\\" in text and _SURROGATE_ESCAPE.search(text) is not None) or (
        literal_surrogates and not text.isascii() and _SURROGATE.search(text) is not None
    ):
        check_text(value)
    return value


#: A JSON string literal (of text the parser took: every quote inside one is escaped).
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
#: An empty array or object, once all but brackets is taken away.
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")
#: What is not a bracket.
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def _deeper_than(text: str, levels: int) -> bool:
    """Whether the JSON ``text`` (which parsed) nests containers more than ``levels`` deep (the
    outermost is the first level): its brackets outside strings are kept, and the empty pairs
    they make (the innermost containers) taken away a level at a time, at C speed."""
    brackets = _NOT_BRACKETS.sub("", _STRING_LITERAL.sub("", text))
    for _ in range(levels):
        if not brackets:
            return False
        # One pass takes the pairs empty as it starts: `{[]}` is two levels, two passes.
        brackets = _EMPTY_PAIR.sub("", brackets)
    return bool(brackets)


def check_text(value: object) -> None:
    """Raise ``InvalidRecord("invalid_text")`` if a string in ``value`` (an object key too)
    holds a lone surrogate; the message names its JSON path, never the string."""
    where = find_lone_surrogate(value)
    if where is not None:
        raise InvalidRecord("invalid_text", f"a lone surrogate (\\udxxx) in the string at {where}")


def find_lone_surrogate(value: object) -> str | None:
    """The JSON path of a string (an object key, or a value) holding a lone surrogate, or
    ``None``. Containers are walked without recursion, however deep, each value once: a path
    is kept as a link to its parent's, and spelled out only for the string found (until
    2026-12-05 every value queued a copy of its whole path: a record of 0.9 MB, 900 arrays
    deep, took 20 s and 3.3 GB)."""
    if isinstance(value, str):
        return format_path([]) if _has_surrogate(value) else None
    stack: list[tuple[object, _Where]] = [(value, None)]
    while stack:
        item, where = stack.pop()
        # Strings are looked at as their container is; only containers are queued (numbers
        # and strings, most of a large value, cost no entry).
        inner: list[tuple[object, _Where]] = []
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _has_surrogate(key):
                    return format_path([*_spelled(where), key])
                if isinstance(child, str):
                    if _has_surrogate(child):
                        return format_path([*_spelled(where), str(key)])
                elif isinstance(child, dict | list | tuple):
                    inner.append((child, (where, str(key))))
        elif isinstance(item, list | tuple):
            for i, child in enumerate(item):
                if isinstance(child, str):
                    if _has_surrogate(child):
                        return format_path([*_spelled(where), i])
                elif isinstance(child, dict | list | tuple):
                    inner.append((child, (where, i)))
        inner.reverse()
        stack.extend(inner)
    return None


#: A place in a JSON value: its parent's place and its key or index (``None``: the top).
_Where = tuple["_Where", str | int] | None


def _spelled(where: _Where) -> list[str | int]:
    path: list[str | int] = []
    while where is not None:
        where, step = where
        path.append(step)
    path.reverse()
    return path


def _has_surrogate(text: str) -> bool:
    # A surrogate *pair* held as two code points is one too: it has no UTF-8 form either.
    return not text.isascii() and _SURROGATE.search(text) is not None
