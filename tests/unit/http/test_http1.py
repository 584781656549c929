"""bridge.http.http1: a connection fed response bytes by hand (no network: llhttp's parsing, the
cap, what is kept), request heads and targets as pure functions, and the connection pool against
scripted servers on 127.0.0.1.

The senders' behaviour (headers, statuses, timeouts, TLS, SSRF) is in test_senders.py and what
both senders make of malformed and hostile responses in test_sender_contract.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.http.http1 import (
    MAX_READS,
    MAX_RESPONSE,
    Answer,
    ConnectFailed,
    Http1Client,
    ProtocolError,
    Target,
    _Connection,
    render_head,
    target_of,
)
from bridge.http.ssrf import AddressPolicy, DestinationForbidden
from bridge.worker.embedded import free_port

# --- the parser, fed by hand ---------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0  # every byte taken by the peer at once

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket


@dataclass
class Fed:
    #: ``(status, Retry-After)``, the failure, or ``None`` while unanswered.
    outcome: tuple[int, str | None] | BaseException | None
    keepable: bool
    transport: FakeTransport
    #: The whole answer, when there is one.
    answer: Answer | None = None


def feed(
    pieces: list[bytes],
    *,
    eof: bool = False,
    reset: bool = False,
    body_prefix: int = 0,
    max_response: int = MAX_RESPONSE,
) -> Fed:
    """One exchange on a connection with a fake transport, the response given in ``pieces``,
    then a clean close (``eof``) or a reset (``reset``)."""
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop, ("http", "h", 80), max_response, body_prefix)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        waiter = conn.exchange(b"POST / HTTP/1.1\r\n\r\n")
        for piece in pieces:
            conn.data_received(piece)
        if eof:
            conn.eof_received()
            conn.connection_lost(None)
        if reset:
            conn.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        outcome: tuple[int, str | None] | BaseException | None = None
        answer = None
        if waiter.done():
            failure = waiter.exception()
            if failure is None:
                answer = waiter.result()
                outcome = answer[:2]
            else:
                outcome = failure
        return Fed(outcome, conn.keepable, transport, answer)
    finally:
        loop.close()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out = b""
    rest = body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[: max(size, 1)], rest[max(size, 1) :]
        out += b"%x\r\n%b\r\n" % (len(piece), piece)
    if rest:
        out += b"%x\r\n%b\r\n" % (len(rest), rest)
    return out + b"0\r\n\r\n"


statuses = st.sampled_from([200, 201, 204, 301, 400, 404, 429, 500, 503])
bodies = st.binary(max_size=300)
names = st.sampled_from(["Server", "Date", "X-Thing", "Content-Type", "Set-Cookie"])
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@given(
    status=statuses,
    body=bodies,
    extra=st.lists(st.tuples(names, values), max_size=5),
    retry_after=st.one_of(
        st.none(), st.sampled_from(["7", "120", "Mon, 15 Jan 2024 10:32:00 GMT"])
    ),
    use_chunked=st.booleans(),
    sizes=st.lists(st.integers(1, 64), max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    interim=st.booleans(),
    prefix=st.sampled_from([0, 1, 16, 1024]),
)
def test_any_split_of_a_response_parses_the_same(
    status: int,
    body: bytes,
    extra: list[tuple[str, str]],
    retry_after: str | None,
    use_chunked: bool,
    sizes: list[int],
    cuts: list[int],
    interim: bool,
    prefix: int,
) -> None:
    headers = [f"{name}: {value}" for name, value in extra]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    if status == 204:
        payload = b""
    elif use_chunked:
        headers.append("Transfer-Encoding: chunked")
        payload = chunked(body, sizes)
    else:
        headers.append(f"Content-Length: {len(body)}")
        payload = body
    head = f"HTTP/1.1 {status} Whatever\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    response = head.encode() + payload
    if interim:
        response = b"HTTP/1.1 100 Continue\r\n\r\n" + response
    fed = feed(split(response, cuts), body_prefix=prefix)
    assert fed.outcome == (status, retry_after)
    assert fed.keepable
    assert not fed.transport.aborted
    # Every body byte counted (after chunk framing), the first ``prefix`` kept only when asked.
    sent = b"" if status == 204 else body
    assert fed.answer == (status, retry_after, len(sent), False, sent[:prefix] if prefix else None)


@pytest.mark.parametrize(
    ("response", "expected", "keepable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, None), True),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", (200, None), True),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", (304, None), True),
        (b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\n\r\nok", (200, None), True),
        # Bare LF line ends in the head.
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", (200, None), True),
        # HTTP/1.0 asking to keep the connection.
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            (200, None),
            True,
        ),
        # The server says it will close: not kept.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", (200, None), False),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n",
            (200, None),
            False,
        ),
        # HTTP/1.0 answers are not kept.
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", (200, None), False),
        # Bytes after the response: something is off, not kept.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200", (200, None), False),
        # Chunk extensions and trailers are skipped (a Retry-After trailer is no answer).
        (
            b"HTTP/1.1 429 x\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2;ext=1\r\nok\r\n0\r\nX-Trailer: 1\r\nRetry-After: 9\r\n\r\n",
            (429, "3"),
            True,
        ),
        # Interim answers are skipped, their headers too.
        (
            b"HTTP/1.1 103 Early\r\nRetry-After: 1\r\n\r\n"
            b"HTTP/1.1 503 x\r\nContent-Length: 0\r\n\r\n",
            (503, None),
            True,
        ),
        # Repeated Retry-After headers are joined, as httpx joins them.
        (
            b"HTTP/1.1 429 x\r\nRetry-After: 3 \r\nRetry-After: 4\r\nContent-Length: 0\r\n\r\n",
            (429, "3, 4"),
            True,
        ),
        # A response longer than the cap is not read: the answer counts, the connection does not.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
            % (2 * MAX_RESPONSE, b"a" * 2 * MAX_RESPONSE),
            (200, None),
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;%b" % (b"e" * MAX_RESPONSE),
            (200, None),
            False,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n%b"
            % (b"X-T: 1\r\n" * MAX_RESPONSE),
            (200, None),
            False,
        ),
    ],
)
def test_responses(response: bytes, expected: tuple[int, str | None], keepable: bool) -> None:
    fed = feed([response])
    assert fed.outcome == expected
    assert fed.keepable is keepable


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 x\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 2 \r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX Y: 1\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/0.9 200 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * MAX_RESPONSE + b"\r\n\r\n",
    ],
)
def test_malformed_responses_fail_and_drop_the_connection(response: bytes) -> None:
    fed = feed([response])
    assert isinstance(fed.outcome, ProtocolError)
    assert not fed.keepable
    assert fed.transport.aborted


STARTS = [
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
]


@given(
    start=st.sampled_from(STARTS),
    rest=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    end=st.sampled_from(["open", "eof", "reset"]),
)
def test_hostile_bytes_never_escape_data_received(
    start: bytes, rest: bytes, cuts: list[int], end: str
) -> None:
    # feed() calls data_received directly: an exception out of it would fail this test.
    fed = feed(split(start + rest, cuts), eof=end == "eof", reset=end == "reset")
    outcome = fed.outcome
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, ProtocolError | ConnectionResetError)
        assert not fed.keepable
    else:
        assert outcome is None or 100 <= outcome[0] <= 999


def test_a_huge_content_length_fails_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    fed = feed([b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"])
    assert isinstance(fed.outcome, ProtocolError)
    assert "overflow" in str(fed.outcome).lower()
    assert caplog.records == []


def test_an_endless_head_fails_once_it_passes_the_limit() -> None:
    fed = feed([b"HTTP/1.1 200 OK\r\n"] + [b"X: " + b"a" * 1000 + b"\r\n"] * 70)
    assert isinstance(fed.outcome, ProtocolError)


def test_closed_before_any_byte_says_nothing_was_received() -> None:
    fed = feed([], eof=True)
    assert isinstance(fed.outcome, ProtocolError)
    assert fed.outcome.nothing_received


def test_truncated_body_is_a_protocol_error_with_bytes_received() -> None:
    fed = feed([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], eof=True)
    assert isinstance(fed.outcome, ProtocolError)
    assert not fed.outcome.nothing_received


def test_body_until_close_ends_at_close_and_is_not_kept() -> None:
    fed = feed([b"HTTP/1.1 200 OK\r\n\r\nsome ", b"body"], eof=True)
    assert fed.outcome == (200, None)
    assert not fed.keepable


def test_body_until_close_reset_is_a_network_error() -> None:
    fed = feed([b"HTTP/1.1 200 OK\r\n\r\nsome "], reset=True)
    assert isinstance(fed.outcome, ConnectionResetError)
    assert not fed.keepable


def test_reset_before_any_byte_is_the_reset() -> None:
    fed = feed([], reset=True)
    assert isinstance(fed.outcome, ConnectionResetError)


def test_a_head_within_the_cap_and_a_body_past_it_keeps_the_status() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_RESPONSE
    # Exactly the cap: the body is one byte short, so the next byte is one too many.
    first = head + b"a" * (MAX_RESPONSE - len(head))
    assert feed([first]).outcome is None
    fed = feed([first, b"a"])
    assert fed.outcome == (200, None)
    assert not fed.keepable


def test_a_response_ending_exactly_at_the_cap_is_kept() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
    length = MAX_RESPONSE - len(head % MAX_RESPONSE)
    fed = feed([head % length + b"a" * length])
    assert fed.outcome == (200, None)
    assert fed.keepable


def test_body_until_close_still_open_is_not_an_answer_yet() -> None:
    fed = feed([b"HTTP/1.1 200 OK\r\n\r\nsome "])
    assert fed.outcome is None


def test_unsolicited_bytes_on_an_idle_connection_drop_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(loop, ("http", "h", 80), MAX_RESPONSE)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
        assert transport.aborted and conn.closed and not conn.keepable
    finally:
        loop.close()


# --- request heads and targets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "prefix", "tls"),
    [
        (
            "http://127.0.0.1:8080/hook?x=1",
            ("http", "127.0.0.1", 8080),
            b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n",
            False,
        ),
        (
            "https://example.com",
            ("https", "example.com", 443),
            b"POST / HTTP/1.1\r\nHost: example.com\r\n",
            True,
        ),
        (
            "https://example.com:443/a",
            ("https", "example.com", 443),
            b"POST /a HTTP/1.1\r\nHost: example.com\r\n",
            True,
        ),
        (
            "http://example.com:443/a",
            ("http", "example.com", 443),
            b"POST /a HTTP/1.1\r\nHost: example.com:443\r\n",
            False,
        ),
        (
            "https://[::1]:8443/h",
            ("https", "::1", 8443),
            b"POST /h HTTP/1.1\r\nHost: [::1]:8443\r\n",
            True,
        ),
        (
            "https://Bücher.example/a%20b?q=%C3%BC",
            ("https", "xn--bcher-kva.example", 443),
            b"POST /a%20b?q=%C3%BC HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n",
            True,
        ),
    ],
)
def test_target_of(url: str, key: tuple[str, str, int], prefix: bytes, tls: bool) -> None:
    target = target_of(url)
    assert (target.key, target.host, target.port, target.tls, target.prefix) == (
        key,
        key[1],
        key[2],
        tls,
        prefix,
    )


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost"])
def test_target_of_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError):
        target_of(url)


def test_render_head_is_exact() -> None:
    target = target_of("http://h.test/hook")
    head = render_head(target, {"Content-Type": "application/json", "X-A": "b"}, 42)
    assert head == (
        b"POST /hook HTTP/1.1\r\nHost: h.test\r\n"
        b"Content-Type: application/json\r\nX-A: b\r\nContent-Length: 42\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "b\r\nX-Injected: 1"},
        {"X-A": "b\nX-Injected: 1"},
        {"X-A": "b\r"},
        {"X-A\r\nX-B": "c"},
        {"X-A": "snowman ☃"},
    ],
)
def test_render_head_refuses_what_could_split_it(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        render_head(target_of("http://h.test/"), headers, 0)


# --- the pool against scripted servers -----------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REQUEST = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"

#: What a scripted server does with the n-th request on a connection: bytes to answer, None to
#: close the connection without answering, or RESET to reset it (TCP RST).
Script = Callable[[int, int], bytes | None]
RESET = b"<reset>"


@dataclass
class Scripted:
    port: int = 0
    connections: int = 0
    requests: list[tuple[int, int]] = field(default_factory=list)
    lost: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Scripted]:
    """A server on 127.0.0.1 reading requests (head + Content-Length body) and following
    ``script(connection number, request number on it)``."""
    state = Scripted()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        number = state.connections
        n = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                n += 1
                state.requests.append((number, n))
                state.changed.set()
                answer = script(number, n)
                if answer is None:
                    return
                if answer == RESET:
                    sock = writer.get_extra_info("socket")
                    # Linger 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                writer.write(answer)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()
            state.lost += 1
            state.changed.set()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def client(**kwargs: Any) -> Http1Client:

    options: dict[str, Any] = {
        "policy": AddressPolicy.from_setting("127.0.0.0/8"),
        "ssl_context": ssl.create_default_context(),
    }
    options.update(kwargs)
    return Http1Client(**options)


def target(port: int) -> Target:
    return target_of(f"http://127.0.0.1:{port}/hook")


async def test_keep_alive_reuses_one_connection() -> None:
    async with scripted(lambda c, n: OK) as server:
        http = client()
        try:
            for _ in range(3):
                assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
        finally:
            await http.aclose()
    assert server.connections == 1
    assert server.requests == [(1, 1), (1, 2), (1, 3)]


async def test_a_kept_connection_closed_by_the_server_is_replaced_once() -> None:
    # The second request on connection 1 finds it closed by the server (keep-alive race): the
    # client sends it again on a new connection, once.
    async with scripted(lambda c, n: None if (c, n) == (1, 2) else OK) as server:
        http = client()
        try:
            assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
            assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
        finally:
            await http.aclose()
    assert server.requests == [(1, 1), (1, 2), (2, 1)]


async def test_a_kept_connection_reset_by_the_server_is_replaced_once() -> None:
    async with scripted(lambda c, n: RESET if (c, n) == (1, 2) else OK) as server:
        http = client()
        try:
            assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
            assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
        finally:
            await http.aclose()
    assert server.requests == [(1, 1), (1, 2), (2, 1)]


async def test_a_new_connection_closed_without_answer_is_not_retried() -> None:
    async with scripted(lambda c, n: OK if (c, n) == (1, 1) else None) as server:
        http = client()
        try:
            assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
            with pytest.raises(ProtocolError) as caught:
                await http.post(target(server.port), REQUEST, 5)
        finally:
            await http.aclose()
    assert caught.value.nothing_received
    # Once on the kept connection, once on a fresh one, then given up.
    assert server.requests == [(1, 1), (1, 2), (2, 1)]


async def test_a_new_connection_reset_without_answer_is_not_retried() -> None:
    async with scripted(lambda c, n: RESET) as server:
        http = client()
        try:
            with pytest.raises(OSError) as caught:
                await http.post(target(server.port), REQUEST, 5)
        finally:
            await http.aclose()
    assert not isinstance(caught.value, TimeoutError)
    assert server.requests == [(1, 1)]


async def test_connection_close_is_honoured() -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    async with scripted(lambda c, n: close) as server:
        http = client()
        try:
            for _ in range(2):
                assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
        finally:
            await http.aclose()
    assert server.requests == [(1, 1), (2, 1)]


async def test_idle_connections_expire() -> None:
    async with scripted(lambda c, n: OK) as server:
        http = client(keepalive_expiry=0.0)
        try:
            for _ in range(2):
                assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
        finally:
            await http.aclose()
    assert server.requests == [(1, 1), (2, 1)]


async def test_the_sweeper_closes_idle_connections() -> None:
    async with scripted(lambda c, n: OK) as server:
        http = client(keepalive_expiry=0.05)
        try:
            assert (await http.post(target(server.port), REQUEST, 5))[:2] == (200, None)
            assert http.open_connections == 1
            await server.wait(lambda: server.lost == 1)
            # A client-side close: the server saw it end, the client forgot it.
            assert http.open_connections == 0
        finally:
            await http.aclose()


async def test_idle_connections_per_endpoint_are_capped() -> None:
    async with scripted(lambda c, n: OK) as server:
        http = client(max_idle_per_endpoint=1)
        try:
            results = await asyncio.gather(
                *(http.post(target(server.port), REQUEST, 5) for _ in range(3))
            )
            assert [r[:2] for r in results] == [(200, None)] * 3
            assert server.connections == 3
            await server.wait(lambda: server.lost == 2)
            assert http.open_connections == 1
        finally:
            await http.aclose()


async def test_timeout_aborts_the_connection() -> None:
    async with scripted(
        lambda c, n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nslow"
    ) as server:
        http = client()
        try:
            with pytest.raises(TimeoutError):
                await http.post(target(server.port), REQUEST, 0.2)
            await server.wait(lambda: server.lost == 1)
            assert http.open_connections == 0
        finally:
            await http.aclose()


async def test_cancelling_a_request_drops_its_connection() -> None:
    async with scripted(lambda c, n: b"HTTP/1.1 200 OK\r\n") as server:
        http = client()
        try:
            task = asyncio.create_task(http.post(target(server.port), REQUEST, 30))
            await server.wait(lambda: len(server.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.wait(lambda: server.lost == 1)
        finally:
            await http.aclose()


async def test_refused_connection_is_connect_failed() -> None:
    http = client()
    with pytest.raises(ConnectFailed):
        await http.post(target(free_port()), REQUEST, 5)


async def test_unresolvable_name_is_connect_failed() -> None:
    async def nothing(host: str, port: int) -> list[Any]:
        raise OSError("no such name")

    http = client(resolver=nothing)
    with pytest.raises(ConnectFailed, match="cannot resolve"):
        await http.post(target_of("http://nowhere.test/"), REQUEST, 5)


async def test_forbidden_ip_literal_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bridge.http.http1

    async def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no connection may be opened")

    monkeypatch.setattr(bridge.http.http1, "open_connection", never)
    http = client(policy=AddressPolicy())
    with pytest.raises(DestinationForbidden):
        await http.post(target_of("http://10.0.0.5/"), REQUEST, 5)


def test_a_response_sent_a_byte_at_a_time_is_read_in_at_most_max_reads() -> None:
    """Each read costs the loop ~10 us whatever its size: an endpoint trickling its answer a
    byte at a time within the deadline cost 0.6-2 s of CPU per delivery until 2026-12-05. A
    complete head stands (a 200 is delivered), its body cut unread and the connection not
    kept; a head that takes more reads than that is a protocol error."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    fed = feed([bytes([b]) for b in head + b"x" * 5000])
    assert fed.outcome == (200, None) and fed.answer is not None
    _, _, body_bytes, cut, _ = fed.answer
    assert cut and body_bytes == MAX_READS - len(head)
    assert not fed.keepable
    long_head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 500 + b"\r\n\r\n"
    failed = feed([bytes([b]) for b in long_head])
    assert isinstance(failed.outcome, ProtocolError) and "reads" in str(failed.outcome)
    # In as many reads as that, or fewer, the same bytes are the same answer.
    whole = feed([head + b"x" * 5000]).answer
    pieces = split(head + b"x" * 5000, list(range(50, 5000, 50)))
    assert len(pieces) <= MAX_READS
    assert feed(pieces).answer == whole
