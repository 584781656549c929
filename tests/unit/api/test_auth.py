"""Bearer tokens: loading the hashed token file, authenticating, scopes and restrictions."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.api import auth
from bridge.api.auth import Principal, TokenSet, hash_token, new_token
from bridge.api.problems import Problem
from bridge.errors import ConfigError
from bridge.subscriptions.webhook import Webhook
from tests.unit.api.conftest import ADMIN, READER, SITE_1, TOKENS, USER_1


def webhook(site_id: str | None, user_id: str | None) -> Webhook:
    return Webhook(
        id="wh_1", name="n", url="https://example.com/h", secret="s" * 16,
        events=frozenset({"*"}), site_id=site_id, user_id=user_id,
    )  # fmt: skip


def test_a_new_token_is_32_random_bytes_and_hashes_to_hex_sha256() -> None:
    token = new_token()
    assert token.startswith("wbt_") and len(token) == 4 + 43
    assert new_token() != token
    assert hash_token("abc") == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


YAML_FILE = """\
# as a Kubernetes Secret key mounted as a file gives it
tokens:
  - name: platform
    sha256: {digest}
    scopes: [read, write]
  - name: site-1-tools
    sha256: {other}
    scopes: [read]
    site_id: site_1
"""


def test_loads_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_path = tmp_path / "tokens.yaml"
    yaml_path.write_text(YAML_FILE.format(digest=hash_token(ADMIN), other=hash_token(SITE_1)))
    tokens = TokenSet.from_file(yaml_path)
    assert tokens.authenticate(f"Bearer {ADMIN}") == Principal(
        "platform", frozenset({"read", "write"})
    )
    assert tokens.authenticate(f"bearer {SITE_1}").site_id == "site_1"
    json_path = tmp_path / "tokens.json"
    json_path.write_text(json.dumps(TOKENS))
    assert len(TokenSet.from_file(json_path)) == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tokens": {}}, "'tokens' must be a list"),
        ({"tokens": [], "extra": 1}, "exactly the key 'tokens'"),
        ([], "exactly the key 'tokens'"),
        ({"tokens": ["x"]}, "expected a mapping"),
        ({"tokens": [{"name": "a", "token": "plain", "scopes": ["read"]}]}, "unknown keys"),
        ({"tokens": [{"name": "", "sha256": "0" * 64, "scopes": ["read"]}]}, "'name'"),
        ({"tokens": [{"name": "a", "sha256": "xyz", "scopes": ["read"]}]}, "64 hex digits"),
        ({"tokens": [{"name": "a", "sha256": "0" * 64, "scopes": []}]}, "'scopes'"),
        ({"tokens": [{"name": "a", "sha256": "0" * 64, "scopes": ["admin"]}]}, "'scopes'"),
        (
            {"tokens": [{"name": "a", "sha256": "0" * 64, "scopes": ["read"], "site_id": 3}]},
            "'site_id'",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "sha256": "0" * 64, "scopes": ["read"]},
                    {"name": "a", "sha256": "1" * 64, "scopes": ["read"]},
                ]
            },
            "same name",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "sha256": "0" * 64, "scopes": ["read"]},
                    {"name": "b", "sha256": "0" * 64, "scopes": ["read"]},
                ]
            },
            "same sha256",
        ),
    ],
)
def test_a_malformed_token_file_is_a_config_error(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TokenSet.from_mapping(data)


@pytest.mark.parametrize(
    "text",
    [
        # A restriction present but empty, or given twice with the second empty: each read as
        # no restriction at all, a token of every site, until 2026-12-07.
        "tokens:\n  - name: a\n    sha256: {d}\n    scopes: [read]\n    site_id:\n",
        "tokens:\n  - name: a\n    sha256: {d}\n    scopes: [read]\n    site_id: ~\n",
        "tokens:\n  - name: a\n    sha256: {d}\n    scopes: [read]\n    user_id: '  '\n",
        "tokens:\n  - name: a\n    sha256: {d}\n    scopes: [read]\n    site_id: s1\n"
        "    site_id: ~\n",
        '{{"tokens": [{{"name": "a", "sha256": "{d}", "scopes": ["read"], "site_id": null}}]}}',
        '{{"tokens": [{{"name": "a", "sha256": "{d}", "scopes": ["read"], "site_id": "s1", '
        '"site_id": null}}]}}',
        # A name that is a token is shown in answers (a 403 names its token).
        "tokens:\n  - name: wbt_abc\n    sha256: {d}\n    scopes: [read]\n",
    ],
    ids=["yaml-empty", "yaml-null", "yaml-blank", "yaml-twice", "json-null", "json-twice", "name"],
)
def test_a_restriction_left_empty_or_given_twice_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text.format(d=hash_token(ADMIN)))
    with pytest.raises(ConfigError) as caught:
        TokenSet.from_file(path)
    assert hash_token(ADMIN) not in str(caught.value)
    assert any(word in str(caught.value) for word in ("non-empty", "twice", "a label"))


def test_file_errors_never_quote_the_file(tmp_path: Path) -> None:
    digest = hash_token(ADMIN)
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - name: a\n    sha256: {digest}\n    scopes: [read\n")
    with pytest.raises(ConfigError) as caught:
        TokenSet.from_file(path)
    assert digest not in str(caught.value)
    path.write_text('{"tokens": [{"name": "a", "sha256": "' + digest + '", ')
    with pytest.raises(ConfigError) as caught:
        TokenSet.from_file(path)
    assert digest not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        TokenSet.from_file(tmp_path / "missing.yaml")


def test_a_token_given_as_the_token_files_path_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BRIDGE_API_TOKENS given a token (BRIDGE_API_TOKEN's value) was printed twice, as the
    path and in the OS error's text (until 2026-12-07); another path is named once."""
    monkeypatch.chdir(tmp_path)
    token = new_token()
    with pytest.raises(ConfigError) as caught:
        TokenSet.from_file(token)
    assert token not in str(caught.value), str(caught.value)
    assert "cannot read the token file" in str(caught.value)
    assert "BRIDGE_API_TOKENS" in str(caught.value)
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as caught:
        TokenSet.from_file(missing)
    assert str(caught.value).count(missing) == 1, str(caught.value)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, None),
        ("", "invalid_request"),
        ("Basic dXNlcjpwYXNz", "invalid_request"),
        ("Bearer", "invalid_request"),
        ("Bearer two words", "invalid_request"),
        ("Bearer wbt_unknown", "invalid_token"),
        (f"Bearer {ADMIN}x", "invalid_token"),
    ],
)
def test_no_usable_token_is_a_401_with_a_bearer_challenge(
    header: str | None, error: str | None
) -> None:
    with pytest.raises(Problem) as caught:
        TokenSet.from_mapping(TOKENS).authenticate(header)
    problem = caught.value
    assert problem.status == 401
    challenge = problem.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="webhook-bridge"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert ADMIN not in json.dumps(problem.to_dict())


def test_every_stored_hash_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    original = hmac.compare_digest

    def compare(a: str, b: str) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    tokens = TokenSet.from_mapping(TOKENS)
    tokens.authenticate(f"Bearer {ADMIN}")  # the first one: the others are compared too
    assert len(calls) == len(TOKENS["tokens"])
    assert all(a == hash_token(ADMIN) for a, _ in calls)


def test_scopes_are_required_with_a_403_naming_the_scope() -> None:
    reader = TokenSet.from_mapping(TOKENS).authenticate(f"Bearer {READER}")
    reader.require("read")
    with pytest.raises(Problem) as caught:
        reader.require("write")
    assert caught.value.status == 403
    assert 'error="insufficient_scope", scope="write"' in caught.value.headers["WWW-Authenticate"]


def test_restrictions_to_a_site_or_an_account() -> None:
    tokens = TokenSet.from_mapping(TOKENS)
    site = tokens.authenticate(f"Bearer {SITE_1}")
    user = tokens.authenticate(f"Bearer {USER_1}")
    admin = tokens.authenticate(f"Bearer {ADMIN}")
    assert site.allows("site_1", None) and site.allows("site_1", "anyone")
    assert not site.allows("site_2", "user_1") and not site.allows(None, "user_1")
    assert user.allows(None, "user_1")
    # A site's webhook gets every event of the site: not an account's to have.
    assert not user.allows("site_9", "user_1")
    assert not user.allows("site_1", None) and not user.allows("site_1", "user_2")
    assert admin.allows(None, None)
    # An existing webhook outside the restriction is one that does not exist.
    for principal, outside in [
        (site, webhook("site_2", "user_1")),
        (user, webhook(None, "user_2")),
        (user, webhook("site_9", "user_1")),
    ]:
        with pytest.raises(Problem) as caught:
            principal.see(outside)
        assert (caught.value.status, caught.value.detail, caught.value.errors) == (
            404,
            "no such webhook",
            (),
        )
    inside = webhook("site_1", "user_1")
    assert site.see(inside) is inside and admin.see(inside) is inside
    # A body or filter naming another site or account is the token's own request: 403 and why.
    with pytest.raises(Problem) as caught:
        site.check_scope("site_2", "user_1")
    assert caught.value.status == 403
    assert [(e.field, e.reason) for e in caught.value.errors] == [("site_id", "out_of_scope")]
    with pytest.raises(Problem) as caught:
        user.check_scope(None, "user_2")
    assert [(e.field, e.reason) for e in caught.value.errors] == [("user_id", "out_of_scope")]
    with pytest.raises(Problem) as caught:
        user.check_scope("site_9", "user_1")
    assert [(e.field, e.reason) for e in caught.value.errors] == [("site_id", "out_of_scope")]
    both = Principal("both", frozenset({"read"}), site_id="site_1", user_id="user_1")
    assert both.allows("site_1", "user_1") and not both.allows(None, "user_1")


def test_no_token_or_hash_in_any_repr() -> None:
    tokens = TokenSet.from_mapping(TOKENS)
    principal = tokens.authenticate(f"Bearer {ADMIN}")
    entry = auth._token(TOKENS["tokens"][0], "t")
    for text in (repr(tokens), str(tokens), repr(principal), repr(entry)):
        assert ADMIN not in text and hash_token(ADMIN) not in text


@given(st.text(max_size=80))
def test_any_other_header_is_refused_with_a_401(header: str) -> None:
    tokens = TokenSet.from_mapping(TOKENS)
    known = {f"Bearer {t}" for t in (ADMIN, READER, SITE_1, USER_1)}
    if header.strip() in known or header.strip().lower() in {k.lower() for k in known}:
        return
    with pytest.raises(Problem) as caught:
        tokens.authenticate(header)
    assert caught.value.status == 401


@given(st.binary(min_size=16, max_size=48))
def test_any_configured_random_token_authenticates_as_itself(raw: bytes) -> None:
    token = "wbt_" + raw.hex()
    tokens = TokenSet.from_mapping(
        {
            "tokens": [
                *TOKENS["tokens"],
                {"name": "generated", "sha256": hash_token(token), "scopes": ["read"]},
            ]
        }
    )
    assert tokens.authenticate(f"Bearer {token}").name == "generated"
    assert tokens.authenticate(f"Bearer  {token} ").name == "generated"


# ------------------------------------------------------------------ webhook-bridge tokens add


def test_tokens_add_shows_its_file_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path holding a terminal's escape sequence: printed raw until 2026-12-07."""
    from bridge.cli import commands

    directory = tmp_path / "t\x1b]0;owned\x07"
    directory.mkdir()
    argv = ["tokens", "add", "--file", str(directory / "tokens.json"), "--name", "platform"]
    assert commands.main(argv) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "added token 'platform' to " in err


def test_tokens_add_makes_a_private_file_and_adds_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The token alone on stdout, once; the file (owner-only when made) keeps its SHA-256, and
    the workers' loader takes every entry with its scopes and restriction."""
    from bridge.cli import commands

    path = tmp_path / "tokens.json"
    assert commands.main(["tokens", "add", "--file", str(path), "--name", "platform"]) == 0
    platform = capsys.readouterr().out.strip()
    argv = ["tokens", "add", "--file", str(path), "--name", "site-1", "--scopes", "read"]
    assert commands.main([*argv, "--site-id", "site_1"]) == 0
    site, err = capsys.readouterr()
    assert platform.startswith("wbt_") and "wbt_" not in err
    assert path.stat().st_mode & 0o777 == 0o600
    assert platform not in path.read_text() and hash_token(platform) in path.read_text()
    tokens = TokenSet.from_file(path)
    assert tokens.authenticate(f"Bearer {platform}") == Principal(
        "platform", frozenset({"read", "write"}), None, None
    )
    assert tokens.authenticate(f"Bearer {site.strip()}") == Principal(
        "site-1", frozenset({"read"}), "site_1", None
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "has a token named 'platform' already"),
        ("tokens:\n  - name: a\n", "is not a JSON token file"),
        ('{"tokens": [{"name": "a"}]}', "'sha256' must be 64 hex digits"),
        ('{"tokens": "none"}', "'tokens' must be a list"),
    ],
)
def test_tokens_add_leaves_a_file_it_cannot_add_to_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    from bridge.cli import commands

    path = tmp_path / "tokens.json"
    if text is None:
        assert commands.main(["tokens", "add", "--file", str(path), "--name", "platform"]) == 0
        capsys.readouterr()
    else:
        path.write_text(text)
    before = path.read_bytes()
    assert commands.main(["tokens", "add", "--file", str(path), "--name", "platform"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and message in err and "wbt_" not in err
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]  # no temporary file left


def test_tokens_add_refuses_an_unknown_scope_before_touching_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import commands

    path = tmp_path / "tokens.json"
    argv = ["tokens", "add", "--file", str(path), "--name", "x", "--scopes", "admin"]
    assert commands.main(argv) == 1
    assert "'scopes' must be a non-empty list" in capsys.readouterr().err
    assert not path.exists()


def test_tokens_add_through_a_link_changes_the_file_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import commands

    real = tmp_path / "secrets" / "tokens.json"
    real.parent.mkdir()
    link = tmp_path / "tokens.json"
    link.symlink_to(real)
    for name in ("a", "b"):
        assert commands.main(["tokens", "add", "--file", str(link), "--name", name]) == 0
    capsys.readouterr()
    assert link.is_symlink()
    assert [t["name"] for t in json.loads(real.read_text())["tokens"]] == ["a", "b"]


def test_tokens_add_refuses_anything_but_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device or a pipe is never replaced by a token file (``--file /dev/null`` as root
    replaced the device with a file, before a review found it)."""
    import os

    from bridge.cli import commands

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    for path in (fifo, link, Path("/dev/null")):
        assert commands.main(["tokens", "add", "--file", str(path), "--name", "x"]) == 1
        assert "is not a regular file" in capsys.readouterr().err
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()


@pytest.mark.parametrize("flag", ["--site-id", "--user-id"])
@pytest.mark.parametrize("value", ["", " ", "\t"])
def test_tokens_add_refuses_a_blank_restriction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """``--site-id "$SITE"`` with ``$SITE`` unset made a token of every site."""
    from bridge.cli import commands

    path = tmp_path / "tokens.json"
    assert commands.main(["tokens", "add", "--file", str(path), "--name", "s", flag, value]) == 1
    assert "is blank" in capsys.readouterr().err
    assert not path.exists()


def test_tokens_add_keeps_the_files_owner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaced by root, a file stays its owner's (the worker may run as that user alone)."""
    import os

    from bridge.cli import commands

    if os.geteuid() != 0:
        pytest.skip("giving the file another owner needs root")
    path = tmp_path / "tokens.json"
    assert commands.main(["tokens", "add", "--file", str(path), "--name", "first"]) == 0
    os.chown(path, 65534, 65534)
    assert commands.main(["tokens", "add", "--file", str(path), "--name", "second"]) == 0
    capsys.readouterr()
    found = path.stat()
    assert (found.st_uid, found.st_gid, found.st_mode & 0o777) == (65534, 65534, 0o600)


def test_tokens_adds_at_once_each_keep_their_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adds at once take turns (the directory is locked while one reads and replaces the
    file): none is lost (3 in 10 were, before a review found it). The reading is slowed so
    that, unlocked, every add would read the file before any replaced it."""
    import threading
    import time

    path = tmp_path / "tokens.json"
    parse = auth._parse

    def slow_parse(text: str) -> Any:
        time.sleep(0.02)
        return parse(text)

    monkeypatch.setattr(auth, "_parse", slow_parse)
    auth.add_token(path, auth.token_entry(new_token(), name="first", scopes=["read"]))

    def add(n: int) -> None:
        auth.add_token(path, auth.token_entry(new_token(), name=f"many-{n}", scopes=["read"]))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    names = [t["name"] for t in json.loads(path.read_text())["tokens"]]
    assert sorted(names) == sorted(["first", *(f"many-{n}" for n in range(8))])


def test_tokens_add_takes_a_byte_order_mark_and_stores_each_scope_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.cli import commands

    path = tmp_path / "tokens.json"
    path.write_bytes(b'\xef\xbb\xbf{"tokens": []}')
    argv = ["tokens", "add", "--file", str(path), "--name", "a", "--scopes", "read,read"]
    assert commands.main(argv) == 0
    capsys.readouterr()
    assert json.loads(path.read_text())["tokens"][0]["scopes"] == ["read"]


def test_yaml_merge_keys_load_and_a_key_that_is_not_text_is_refused(tmp_path: Path) -> None:
    """``<<: *base`` with keys beside it overriding the base's loads as before the check of keys
    given twice (2026-12-07); a list as a key is the file refused, not a traceback."""
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "tokens:\n"
        f"  - &base\n    name: ops\n    sha256: {hash_token(ADMIN)}\n    scopes: [read]\n"
        f"  - <<: *base\n    name: ops2\n    sha256: {hash_token(SITE_1)}\n"
    )
    tokens = TokenSet.from_file(merged)
    assert tokens.authenticate(f"Bearer {SITE_1}").name == "ops2"
    assert tokens.authenticate(f"Bearer {SITE_1}").scopes == frozenset({"read"})
    odd = tmp_path / "odd.yaml"
    odd.write_text(
        f"tokens:\n  - name: a\n    sha256: {hash_token(ADMIN)}\n    scopes: [read]\n"
        "    ? [x]\n    : 1\n"
    )
    with pytest.raises(ConfigError, match="not text"):
        TokenSet.from_file(odd)
