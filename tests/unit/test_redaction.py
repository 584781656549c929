"""bridge.redaction: a URL's credentials are hidden wherever a URL parser would read them."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.api.repository import webhook_version
from bridge.api.service import public_view
from bridge.redaction import for_logs, url_without_userinfo, without_userinfo
from bridge.subscriptions.webhook import Webhook, webhook_from_record

USER = "Us3rMark"
PASSWORD = "Pw7Mark"

#: Characters that end a URL in free text, and those URL parsers treat apart.
HOSTILE = "'\"<> \t\r\n/?#@:%[]\\`|^{}\x00\x1f\x7f"
#: (No lone surrogate: a record holding one is refused.)
chars = st.characters(blacklist_categories=("Cs",))
texts = st.text(alphabet=st.sampled_from(HOSTILE) | chars, max_size=10)
heads = st.sampled_from(
    [
        "https://",
        "HTTP://",
        "//",
        "://",
        " https://",
        "\x00\thttps://",
        "ht\ttps:/\n/",
        "a+b.c-d://",
    ]
) | st.text(chars, max_size=8)


def _cleaned(text: str) -> str:
    """``text`` without the tabs and line breaks urlsplit drops before it parses."""
    return text.replace("\t", "").replace("\r", "").replace("\n", "")


def _passwords(url: str) -> list[str]:
    """The password each of urlsplit and httpx reads in ``url`` (as written and decoded)."""
    found = []
    try:
        found.append(urlsplit(url).password or "")
    except ValueError:
        pass
    try:
        parsed = httpx.URL(url)
        found += [parsed.password, parsed.userinfo.decode("ascii", "replace")]
    except (httpx.InvalidURL, ValueError, UnicodeError):
        pass
    return found


def _usernames(url: str) -> list[str]:
    found = []
    try:
        found.append(urlsplit(url).username or "")
    except ValueError:
        pass
    try:
        found.append(httpx.URL(url).username)
    except (httpx.InvalidURL, ValueError, UnicodeError):
        pass
    return found


def _webhook(url: str) -> Webhook:
    record = {"id": "wh_1", "name": url, "url": url, "secret": "s" * 32, "events": ["*"]}
    return webhook_from_record({**record, "site_id": "s1", "active": True})


def _shown(url: str) -> list[str]:
    """Every form in which the bridge prints a URL field: the redactions, the API's url and
    name, a webhook's repr (a name that is a URL, or one that is not the webhook's)."""
    webhook = _webhook(url)
    view = public_view(webhook)
    other_url = webhook_from_record({**webhook.to_record(), "url": "https://example.com/"})
    return [
        url_without_userinfo(url),
        for_logs(url),
        view["url"],
        view["name"],
        repr(webhook),
        repr(other_url),
    ]


@given(head=heads, user=texts, password=texts, rest=texts)
@example(head="https://", user="bob", password="pa'ss", rest="h.example/in")
@example(head="https://", user="bob", password='pa"ss<>', rest="h.example/in")
@example(head="https://", user="bob", password="pa ss", rest="h.example/in")
@example(head="https://", user="bob", password="pa\tss", rest="h.example/in")
@example(head="https://", user="b@b", password="p@ss", rest="h.example/in")
@example(head=" //", user="bob", password="x", rest="h")
@example(head="://", user="bob", password="x", rest="h")
def test_no_password_a_url_parser_reads_is_shown(
    head: str, user: str, password: str, rest: str
) -> None:
    """Whatever the URL, a password (and user) that urlsplit or httpx reads in it is in none
    of its printed forms: until 2026-12-07 a password holding a quote, an angle bracket or
    a space was shown whole (a URL field was read as free text, where these end a URL)."""
    url = f"{head}{USER}{user}:{PASSWORD}{password}@{rest}"
    read = [p for p in _passwords(url) if PASSWORD in _cleaned(p)]
    users = [u for u in _usernames(url) if USER in _cleaned(u)]
    for shown in _shown(url):
        if read:
            assert PASSWORD not in _cleaned(shown), (url, shown)
        if users:
            assert USER not in _cleaned(shown), (url, shown)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bob:pa'ss@h.example/in?x=1", "https://***@h.example/in?x=1"),
        ('https://bob:pa"s<s>@h.example/in', "https://***@h.example/in"),
        ("https://bob:pa ss@h.example/in", "https://***@h.example/in"),
        ("https://bob:pa\tss@h.example/in", "https://***@h.example/in"),
        (" //bob:pw@h.example/in", " //***@h.example/in"),
        ("https://h.example/a@b?c=d@e", "https://h.example/a@b?c=d@e"),
        (
            "https://h.example/in?next=https://u:pw@x.example",
            "https://h.example/in?next=https://***@x.example",
        ),
        ("Orders: ops:pw@corp", "Orders: ***@corp"),
        ("My Webhook", "My Webhook"),
    ],
)
def test_a_url_field_is_read_as_url_parsers_read_it(url: str, shown: str) -> None:
    assert url_without_userinfo(url) == shown


def test_free_text_still_ends_a_url_at_a_quote() -> None:
    """In text holding URLs (a JSON document, a sentence) a quote ends one: what follows is
    not its password."""
    text = '{"url":"https://u:pw@h.example","owner":"ops@corp.example"}'
    assert without_userinfo(text) == '{"url":"https://***@h.example","owner":"ops@corp.example"}'


def test_the_version_is_the_same_whatever_credentials_a_quote_holding_password_hides() -> None:
    """The ETag hashes the URL and the name as shown: with the whole password hidden, none
    of it can be guessed against it."""
    versions = {
        webhook_version(_webhook(f"https://bob:{password}@h.example/in"))
        for password in ("pa'ss", "pa'sT", 'x"y', "a b")
    }
    assert len(versions) == 1
