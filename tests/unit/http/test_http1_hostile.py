"""bridge.http.http1 against endpoints that try to cost the worker CPU, or to have one
delivery read another's answer: TLS sent a byte at a time, a handshake that never ends, bytes
waiting on a kept connection, junk on a reused one; and both senders, the httpx reference too,
against the TLS ones. Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.http import http1, httpx_sender
from bridge.http.http1 import (
    MAX_HANDSHAKE_READS,
    MAX_IDLE_READS,
    MAX_IDLE_RECORDS,
    MAX_READS,
    MAX_TLS_RECORDS,
    Http1Client,
    ProtocolError,
    TlsRecords,
    target_of,
)
from bridge.http.ssrf import AddressPolicy
from tests.unit.http.test_senders import FakeResolver, hot_sender, make_delivery, self_signed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_both_loops_run_these_tests() -> None:
    """tests/unit/http/conftest.py runs this module on asyncio's loop and on uvloop."""
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] in ("asyncio", "uvloop")


@asynccontextmanager
async def serving(handler: Handler, context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A server on 127.0.0.1 running ``handler`` per connection; its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


@asynccontextmanager
async def dripping(upstream: int, whole: int) -> AsyncIterator[int]:
    """A TCP proxy to ``upstream`` that forwards the server's first ``whole`` reads as they come
    (a TLS server's handshake flight) and every later byte in a segment of its own, a
    millisecond apart; its port."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drip: bool) -> None:
        reads = 0
        while data := await reader.read(65536):
            reads += 1
            if not drip or reads <= whole:
                writer.write(data)
                await writer.drain()
                continue
            for n in range(len(data)):
                writer.write(data[n : n + 1])
                await writer.drain()
                await asyncio.sleep(0.001)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        finally:
            up_writer.close()

    async with serving(handler) as port:
        yield port


def tls_client(cert_file: Path, **kwargs: Any) -> Http1Client:
    return Http1Client(
        policy=AddressPolicy.from_setting("127.0.0.0/8"),
        ssl_context=ssl.create_default_context(cafile=str(cert_file)),
        resolver=FakeResolver(["127.0.0.1"]),
        **kwargs,
    )


def plain_client() -> Http1Client:
    return Http1Client(
        policy=AddressPolicy.from_setting("127.0.0.0/8"), ssl_context=ssl.create_default_context()
    )


REQUEST = b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class Reads:
    """Counts the socket reads of TLS connections: http1's (``_Tls.data_received``), and the
    httpx sender's (``_Wire.receive``, those of plain HTTP too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = http1._Tls.data_received

        def counted(tls: Any, data: bytes) -> None:
            self.count += 1
            original(tls, data)

        monkeypatch.setattr(http1._Tls, "data_received", counted)
        wire_receive = httpx_sender._Wire.receive

        async def counted_wire(wire: Any, max_bytes: int = 65536) -> bytes:
            self.count += 1
            return await wire_receive(wire, max_bytes)

        monkeypatch.setattr(httpx_sender._Wire, "receive", counted_wire)


async def post_through_a_drip(
    tmp_path: Path, handler: Handler, whole: int
) -> tuple[BaseException, float, int]:
    """One delivery over TLS to ``handler``'s server through :func:`dripping` (``whole`` reads
    forwarded as they come, then a byte at a time): what it raised, how long it took, and the
    client's connections left open."""
    cert = self_signed(tmp_path, "hooks.test")
    async with serving(handler, cert.server_context) as server:
        async with dripping(server, whole=whole) as proxy:
            client = tls_client(cert.cert_file)
            target = target_of(f"https://hooks.test:{proxy}/h")
            started = time.monotonic()
            with pytest.raises(Exception) as raised:
                await client.post(target, REQUEST, timeout=20.0)
            elapsed = time.monotonic() - started
            left = client.open_connections
            await client.aclose()
    return raised.value, elapsed, left


async def endless_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request; answers a head that never ends."""
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 60_000)
    await writer.drain()
    await asyncio.sleep(60)


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request (the head and a body of its Content-Length); answers 200."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    writer.write(OK)
    await writer.drain()
    await asyncio.sleep(60)


async def test_a_tls_response_sent_a_byte_at_a_time_ends_at_max_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loops' TLS transports read and try to decrypt every segment before the
    client sees a byte: a head sent a byte at a time, its records never complete, cost
    0.6-1.3 s of CPU per delivery and ran to the deadline (until 2026-12-06). Counted as the
    socket's reads, it ends at MAX_READS, long before the deadline."""

    reads = Reads(monkeypatch)
    error, elapsed, _ = await post_through_a_drip(tmp_path, endless_head, whole=1)
    assert isinstance(error, ProtocolError) and "reads" in str(error), repr(error)
    assert elapsed < 10.0, f"{elapsed:.1f} s: ran on towards the deadline"
    assert reads.count <= MAX_HANDSHAKE_READS + MAX_READS + 1


async def test_a_tls_handshake_sent_a_byte_at_a_time_ends_at_its_own_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    reads = Reads(monkeypatch)
    error, _, left = await post_through_a_drip(tmp_path, answer, whole=0)
    assert isinstance(error, ProtocolError) and "handshake" in str(error), repr(error)
    assert left == 0
    assert reads.count == MAX_HANDSHAKE_READS + 1


SENDERS = ["http1", "httpx"]


@pytest.mark.parametrize("kind", SENDERS)
@pytest.mark.parametrize(
    ("whole", "most"), [(1, MAX_HANDSHAKE_READS + MAX_READS + 1), (0, MAX_HANDSHAKE_READS + 1)]
)
async def test_tls_sent_a_byte_at_a_time_is_a_protocol_error_for_both_senders(
    tmp_path: Path, kind: str, whole: int, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response head (``whole`` 1: the handshake's flight whole) or the handshake itself
    (0) sent a byte a segment ends at the client's limit on reads of the socket. The httpx
    sender counted reads above TLS, which anyio's TLS reads the socket under until a record is
    complete: it took every segment to the deadline, 1.3-1.6 s of CPU a delivery (until
    2026-12-07)."""
    cert = self_signed(tmp_path, "hooks.test")
    reads = Reads(monkeypatch)
    async with serving(endless_head, cert.server_context) as server:
        async with dripping(server, whole=whole) as proxy:
            sender = hot_sender(
                kind,
                timeout=20.0,
                ca_bundle=str(cert.cert_file),
                resolver=FakeResolver(["127.0.0.1"]),
            )
            started = time.monotonic()
            try:
                result = await sender.send(*make_delivery(f"https://hooks.test:{proxy}/h"))
            finally:
                await sender.aclose()
            elapsed = time.monotonic() - started
    assert (result.status, result.error) == (None, "protocol_error")
    assert elapsed < 10.0, f"{elapsed:.1f} s: ran on towards the deadline"
    assert reads.count <= most, reads.count


@pytest.mark.parametrize("kind", SENDERS)
async def test_a_flood_of_session_tickets_is_a_protocol_error_for_both_senders(
    tmp_path: Path, kind: str
) -> None:
    """TLS 1.3 session tickets come after the handshake, read with the response: the httpx
    sender decrypted 20,000 of them and took the 200 behind them (0.13-0.21 s of CPU a
    delivery, until 2026-12-07). Counted as records of the socket before any is decrypted,
    they end the response past MAX_TLS_RECORDS, as in http1."""
    cert = self_signed(tmp_path, "hooks.test")
    cert.server_context.num_tickets = 2 * MAX_TLS_RECORDS
    async with serving(answer_ok, cert.server_context) as port:
        sender = hot_sender(
            kind, timeout=10.0, ca_bundle=str(cert.cert_file), resolver=FakeResolver(["127.0.0.1"])
        )
        try:
            result = await sender.send(*make_delivery(f"https://hooks.test:{port}/h"))
        finally:
            await sender.aclose()
    assert (result.status, result.error) == (None, "protocol_error")


async def test_a_tls_handshake_never_answered_ends_at_the_deadline_and_closes(
    tmp_path: Path,
) -> None:
    cert = self_signed(tmp_path, "hooks.test")
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes
        closed.set()

    async with serving(silent) as port:
        client = tls_client(cert.cert_file)
        with pytest.raises(TimeoutError):
            await client.post(target_of(f"https://hooks.test:{port}/h"), REQUEST, timeout=0.3)
        await asyncio.wait_for(closed.wait(), 5)
        assert client.open_connections == 0


async def test_tls_keeps_alive_and_closes_without_waiting_for_the_peer(tmp_path: Path) -> None:
    """Two exchanges on one connection; closed, the client waits for no close_notify of the
    peer's (the loops' default wait is 30 s: an endpoint that answered and went silent kept a
    socket per delivery that long)."""
    cert = self_signed(tmp_path, "hooks.test")
    connections = 0
    saw_close = asyncio.Event()

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(2):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(OK)
            await writer.drain()
        await reader.read()  # the client's close_notify ends it
        saw_close.set()
        await asyncio.sleep(60)  # and never answers it

    async with serving(keep_alive, cert.server_context) as port:
        client = tls_client(cert.cert_file)
        target = target_of(f"https://hooks.test:{port}/h")
        for _ in range(2):
            assert (await client.post(target, REQUEST, timeout=5.0))[0] == 200
        assert connections == 1
        started = time.monotonic()
        await client.aclose()
        await asyncio.wait_for(saw_close.wait(), 5)
        assert time.monotonic() - started < 2.0
        assert client.open_connections == 0


class StrayAfterFirst(socketserver.BaseRequestHandler):
    """Answers each request 200; after the first answer on the first connection, a stray 500
    5 ms later. A thread of its own: the client's loop is kept busy meanwhile."""

    requests = 0
    lock = threading.Lock()

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer or len(buffer.split(b"\r\n\r\n", 1)[1]) < 2:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer.split(b"\r\n\r\n", 1)[1][2:]
            with self.lock:
                type(self).requests += 1
                first = type(self).requests == 1
            sock.sendall(OK)
            if first:
                time.sleep(0.005)
                sock.sendall(b"HTTP/1.1 500 Stray\r\nContent-Length: 5\r\n\r\nstray")


async def test_bytes_waiting_on_a_kept_connection_are_never_the_next_answer() -> None:
    """The endpoint answers, then writes a stray 500 while the worker's loop is busy: the
    stray waits in the socket, unread, when the next delivery takes the connection. It was
    that delivery's answer (until 2026-12-06); now the connection is dropped at reuse."""
    StrayAfterFirst.requests = 0
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), StrayAfterFirst)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = plain_client()
        target = target_of(f"http://127.0.0.1:{server.server_address[1]}/h")
        assert (await client.post(target, REQUEST, timeout=5.0))[0] == 200
        # The loop busy (no await) while the stray arrives: nothing reads it.
        time.sleep(0.05)
        assert (await client.post(target, REQUEST, timeout=5.0))[0] == 200
        await client.aclose()
    finally:
        server.shutdown()
        server.server_close()
    assert StrayAfterFirst.requests == 2


async def test_junk_on_a_reused_connection_is_the_answer_not_a_reason_to_send_again() -> None:
    """Only a connection closed or reset before any byte of the answer is tried again on a
    new one; junk is an answer (a protocol error), and the request is not sent twice."""
    connections = requests = 0

    async def junk_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, requests
        connections += 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            requests += 1
            writer.write(OK if requests == 1 else b"xx")
            await writer.drain()

    async with serving(junk_second) as port:
        client = plain_client()
        target = target_of(f"http://127.0.0.1:{port}/h")
        assert (await client.post(target, REQUEST, timeout=5.0))[0] == 200
        with pytest.raises(ProtocolError, match="status line"):
            await client.post(target, REQUEST, timeout=5.0)
        await client.aclose()
    assert (connections, requests) == (1, 2)


# --- a TLS server of our own, over memory BIOs: it writes records as it likes ------------------


@asynccontextmanager
async def tls_by_hand(
    context: ssl.SSLContext, respond: Callable[[ssl.SSLObject, ssl.MemoryBIO], bytes]
) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that completes the handshake, reads one request, and sends
    what ``respond`` returns (the records it wrote through the SSL object, and any bytes it
    adds) in one write; then holds the connection open. Its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls_object = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                data = await reader.read(65536)
                if not data:
                    return
                incoming.write(data)
        writer.write(outgoing.read())
        request = b""
        while not request.endswith(b"{}"):
            try:
                request += tls_object.read(65536)
            except ssl.SSLWantReadError:
                data = await reader.read(65536)
                if not data:
                    return
                incoming.write(data)
        writer.write(respond(tls_object, outgoing))
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(serve) as port:
        yield port


async def test_a_complete_tls_answer_stands_when_a_bad_record_follows_it(tmp_path: Path) -> None:
    """The answer and a corrupt record in one read: the answer was dropped with the TLS error
    (a tls_error for a 200, and on a kept connection the request sent again) until 2026-12-06."""
    cert = self_signed(tmp_path, "hooks.test")

    def then_garbage(tls_object: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> bytes:
        tls_object.write(OK)
        return outgoing.read() + b"\x17\x03\x03\x00\x20" + b"\x00" * 32

    async with tls_by_hand(cert.server_context, then_garbage) as port:
        client = tls_client(cert.cert_file)
        answer = await client.post(target_of(f"https://hooks.test:{port}/h"), REQUEST, 5.0)
        await client.aclose()
    assert answer[0] == 200


async def test_tls_records_past_the_limit_end_the_answer_before_they_are_decrypted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each record costs its decryption however small it is: a head written a byte a record,
    thousands in one read, ends at MAX_TLS_RECORDS, undecrypted past it."""
    cert = self_signed(tmp_path, "hooks.test")
    decrypted = 0
    original = ssl.SSLObject.read

    def counted(tls_object: ssl.SSLObject, *args: Any) -> Any:
        nonlocal decrypted
        data = original(tls_object, *args)
        decrypted += len(data)
        return data

    def tiny_records(tls_object: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> bytes:
        for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 3000:
            tls_object.write(bytes([byte]))
        return outgoing.read()

    async with tls_by_hand(cert.server_context, tiny_records) as port:
        monkeypatch.setattr(ssl.SSLObject, "read", counted)
        client = tls_client(cert.cert_file)
        with pytest.raises(ProtocolError, match="TLS records"):
            await client.post(target_of(f"https://hooks.test:{port}/h"), REQUEST, 5.0)
        await client.aclose()
    assert decrypted <= MAX_TLS_RECORDS


def test_a_failure_a_limit_or_tls_gives_is_not_a_close_to_try_again() -> None:
    """A kept connection is tried again on a new one only after a bare close or reset before
    any byte of the answer (the server's idle timeout racing the reuse)."""
    assert http1._closed_unanswered(ProtocolError("closed", nothing_received=True))
    assert http1._closed_unanswered(ConnectionResetError())
    assert not http1._closed_unanswered(ProtocolError(f"more than {MAX_READS} reads"))
    assert not http1._closed_unanswered(ssl.SSLError(1, "bad record mac"))


@given(records=st.lists(st.binary(max_size=40), max_size=30), cuts=st.lists(st.integers(0, 2000)))
def test_records_are_counted_across_any_split_of_the_reads(
    records: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(b"\x17\x03\x03" + len(r).to_bytes(2, "big") + r for r in records)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    records_of = TlsRecords()
    counted = sum(records_of.count(stream[a:b]) for a, b in zip(points, points[1:], strict=False))
    assert counted == len(records)


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.mark.parametrize(
    ("records_per_read", "dropped"),
    [
        ([1] * MAX_IDLE_READS, False),  # a ticket or two, the peer's close_notify
        ([1] * (MAX_IDLE_READS + 1), True),
        ([MAX_IDLE_RECORDS], False),
        ([MAX_IDLE_RECORDS + 1], True),  # a KeyUpdate storm, say
    ],
)
def test_what_comes_between_exchanges_is_bounded(
    records_per_read: list[int], dropped: bool
) -> None:
    """Between two exchanges a TLS peer may send a little; past the idle limits, the connection
    is dropped before anything is decrypted."""
    conn = http1._Connection(asyncio.new_event_loop(), ("https", "h", 443), 1024)
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn._tls = True
    answers = [conn.tls_read(10, count) for count in records_per_read]
    assert transport.aborted is dropped
    assert answers[-1] is (not dropped)
    conn.loop.close()


async def test_a_connection_past_descriptor_1023_is_still_reused() -> None:
    """select() refuses descriptors past 1,023: the check of a kept connection's socket took
    every connection of a worker with that many open for one with bytes waiting."""
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(OK)
            await writer.drain()

    fillers = [socket.socket() for _ in range(1100)]
    try:
        async with serving(keep_alive) as port:
            client = plain_client()
            target = target_of(f"http://127.0.0.1:{port}/h")
            for _ in range(3):
                assert (await client.post(target, REQUEST, timeout=5.0))[0] == 200
            [conn] = client._open
            assert conn.transport.get_extra_info("socket").fileno() > 1023
            await client.aclose()
    finally:
        for filler in fillers:
            filler.close()
    assert connections == 1
