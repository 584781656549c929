"""bridge.subscriptions.secretbox: AES-256-GCM secrets bound to their webhook id, with rotating key
ids."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ConfigError, InvalidSubscription
from bridge.subscriptions.secretbox import Keyring, generate_key, is_encrypted, key_id

KEY1 = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(100, 132))).decode()
SECRET = "whsec_Zq8-very-secret-value"
AAD = b"webhook_abc"
ENCRYPTED = re.compile(r"^enc:v1:(?P<kid>[A-Za-z0-9_.-]+):(?P<payload>[A-Za-z0-9_=-]+)$")


def ring(setting: str = f"kid1:{KEY1}") -> Keyring:
    return Keyring.from_setting(setting)


def flip_payload_bit(value: str, byte: int) -> str:
    prefix, payload = value.rsplit(":", 1)
    blob = bytearray(base64.urlsafe_b64decode(payload))
    blob[byte % len(blob)] ^= 0x01
    return f"{prefix}:{base64.urlsafe_b64encode(bytes(blob)).decode()}"


def test_round_trip_and_format() -> None:
    keyring = ring()
    value = keyring.encrypt(SECRET, aad=AAD)
    match = ENCRYPTED.match(value)
    assert match is not None and match["kid"] == "kid1"
    # 12-byte nonce, the UTF-8 plaintext, 16-byte tag.
    assert len(base64.urlsafe_b64decode(match["payload"])) == 12 + len(SECRET.encode()) + 16
    assert SECRET not in value
    assert keyring.decrypt(value, aad=AAD) == SECRET
    assert is_encrypted(value) and key_id(value) == "kid1"


def test_each_encryption_uses_a_fresh_nonce() -> None:
    keyring = ring()
    assert keyring.encrypt(SECRET, aad=AAD) != keyring.encrypt(SECRET, aad=AAD)


def test_rotation_encrypts_with_the_first_key_and_decrypts_with_all() -> None:
    before = ring(f"kid1:{KEY1}")
    old_value = before.encrypt(SECRET, aad=AAD)

    after = ring(f"kid2:{KEY2},kid1:{KEY1}")
    assert after.primary_kid == "kid2"
    assert after.kids == ("kid2", "kid1")
    new_value = after.encrypt(SECRET, aad=AAD)
    assert key_id(new_value) == "kid2"
    assert after.decrypt(old_value, aad=AAD) == SECRET
    assert after.decrypt(new_value, aad=AAD) == SECRET

    # Once kid1 is dropped, values still using it are reported, not silently passed on.
    retired = ring(f"kid2:{KEY2}")
    with pytest.raises(
        InvalidSubscription, match=r"not in secret_keys \(configured: kid2\)"
    ) as caught:
        retired.decrypt(old_value, aad=AAD)
    assert caught.value.reason == "secret_undecryptable"
    assert "kid1" not in str(caught.value)  # part of the record's secret field: never printed


def test_wrong_aad_fails() -> None:
    keyring = ring()
    value = keyring.encrypt(SECRET, aad=AAD)
    with pytest.raises(InvalidSubscription) as caught:
        keyring.decrypt(value, aad=b"webhook_other")
    assert caught.value.reason == "secret_undecryptable"
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("byte", [0, 11, 12, 20, -1])
def test_tampered_ciphertext_fails(byte: int) -> None:
    keyring = ring()
    value = keyring.encrypt(SECRET, aad=AAD)
    with pytest.raises(InvalidSubscription) as caught:
        keyring.decrypt(flip_payload_bit(value, byte), aad=AAD)
    assert caught.value.reason == "secret_undecryptable"


def test_relabelled_kid_fails() -> None:
    keyring = ring(f"kid1:{KEY1},kid2:{KEY2}")
    value = keyring.encrypt(SECRET, aad=AAD)
    with pytest.raises(InvalidSubscription, match="secret_undecryptable"):
        keyring.decrypt(value.replace(":kid1:", ":kid2:"), aad=AAD)


@pytest.mark.parametrize(
    "value",
    [
        "enc:",
        "enc:v1",
        "enc:v2:kid1:AAAA",
        "enc:v1:kid1",
        "enc:v1:kid1:not base64!",
        "enc:v1:kid1:AAAA",  # shorter than nonce + tag
        "enc:v1:kid1:AAAA:extra",
    ],
)
def test_malformed_values_fail(value: str) -> None:
    with pytest.raises(InvalidSubscription) as caught:
        ring().decrypt(value, aad=AAD)
    assert caught.value.reason == "secret_undecryptable"
    assert KEY1 not in str(caught.value)


@pytest.mark.parametrize("plain", [SECRET, "", "plain secret", "ENC:upper is plain", "v1:kid1:x"])
def test_plain_values_pass_through(plain: str) -> None:
    assert not is_encrypted(plain)
    assert key_id(plain) is None
    assert ring().decrypt(plain, aad=AAD) == plain


def test_repr_hides_keys() -> None:
    raw1, raw2 = base64.b64decode(KEY1), base64.b64decode(KEY2)
    keyring = ring(f"kid1:{KEY1},kid2:{KEY2}")
    for text in (repr(keyring), str(keyring), f"{keyring!r}"):
        assert text == "Keyring(kids=['kid1', 'kid2'], primary='kid1')"
        for leak in (KEY1, KEY2, repr(raw1), repr(raw2), raw1.hex(), raw2.hex()):
            assert leak not in text


def test_from_setting_accepts_spaces_urlsafe_and_unpadded_keys() -> None:
    raw = bytes([0xFB, 0xFF] * 16)  # encodes with '+' and '/' in standard base64
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert "+" in standard or "/" in standard
    a = Keyring.from_setting(f" a : {standard} , ")
    b = Keyring.from_setting(f"b:{urlsafe}")
    value = a.encrypt(SECRET, aad=AAD)
    assert b.decrypt(value.replace(":a:", ":b:"), aad=AAD) == SECRET


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "at least one key"),
        (" , ", "at least one key"),
        (KEY1, "kid:base64key"),
        (f"kid1:{base64.b64encode(bytes(16)).decode()}", "16 bytes"),
        (f"kid1:{base64.b64encode(bytes(33)).decode()}", "33 bytes"),
        ("kid1:!!!not-base64!!!", "not valid base64"),
        (f"kid1:{KEY1},kid1:{KEY2}", "appears twice"),
        (f"bad kid:{KEY1}", "key id"),
        (f":{KEY1}", "key id"),
    ],
)
def test_bad_settings_are_config_errors_without_key_material(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Keyring.from_setting(setting)
    for secret_part in (KEY1, KEY2, "not-base64"):
        assert secret_part not in str(caught.value)


def test_generate_key() -> None:
    key = generate_key()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert generate_key() != key
    Keyring.from_setting(f"new:{key}")


@given(plaintext=st.text(), aad=st.binary(max_size=64))
def test_round_trip_property(plaintext: str, aad: bytes) -> None:
    keyring = ring(f"kid2:{KEY2},kid1:{KEY1}")
    value = keyring.encrypt(plaintext, aad=aad)
    assert ENCRYPTED.match(value)
    assert keyring.decrypt(value, aad=aad) == plaintext
    with pytest.raises(InvalidSubscription):
        keyring.decrypt(value, aad=aad + b"x")


def test_a_secret_encrypted_from_nothing_is_refused_and_an_empty_previous_one_dropped() -> None:
    """An encrypted empty string passes the schema (which refuses a plain one) and was an HMAC
    key anyone can sign with, until 2026-12-07: the record is refused (``secret_malformed``);
    an empty previous secret ends the overlap."""
    import json

    from bridge.subscriptions.webhook import parse_webhook

    keyring = ring()
    aad = b"wh"
    record = {
        "id": "wh",
        "name": "n",
        "url": "https://example.com/h",
        "events": ["*"],
        "site_id": "s",
        "active": True,
        "secret": keyring.encrypt("", aad=aad),
    }
    with pytest.raises(InvalidSubscription) as caught:
        parse_webhook(b"wh", json.dumps(record).encode(), keyring)
    assert caught.value.reason == "secret_malformed"
    record.update(secret=keyring.encrypt("s" * 32, aad=aad))
    record.update(previous_secret=keyring.encrypt("", aad=aad))
    webhook = parse_webhook(b"wh", json.dumps(record).encode(), keyring)
    assert webhook.secret == "s" * 32 and webhook.previous_secret is None
