"""bridge.contract.signing: lower-case hex HMAC-SHA256 of the exact body, and its verification."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.contract.signing import sign, verify

SECRET = "your_webhook_secret_here"
BODY = b'{"id":"delivery-uuid"}'
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def test_rfc4231_test_case_2() -> None:
    # RFC 4231, 4.3: key "Jefe", data "what do ya want for nothing?", HMAC-SHA-256.
    assert sign("Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_known_vector() -> None:
    # Checked once with: python -c 'import hmac,hashlib; print(hmac.new(
    #   b"your_webhook_secret_here", b"{\"id\":\"delivery-uuid\"}", hashlib.sha256).hexdigest())'
    assert sign(SECRET, BODY) == "bb5babb672601af3b83875b66fa86d25f59570ea521e667b78457eb3165f2bc0"


def test_matches_hmac_computed_independently() -> None:
    expected = hmac.new(SECRET.encode("utf-8"), BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY) == expected


def test_secret_is_used_as_utf8() -> None:
    secret = "sécret-✓-𝄞"
    expected = hmac.new(secret.encode("utf-8"), BODY, hashlib.sha256).hexdigest()
    assert sign(secret, BODY) == expected
    assert (
        sign(secret, BODY)
        != hmac.new(secret.encode("latin-1", "replace"), BODY, "sha256").hexdigest()
    )


def test_empty_body() -> None:
    assert sign(SECRET, b"") == hmac.new(SECRET.encode(), b"", hashlib.sha256).hexdigest()


def test_signature_is_lower_case_hex() -> None:
    signature = sign(SECRET, BODY)
    assert HEX64.match(signature)
    assert signature == signature.lower()


def test_signature_depends_on_secret_and_body() -> None:
    assert sign(SECRET, BODY) != sign(SECRET + "x", BODY)
    assert sign(SECRET, BODY) != sign(SECRET, BODY + b" ")


def test_verify_accepts_the_signature() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY)) is True


def test_verify_accepts_upper_case_and_surrounding_whitespace() -> None:
    signature = sign(SECRET, BODY)
    assert verify(SECRET, BODY, signature.upper()) is True
    assert verify(SECRET, BODY, f"  {signature}\t") is True


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s[:-1],
        lambda s: s + "0",
        lambda s: "",
        lambda s: "sha256=" + s,
        lambda s: s[::-1],
        lambda s: ("1" if s[0] != "1" else "2") + s[1:],
        lambda s: "0" * 64,
        lambda s: "z" * 64,
    ],
)
def test_verify_rejects_wrong_signatures(tamper: Callable[[str], str]) -> None:
    signature = sign(SECRET, BODY)
    bad = tamper(signature)
    assert bad.strip().lower() != signature
    assert verify(SECRET, BODY, bad) is False


def test_verify_rejects_a_tampered_body_or_wrong_secret() -> None:
    signature = sign(SECRET, BODY)
    assert verify(SECRET, BODY.replace(b"delivery", b"Delivery"), signature) is False
    assert verify(SECRET, BODY + b"\n", signature) is False
    assert verify("other-secret", BODY, signature) is False


@pytest.mark.parametrize(
    "signature",
    ["é" * 64, "ａ" * 64, sign(SECRET, BODY)[:-1] + "\u00e9"],
    ids=["latin-1", "fullwidth", "last-char"],
)
def test_verify_rejects_non_ascii_signatures(signature: str) -> None:
    assert verify(SECRET, BODY, signature) is False


# -------------------------------------------------------------------------- property


@given(secret=st.text(), body=st.binary())
def test_verify_accepts_every_signature(secret: str, body: bytes) -> None:
    signature = sign(secret, body)
    assert HEX64.match(signature)
    assert verify(secret, body, signature)
    assert verify(secret, body, signature.upper())


@given(secret=st.text(), body=st.binary(min_size=1), data=st.data())
def test_any_single_byte_change_fails(secret: str, body: bytes, data: st.DataObject) -> None:
    signature = sign(secret, body)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    delta = data.draw(st.integers(1, 255), label="delta")
    changed = bytearray(body)
    changed[index] = (changed[index] + delta) % 256
    assert not verify(secret, bytes(changed), signature)


@given(secret=st.text(), body=st.binary(), data=st.data())
def test_any_single_character_change_of_the_signature_fails(
    secret: str, body: bytes, data: st.DataObject
) -> None:
    signature = sign(secret, body)
    index = data.draw(st.integers(0, 63), label="index")
    replacement = data.draw(
        st.sampled_from("0123456789abcdef").filter(lambda c: c != signature[index])
    )
    bad = signature[:index] + replacement + signature[index + 1 :]
    assert not verify(secret, body, bad)
