"""Bearer tokens with scopes, loaded hashed from a file, and who may touch which webhook.

The token file is YAML or JSON (a Kubernetes Secret key mounted as a file gives exactly this)::

    tokens:
      - name: platform            # shown in logs and errors, never the token
        sha256: 9f86d081884c...   # hex SHA-256 of the token (python -m bridge.api token)
        scopes: [read, write]
      - name: site-1-tools
        sha256: 60303ae22b99...
        scopes: [read]
        site_id: site_1           # optional: only this site's webhooks
        user_id: user_1           # optional: only this account's webhooks

Only the SHA-256 of each token is stored, in the file and in memory. A fast hash is the right
one here, unlike for passwords: tokens are 32 random bytes (:func:`new_token`), so nobody can
guess one from its hash whatever the hash costs, and a slow hash (bcrypt, scrypt) would only
spend CPU on every request. The presented token's hash is compared with every stored hash with
:func:`hmac.compare_digest`, so the time taken says nothing about which stored hash is close.

``401`` for a request without a usable token, ``403`` for a token without the scope or outside
its site or account (RFC 6750's ``WWW-Authenticate`` errors ``invalid_token`` and
``insufficient_scope``). Neither tokens nor their hashes appear in any ``repr``, log or error.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.api.problems import FieldError, Problem
from bridge.errors import ConfigError
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "Scope",
    "SCOPES",
    "REALM",
    "TOKEN_PREFIX",
    "hash_token",
    "new_token",
    "token_entry",
    "add_token",
    "ApiToken",
    "Principal",
    "TokenSet",
]

Scope = Literal["read", "write"]

#: Every scope: ``read`` for GET requests, ``write`` for the others.
SCOPES: tuple[Scope, ...] = ("read", "write")

#: The ``realm`` of ``WWW-Authenticate`` challenges.
REALM = "webhook-bridge"
#: What every token made here begins with (a name may not).
TOKEN_PREFIX = "wbt_"

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# RFC 6750's b64token: what may follow "Bearer ".
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_TOKEN_FIELDS = {"name", "sha256", "scopes", "site_id", "user_id"}


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token's UTF-8 bytes: what the token file stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A new token: ``wbt_`` and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_entry(
    token: str,
    *,
    name: str,
    scopes: list[str],
    site_id: str | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """The token file's entry of ``token`` (its SHA-256, never the token), its scopes each once;
    ``ConfigError`` for an entry the file would refuse, and for a blank site or account (an
    empty ``--site-id "$SITE"`` would have made a token of every site)."""
    entry: dict[str, Any] = {
        "name": name,
        "sha256": hash_token(token),
        "scopes": list(dict.fromkeys(scopes)),
    }
    for key, value in (("site_id", site_id), ("user_id", user_id)):
        if value is not None:
            if not value.strip():
                raise ConfigError(f"the new token ({name}): {key!r} is blank")
            entry[key] = value
    _token(entry, "the new token")
    return entry


def add_token(path: str | Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the JSON token file at ``path`` (made, readable by its owner alone,
    when there is none), replacing the file in one step. ``ConfigError`` for a name the file
    has already, or a file that is not a valid JSON token file (a YAML one is edited by hand:
    comments and layout would be lost). Workers read the file at their start. Two at once on
    one file take turns (the directory is locked meanwhile); the file keeps its owner, group and
    mode. Anything but a regular file (a device, a pipe) is refused, never replaced."""
    # A link is followed: the file it names is the one replaced (the link stays a link).
    target = Path(os.path.realpath(path))
    try:
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(f"API tokens: cannot open the directory of {path}: {exc}") from None
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        _add_token(path, target, entry)
    finally:
        os.close(directory)  # (and the lock with it)


def _add_token(path: str | Path, target: Path, entry: dict[str, Any]) -> None:
    data: dict[str, Any] = {"tokens": []}
    mode, owner = 0o600, None
    try:
        found = target.stat()
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise ConfigError(f"API tokens: cannot read {path}: {exc}") from None
    if found is not None:
        if not stat.S_ISREG(found.st_mode):
            raise ConfigError(f"API tokens: {path} is not a regular file")
        mode, owner = found.st_mode & 0o777, (found.st_uid, found.st_gid)
        try:
            text = target.read_text(encoding="utf-8-sig")  # (a byte order mark is let be)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"API tokens: cannot read {path}: {exc}") from None
        if text.strip():
            if not text.lstrip().startswith("{"):
                raise ConfigError(
                    f'{path} is not a JSON token file ({{"tokens": [...]}}): add the entry of '
                    "`python -m bridge.api token` to a YAML one by hand"
                )
            data = _parse(text)
            TokenSet.from_mapping(data, source=str(path))  # the file as it is must be valid
    if any(existing.get("name") == entry["name"] for existing in data["tokens"]):
        raise ConfigError(f"{path} has a token named {entry['name']!r} already")
    data["tokens"].append(entry)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8", opener=_opener(mode)) as out:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                # Replaced by another user (root), the file stays its owner's: the worker
                # reading it may run as that user alone.
                os.fchown(out.fileno(), *owner)
            out.write(json.dumps(data, indent=2) + "\n")
        temporary.replace(target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"API tokens: cannot write {path}: {exc}") from None


def _opener(mode: int) -> Callable[[str, int], int]:
    """An ``open`` opener making the file with ``mode`` (the umask may only narrow it)."""
    return lambda file, flags: os.open(file, flags, mode)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One configured token, as its hash."""

    #: A name for people (logs, errors); not secret.
    name: str
    #: Hex SHA-256 of the token. Never printed.
    sha256: str = field(repr=False)
    scopes: frozenset[Scope] = frozenset()
    #: When set, only webhooks of this site (``site_id`` equal) are visible and writable.
    site_id: str | None = None
    #: When set, only webhooks of this account (``user_id`` equal) are visible and writable.
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the token's name, scopes and restriction (never the token)."""

    name: str
    scopes: frozenset[Scope]
    site_id: str | None = None
    user_id: str | None = None
    #: The token's SHA-256 (as its file holds it): what binds an ``Idempotency-Key`` to the
    #: token beside its name, so that no one without the file can tell the id a key would
    #: make a webhook under (:meth:`bridge.api.idempotency.IdempotencyKey.of`).
    key_salt: str = field(default="", repr=False, compare=False)

    @property
    def restricted(self) -> bool:
        """Whether the token is restricted to a site or an account."""
        return self.site_id is not None or self.user_id is not None

    def require(self, scope: Scope) -> None:
        """Raise a ``403`` unless this principal has ``scope``."""
        if scope not in self.scopes:
            raise Problem(
                "forbidden",
                f"the token {self.name!r} lacks the {scope!r} scope",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
                    )
                },
            )

    def allows(self, site_id: str | None, user_id: str | None) -> bool:
        """Whether a webhook of this site and account is within the token's restriction. A
        token restricted to an account alone has only its account-wide webhooks (no site): a
        site's webhook gets every event of the site, whoever's account it concerns."""
        if not self.allows_event(site_id, user_id):
            return False
        return self.user_id is None or self.site_id is not None or site_id is None

    def allows_event(self, site_id: str | None, user_id: str | None) -> bool:
        """Whether an event of this site and account is within the token's restriction (a
        test event it sends to one of its webhooks: an account's names one of its sites)."""
        if self.site_id is not None and site_id != self.site_id:
            return False
        return self.user_id is None or user_id == self.user_id

    def see(self, webhook: Webhook, missing: str = "no such webhook") -> Webhook:
        """``webhook`` if it is within the restriction, else the ``404`` of an id that names
        nothing (``missing``): a restricted token learns nothing of another site's or account's
        webhooks, not even that an id is one (until 2026-12-06 it was answered ``403``, so any
        id could be tried)."""
        if not self.allows(webhook.site_id, webhook.user_id):
            raise Problem("not_found", missing)
        return webhook

    def check_scope(
        self,
        site_id: str | None,
        user_id: str | None,
        location: str = "body",
        *,
        event: bool = False,
    ) -> None:
        """Raise a ``403`` naming the field unless a webhook (with ``event``, an event) of this
        site and account is allowed."""
        if (self.allows_event if event else self.allows)(site_id, user_id):
            return
        if self.site_id is not None and site_id != self.site_id:
            error = FieldError(
                "site_id",
                "out_of_scope",
                f"the token is restricted to site {self.site_id!r}",
                location,
            )
        elif user_id == self.user_id:  # a site, for a token of an account alone
            error = FieldError(
                "site_id",
                "out_of_scope",
                f"the token is restricted to account {self.user_id!r}: a site's webhooks and "
                "events (every event of the site, whoever's) need a token of that site",
                location,
            )
        else:
            error = FieldError(
                "user_id",
                "out_of_scope",
                f"the token is restricted to account {self.user_id!r}",
                location,
            )
        raise Problem("forbidden", error.detail, errors=[error])


def _shown_path(path: str | Path) -> str:
    """The token file's path as errors name it: not when it is a token (``wbt_...``)."""
    if str(path).startswith(TOKEN_PREFIX):
        return (
            "the token file (its path, not shown, is a token: BRIDGE_API_TOKENS and "
            "--api-tokens name the token file, BRIDGE_API_TOKEN holds the CLI's token)"
        )
    return str(path)


class TokenSet:
    """The configured tokens; :meth:`authenticate` turns an ``Authorization`` header into a
    :class:`Principal` or a ``401``."""

    def __init__(self, tokens: list[ApiToken]) -> None:
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ConfigError("API tokens: two tokens have the same name")
        if len({t.sha256 for t in tokens}) != len(tokens):
            raise ConfigError("API tokens: two tokens have the same sha256")
        self._tokens = tuple(tokens)

    def __repr__(self) -> str:
        return f"TokenSet({[t.name for t in self._tokens]!r})"

    def __len__(self) -> int:
        return len(self._tokens)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenSet:
        """Load a token file: JSON, or YAML (needs PyYAML) when it is not JSON."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            # Neither the path nor the OS error's text, which repeats it: a token set where
            # the file goes (BRIDGE_API_TOKENS for BRIDGE_API_TOKEN) was printed twice until
            # 2026-12-07.
            why = exc.strerror or type(exc).__name__
            raise ConfigError(f"API tokens: cannot read {_shown_path(path)}: {why}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"API tokens: cannot read {_shown_path(path)}: {exc}") from None
        return cls.from_mapping(_parse(text), source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "tokens") -> TokenSet:
        """Build from the decoded file: ``{"tokens": [{"name", "sha256", "scopes", ...}]}``."""
        if not isinstance(data, Mapping) or set(data) != {"tokens"}:
            raise ConfigError(f"{source}: expected a mapping with exactly the key 'tokens'")
        entries = data["tokens"]
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: 'tokens' must be a list")
        return cls([_token(entry, f"{source}: tokens[{i}]") for i, entry in enumerate(entries)])

    def authenticate_headers(self, headers: Any) -> Principal:
        """:meth:`authenticate` of a request's headers (a multidict): ``401`` for
        ``Authorization`` given more than once (until 2026-12-07 the first was taken, and a
        proxy judging the last would disagree with the API on who asks)."""
        lines = headers.getall("Authorization", ())
        if len(lines) > 1:
            raise _unauthorized("Authorization is given more than once", "invalid_request")
        return self.authenticate(lines[0] if lines else None)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header; ``401`` otherwise."""
        if authorization is None:
            raise _unauthorized("send Authorization: Bearer <token>", error=None)
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not _B64TOKEN.match(credentials):
            raise _unauthorized("the Authorization header is not a bearer token", "invalid_request")
        presented = hash_token(credentials)
        found: ApiToken | None = None
        for token in self._tokens:  # every one, so the time does not depend on the match
            if hmac.compare_digest(presented, token.sha256):
                found = token
        if found is None:
            raise _unauthorized("unknown token", "invalid_token")
        return Principal(found.name, found.scopes, found.site_id, found.user_id, found.sha256)


def _unauthorized(detail: str, error: str | None) -> Problem:
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return Problem("unauthorized", detail, headers={"WWW-Authenticate": challenge})


def _parse(text: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"API tokens: invalid JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            "API tokens: a YAML token file needs PyYAML; or write it as JSON"
        ) from None
    try:
        return yaml.load(text, Loader=_unique_key_loader(yaml))  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        # The message is the parser's problem, never a quote of the file (it holds hashes).
        raise ConfigError(f"API tokens: invalid YAML{where}") from None


def _token(entry: Any, where: str) -> ApiToken:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in entry if k not in _TOKEN_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (a token is stored as its sha256)")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    if name.startswith(TOKEN_PREFIX):
        # A name is shown in answers and logs (a 403 names its token): not the token itself.
        raise ConfigError(f"{where}: 'name' must be a label, not a token")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX_DIGEST.match(digest.lower()):
        raise ConfigError(f"{where} ({name}): 'sha256' must be 64 hex digits")
    scopes = entry.get("scopes")
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(s, str) and s in SCOPES for s in scopes)
    ):
        raise ConfigError(f"{where} ({name}): 'scopes' must be a non-empty list of {list(SCOPES)}")
    restriction: dict[str, str | None] = {}
    for key in ("site_id", "user_id"):
        value = entry.get(key)
        # Present, it restricts: null or blank is refused, never read as no restriction (until
        # 2026-12-07 a templated `site_id:` left empty made a token of every site).
        if key in entry and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(
                f"{where} ({name}): {key!r} must be a non-empty string (leave it out for a "
                "token of every site and account)"
            )
        restriction[key] = value
    return ApiToken(
        name=name,
        sha256=digest.lower(),
        scopes=frozenset(scopes),
        site_id=restriction["site_id"],
        user_id=restriction["user_id"],
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the token file; a key given twice is refused (the second would win
    unseen: ``"site_id": "site_1", "site_id": null`` was a token of every site until
    2026-12-07)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"API tokens: the key {key!r} twice in one object")
        out[key] = value
    return out


def _unique_key_loader(yaml: Any) -> Any:
    """PyYAML's safe loader refusing a mapping with a key twice (as :func:`_unique_keys`)."""

    class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: the keys given beside it override the base's
                key = self.construct_object(key_node, deep=deep)
                try:
                    twice = key in seen
                except TypeError:  # a list or a mapping as a key
                    raise ConfigError("API tokens: a key that is not text") from None
                if twice:
                    raise ConfigError(f"API tokens: the key {key!r} twice in one mapping")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
