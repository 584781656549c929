"""A raw-socket server on 127.0.0.1 that answers every HTTP request with scripted bytes.

It reads each request (head, then a ``Content-Length`` body) and plays its script: bytes sent
as they are, pauses, floods at full speed, a trickle, a clean close (FIN) or a reset (RST). A
script that ends without closing waits for the next request on the same connection. Every flood
and trickle is bounded in bytes and in seconds and stops by itself, or as soon as the client
goes away.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field

__all__ = [
    "CLOSE",
    "RESET",
    "Action",
    "Close",
    "Flood",
    "Pause",
    "RawServer",
    "Reset",
    "Trickle",
    "raw_server",
    "raw_server_thread",
]


@dataclass(frozen=True)
class Pause:
    """Wait before the next action."""

    seconds: float


@dataclass(frozen=True)
class Flood:
    """Send ``piece`` again and again as fast as the client reads, until ``max_bytes`` are sent,
    ``max_seconds`` have passed, or the client goes away."""

    piece: bytes
    max_bytes: int = 256 * 1024 * 1024
    max_seconds: float = 10.0


@dataclass(frozen=True)
class Trickle:
    """Send ``data`` one byte every ``interval`` seconds."""

    data: bytes
    interval: float


@dataclass(frozen=True)
class Close:
    """Close the connection cleanly (FIN)."""


@dataclass(frozen=True)
class Reset:
    """Reset the connection (RST: SO_LINGER 0, then close)."""


CLOSE = Close()
RESET = Reset()

Action = bytes | Pause | Flood | Trickle | Close | Reset


@dataclass
class RawServer:
    """What the server saw; ``script`` may be changed between requests."""

    script: Sequence[Action] = ()
    port: int = 0
    connections: int = 0
    requests: int = 0
    #: Bytes sent on all connections.
    sent: int = 0
    #: Connections whose end the server has seen (the client's close, or its own).
    ended: int = 0
    #: ``time.monotonic()`` when a flood stopped because the client went away.
    client_gone_at: list[float] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_ended(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` connections have ended (``TimeoutError`` after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while self.ended < count:
                self._changed.clear()
                await self._changed.wait()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """One request, head and body; False when the client closed the connection instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return False
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    try:
        await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    return True


async def _flood(state: RawServer, writer: asyncio.StreamWriter, flood: Flood) -> bool:
    """True when the flood ended by its own bounds, False when the client went away."""
    piece = flood.piece * max(1, 65536 // max(1, len(flood.piece)))
    sent = 0
    try:
        async with asyncio.timeout(flood.max_seconds):
            while sent < flood.max_bytes:
                writer.write(piece)
                sent += len(piece)
                state.sent += len(piece)
                await writer.drain()
    except TimeoutError:
        return True
    except ConnectionError:
        state.client_gone_at.append(time.monotonic())
        return False
    return True


async def _play(state: RawServer, writer: asyncio.StreamWriter) -> bool:
    """Play the script once; False when the connection is finished."""
    for action in state.script:
        if isinstance(action, bytes):
            writer.write(action)
            state.sent += len(action)
            await writer.drain()
        elif isinstance(action, Pause):
            await asyncio.sleep(action.seconds)
        elif isinstance(action, Flood):
            if not await _flood(state, writer, action):
                return False
        elif isinstance(action, Trickle):
            for i in range(len(action.data)):
                writer.write(action.data[i : i + 1])
                state.sent += 1
                await writer.drain()
                await asyncio.sleep(action.interval)
        elif isinstance(action, Reset):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        else:
            return False  # Close: the caller closes the writer (FIN)
    return True


@asynccontextmanager
async def raw_server(script: Sequence[Action] = ()) -> AsyncIterator[RawServer]:
    """A :class:`RawServer` listening on 127.0.0.1 (a free port) while the context is open."""
    state = RawServer(script=script)
    handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        state.connections += 1
        try:
            while await _read_request(reader):
                state.requests += 1
                state._changed.set()
                if not await _play(state, writer):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
            state.ended += 1
            state._changed.set()
            handlers.pop(task, None)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()
        # Ending the connections ends their handlers (a cancelled handler would be logged as an
        # error by asyncio's stream machinery).
        for writer in list(handlers.values()):
            writer.transport.abort()
        for task in list(handlers):
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5.0)
        await server.wait_closed()


@contextmanager
def raw_server_thread(script: Sequence[Action] = ()) -> Iterator[RawServer]:
    """:func:`raw_server` on its own event loop in another thread, so that the CPU time of the
    calling thread (``time.thread_time()``) counts the client's work only."""
    ready = threading.Event()
    holder: list[RawServer] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with raw_server(script) as state:
            holder.append(state)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(5.0):
            raise TimeoutError("the raw server did not start")
        yield holder[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15.0)
        loop.close()
