"""bridge.contract.standard_webhooks: headers that the reference ``standardwebhooks`` verifier
accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.contract.standard_webhooks import (
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    generate_secret,
    headers,
    secret_key,
    sign,
)
from bridge.errors import InvalidSubscription

# The example secret from the Standard Webhooks specification's test vectors.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"id":"delivery-uuid","type":"post.published"}'
MSG_ID = "6f1c5bb4-1a0e-4b5e-9d1e-2f8f6b1e3c11"


def now() -> int:
    return int(time.time())


def test_spec_test_vector() -> None:
    assert sign(secret_key(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    produced = headers(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, [SPEC_SECRET])
    assert produced == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": SPEC_SIGNATURE,
    }


def test_reference_verifier_accepts_whsec_secret() -> None:
    secret = generate_secret()
    ts = now()
    produced = headers(MSG_ID, ts, BODY, [secret])
    assert Webhook(secret).verify(BODY, produced) == {
        "id": "delivery-uuid",
        "type": "post.published",
    }


def test_rotation_overlap_verifies_with_either_secret() -> None:
    old, new = generate_secret(), generate_secret()
    produced = headers(MSG_ID, now(), BODY, [new, old])
    assert len(produced[HEADER_SIGNATURE].split(" ")) == 2
    Webhook(new).verify(BODY, produced)
    Webhook(old).verify(BODY, produced)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, produced)


def test_tampered_body_fails() -> None:
    secret = generate_secret()
    produced = headers(MSG_ID, now(), BODY, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"published", b"deleted"), produced)


def test_tampered_timestamp_fails() -> None:
    secret = generate_secret()
    ts = now()
    produced = headers(MSG_ID, ts, BODY, [secret])
    # Still within the verifier's five-minute window, so only the signature can reject it.
    produced[HEADER_TIMESTAMP] = str(ts - 1)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(BODY, produced)


def test_tampered_id_fails() -> None:
    secret = generate_secret()
    produced = headers(MSG_ID, now(), BODY, [secret])
    produced[HEADER_ID] = "another-delivery"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, produced)


def test_plain_text_secret_uses_its_utf8_bytes() -> None:
    secret = "plain-sécret ✓"
    ts = now()
    produced = headers(MSG_ID, ts, BODY, [secret])
    expected = hmac.new(
        secret.encode("utf-8"), f"{MSG_ID}.{ts}.".encode() + BODY, hashlib.sha256
    ).digest()
    assert produced[HEADER_SIGNATURE] == "v1," + base64.b64encode(expected).decode()
    # Receivers using the reference library pass such a key as bytes.
    Webhook(secret.encode("utf-8")).verify(BODY, produced)


def test_generate_secret_shape() -> None:
    secret = generate_secret()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    assert len(secret_key(secret)) == 32
    assert generate_secret() != secret


def test_unpadded_whsec_secret_decodes_like_the_reference_library() -> None:
    padded = generate_secret()
    unpadded = padded.rstrip("=")
    assert secret_key(unpadded) == secret_key(padded)
    produced = headers(MSG_ID, now(), BODY, [unpadded])
    Webhook(unpadded).verify(BODY, produced)


@pytest.mark.parametrize(
    "secret", ["whsec_Zq8-very-secret-value", "whsec_not base64!", "whsec_", ""]
)
def test_malformed_secrets_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        headers(MSG_ID, now(), BODY, [secret])
    assert caught.value.reason == "secret_malformed"
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(caught.value)


def test_no_secret_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        headers(MSG_ID, now(), BODY, [])


@given(body=st.text(), msg_id=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True))
def test_reference_verifier_accepts_any_text_body(body: str, msg_id: str) -> None:
    secret = generate_secret()
    raw = body.encode("utf-8")
    produced = headers(msg_id, now(), raw, [secret])
    Webhook(secret).verify(raw, produced, json_parse=False)


@given(body=st.binary(), flip=st.integers(min_value=0))
def test_any_body_signature_matches_hmac_and_a_flipped_bit_does_not(body: bytes, flip: int) -> None:
    secret = generate_secret()
    key = secret_key(secret)
    ts = 1_700_000_000
    produced = headers(MSG_ID, ts, body, [secret])
    signed = f"{MSG_ID}.{ts}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    assert produced[HEADER_SIGNATURE] == "v1," + base64.b64encode(digest).decode()
    if body:
        index = flip % len(body)
        tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
        assert headers(MSG_ID, ts, tampered, [secret]) != produced
