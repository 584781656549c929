"""bridge.subscriptions.urls: the one parser of webhook URLs; what it refuses, what it normalises,
and that every HTTP client the bridge uses reads its normal form the same way."""

from __future__ import annotations

import string

import httpx
import pytest
import yarl
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.errors import BridgeError, InvalidSubscription
from bridge.subscriptions.urls import MAX_URL_LENGTH, InvalidUrl, WebhookUrl

ACCEPTED = [
    # url, (scheme, host, port, target), endpoint, normal form
    (
        "https://hooks.example/receive?token=abc",
        ("https", "hooks.example", 443, "/receive?token=abc"),
        "https://hooks.example:443",
        "https://hooks.example/receive?token=abc",
    ),
    (
        "HTTPS://Hooks.EXAMPLE:8443",
        ("https", "hooks.example", 8443, "/"),
        "https://hooks.example:8443",
        "https://hooks.example:8443/",
    ),
    (
        "http://hooks.example:80/a",
        ("http", "hooks.example", 80, "/a"),
        "http://hooks.example:80",
        "http://hooks.example/a",
    ),
    (
        "https://hooks.example:80/",
        ("https", "hooks.example", 80, "/"),
        "https://hooks.example:80",
        "https://hooks.example:80/",
    ),
    ("http://h.example:/x", ("http", "h.example", 80, "/x"), "http://h.example:80", None),
    ("http://h.example?q=1", ("http", "h.example", 80, "/?q=1"), "http://h.example:80", None),
    # IDNA: Unicode names to their A-label form, full-width dots mapped (UTS 46)
    (
        "https://Bücher.example/",
        ("https", "xn--bcher-kva.example", 443, "/"),
        "https://xn--bcher-kva.example:443",
        "https://xn--bcher-kva.example/",
    ),
    ("https://ｅｘａｍｐｌｅ．ｃｏｍ/", ("https", "example.com", 443, "/"), None, None),
    ("https://xn--bcher-kva.example/", ("https", "xn--bcher-kva.example", 443, "/"), None, None),
    ("http://my_host.internal/", ("http", "my_host.internal", 80, "/"), None, None),
    ("https://hooks.example./", ("https", "hooks.example.", 443, "/"), None, None),
    # IP literals, normalised to the address that is connected to
    ("https://10.1.2.3/x", ("https", "10.1.2.3", 443, "/x"), "https://10.1.2.3:443", None),
    ("https://0x7f.1/", ("https", "127.0.0.1", 443, "/"), None, "https://127.0.0.1/"),
    ("https://2130706433/", ("https", "127.0.0.1", 443, "/"), None, None),
    ("http://127.0.0.1./", ("http", "127.0.0.1", 80, "/"), None, None),
    (
        "http://[::1]:8080/x",
        ("http", "::1", 8080, "/x"),
        "http://[::1]:8080",
        "http://[::1]:8080/x",
    ),
    ("http://[0:0::0:1]/", ("http", "::1", 80, "/"), "http://[::1]:80", "http://[::1]/"),
    # the request target: dot segments removed, what RFC 3986 does not allow percent-encoded
    ("https://h.example/a/./b/../c", ("https", "h.example", 443, "/a/c"), None, None),
    ("https://h.example/a/b/..", ("https", "h.example", 443, "/a/"), None, None),
    ("https://h.example/..", ("https", "h.example", 443, "/"), None, None),
    ("https://h.example/ü?q=ü", ("https", "h.example", 443, "/%C3%BC?q=%C3%BC"), None, None),
    ("https://h.example/%41%zz%", ("https", "h.example", 443, "/%41%25zz%25"), None, None),
    (
        'https://h.example/"<>{}|^`',
        ("https", "h.example", 443, "/%22%3C%3E%7B%7D%7C%5E%60"),
        None,
        None,
    ),
    (
        "https://h.example/a:b@c;d=e?x/y?z",
        ("https", "h.example", 443, "/a:b@c;d=e?x/y?z"),
        None,
        None,
    ),
]


@pytest.mark.parametrize(("url", "parts", "endpoint", "normal"), ACCEPTED)
def test_accepted_and_normalised(
    url: str, parts: tuple[str, str, int, str], endpoint: str | None, normal: str | None
) -> None:
    parsed = WebhookUrl.parse(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.target) == parts
    if endpoint is not None:
        assert parsed.endpoint == endpoint
    if normal is not None:
        assert parsed.url == normal
    assert parsed.tls is (parsed.scheme == "https")


REFUSED = [
    ("http://127.0.0.1:99999/x", "port"),
    ("http://hooks.example:0/", "port"),
    ("http://hooks.example:65536/", "port"),
    ("http://hooks.example:+80/", "port"),
    ("http://hooks.example:8o/", "port"),
    ("http://hooks.example:80:81/", "port"),
    ("http://hooks.example:٨٠/", "port"),  # Arabic-Indic digits: digits, but not ASCII
    ("http://xn--/", "host"),
    ("http://xn--a.example/", "host"),  # an A-label that decodes to nothing valid
    ("http://a..b/", "host"),
    ("http://-a.example/", "host"),
    ("http://a-.example/", "host"),
    ("http://a%62.example/", "host"),
    ("http://" + "a" * 64 + ".example/", "host"),
    ("http://" + "a." * 127 + "example/", "host"),
    ("http://☃.example/", "host"),  # not allowed by IDNA 2008
    ("http://1.2.3.4.5/", "host"),  # ends in a number: must be IPv4
    ("http://example.0x10/", "host"),
    ("http://999.1.1.1/", "host"),
    ("http://[::1%25eth0]/", "host"),
    ("http://[fe80::1%eth0]/", "host"),
    ("http://[v1.x]/", "host"),
    ("http://[127.0.0.1]/", "malformed"),
    ("http://[::1/", "malformed"),
    ("http://[::1]x/", "malformed"),
    ("http://::1/", "no_host"),
    ("ftp://hooks.example/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("hooks.example/receive", "scheme"),
    ("//hooks.example/", "scheme"),
    ("https://user:hunter2@hooks.example/", "userinfo"),
    ("https://user@hooks.example/", "userinfo"),
    ("https://@hooks.example/", "userinfo"),
    ("https://hooks.example/#frag", "fragment"),
    ("https://hooks.example/#", "fragment"),
    ("https:///receive", "no_host"),
    ("https://:443/", "no_host"),
    ("https:hooks.example/x", "no_host"),
    ("", "malformed"),
    ("https://hooks.example/a b", "character"),
    (" https://hooks.example/", "character"),
    ("https://hooks.example/\n", "character"),
    ("https://hooks.example/\t", "character"),
    ("https://hooks.exa\x00mple/", "character"),
    ("https://hooks.example/\x7f", "character"),
    ("https://hooks.example/\u00a0", "character"),
    ("https://hooks.example/\u200b", "character"),
    ("https://hooks.example/\ud800", "character"),
    ("https://hooks.example\\@evil.example/", "character"),
    ("https://evil.example\\.hooks.example/", "character"),
    ("https://" + "h" * MAX_URL_LENGTH, "too_long"),
    ("https://hooks．example／x/", "malformed"),  # NFKC turns the host's "／" into a "/"
]


@pytest.mark.parametrize(("url", "problem"), REFUSED)
def test_refused(url: str, problem: str) -> None:
    with pytest.raises(InvalidUrl) as caught:
        WebhookUrl.parse(url)
    error = caught.value
    assert error.problem == problem
    assert error.reason == "invalid_url"
    assert isinstance(error, InvalidSubscription) and isinstance(error, BridgeError)
    assert not error.retriable
    assert str(error) == f"invalid_url: {error.detail}"
    assert "\n" not in str(error) and len(str(error)) < 120
    assert "hunter2" not in str(error) and "passwd" not in str(error)
    assert error.__cause__ is None and error.__context__ is None  # one line, no chained traceback


def test_a_url_of_the_maximum_length_is_accepted() -> None:
    prefix = "https://hooks.example/"
    url = prefix + "a" * (MAX_URL_LENGTH - len(prefix))
    assert len(url) == MAX_URL_LENGTH
    assert WebhookUrl.parse(url).target == url[len(prefix) - 1 :]


@pytest.mark.parametrize("value", [None, 1, b"https://hooks.example/", ["https://x/"]])
def test_anything_but_a_string_is_refused(value: object) -> None:
    with pytest.raises(InvalidUrl) as caught:
        WebhookUrl.parse(value)  # type: ignore[arg-type]
    assert caught.value.problem == "malformed"


def test_parse_is_remembered_per_url() -> None:
    url = "https://remembered.example/x"
    assert WebhookUrl.parse(url) is WebhookUrl.parse(url)
    # A refusal is remembered too, and raised as a new exception each time.
    first = second = None
    for _ in range(2):
        with pytest.raises(InvalidUrl) as caught:
            WebhookUrl.parse("http://xn--/")
        first, second = second, caught.value
    assert first is not second and first is not None and second is not None
    assert first.detail == second.detail


def test_repr_leaves_out_the_target_which_may_carry_a_token() -> None:
    parsed = WebhookUrl.parse("https://hooks.example/x?token=s3cret")
    assert "s3cret" not in repr(parsed)
    assert "hooks.example" in repr(parsed)


# ------------------------------------------------------------------------ properties

# Any text at all (control characters, lone surrogates, every plane), and text shaped like a URL
# whose parts are drawn from the characters that matter to parsers.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)
URL_CHARS = st.sampled_from(
    list(string.ascii_letters + string.digits + ":/?#[]@!$&'()*+,;=%-._~\\\" <>{}|^`")
    + ["\x00", "\n", "\u00e9", "\u2603", "\uff0e", "\uff0f", "\ud800", "\U0001f600", "0x", "xn--"]
)
URL_PART = st.lists(URL_CHARS, max_size=20).map("".join)
URL_SHAPED = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["http", "https", "HTTP", "ftp", "", "http:", "https:/"]),
        st.sampled_from(["://", ":", "//", ":///"]),
        st.sampled_from(["", "user@", "a:b@"]),
        st.one_of(
            URL_PART,
            st.sampled_from(["[::1]", "[::1%25x]", "127.0.0.1", "0x7f.1", "xn--", "b\u00fccher"]),
        ),
        st.sampled_from(["", ":", ":80", ":99999", ":0", ":x"]),
        URL_PART,
    ),
)


# Cheap examples over a large grammar: deliberately many more than the profile gives.
@settings(max_examples=1500)
@given(st.one_of(ANY_TEXT, URL_SHAPED))
@example("http://xn--/")
@example("http://127.0.0.1:99999/x")
@example("http://[" + "1:" * 40 + "]/")
@example("http://" + "\u00e9" * 300 + "/")
@example("http://a.\u0300/")
def test_parse_is_total(url: str) -> None:
    """Whatever the text, the only failure is InvalidUrl."""
    try:
        parsed = WebhookUrl.parse(url)
    except InvalidUrl as exc:
        assert exc.reason == "invalid_url" and "\n" not in exc.detail
        return
    assert parsed.url.isascii() and parsed.endpoint.isascii()


@settings(max_examples=800)  # as above
@given(URL_SHAPED)
def test_the_normal_form_is_a_fixed_point_read_alike_by_httpx_and_yarl(url: str) -> None:
    """Parsing the normal form again changes nothing, and httpx and yarl (the senders' own URL
    classes) find the same host, port and request target in it: no sender can read it as
    another server or another path."""
    try:
        parsed = WebhookUrl.parse(url)
    except InvalidUrl:
        return
    assert WebhookUrl.parse(parsed.url) == parsed
    by_httpx = httpx.URL(parsed.url)
    assert (by_httpx.scheme, by_httpx.raw_host.decode(), by_httpx.port or parsed.port) == (
        parsed.scheme,
        parsed.host,
        parsed.port,
    )
    assert by_httpx.raw_path.decode() == parsed.target
    by_yarl = yarl.URL(parsed.url, encoded=True)
    assert (by_yarl.scheme, by_yarl.raw_host, by_yarl.port) == (
        parsed.scheme,
        parsed.host,
        parsed.port,
    )
    assert by_yarl.raw_path_qs == parsed.target
