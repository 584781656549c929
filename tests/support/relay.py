"""A TCP relay on 127.0.0.1 in front of a broker, which a test can break: every connection cut
(both sides reset), every byte held (connections open, nothing passes, as in a network
partition), new connections refused. The broker advertises the relay's port, so every client
connection, metadata and data, passes through it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class Relay:
    """Relays ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``."""

    def __init__(self, upstream_port: int, port: int) -> None:
        self.upstream_port = upstream_port
        self.port = port
        #: Set while bytes pass; cleared by :meth:`hold`.
        self._flowing = asyncio.Event()
        self._flowing.set()
        #: While set, a new connection is reset at once.
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        #: Connections accepted whose link to the broker is being made.
        self._linking: set[asyncio.StreamWriter] = set()
        #: Connections accepted, and connections cut (by :meth:`cut` or refused).
        self.accepted = 0
        self.cut_count = 0

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.release()
        self.cut()
        for writer in self._linking:
            _reset(writer)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> int:
        """Reset every open connection, both sides; how many there were."""
        links, self._links = self._links, set()
        for link in links:
            link.abort()
        self.cut_count += len(links)
        return len(links)

    def hold(self) -> None:
        """Stop passing bytes, either way, until :meth:`release` (the connections stay open)."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refusing:
            _reset(writer)
            self.cut_count += 1
            return
        self._linking.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            return
        finally:
            self._linking.discard(writer)
        if writer.transport.is_closing():  # the relay stopped meanwhile
            _reset(up_writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while chunk := await source.read(65536):
                await self._flowing.wait()
                if link.aborted:
                    return
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        # One side closed (or failed): close both, as a relay in the path would.
        self._links.discard(link)
        link.abort()


class _Link:
    """The two sockets of one relayed connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.aborted = False
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        _reset(self.client)
        _reset(self.upstream)
        current = asyncio.current_task()
        for pump in self.pumps:
            if pump is not current:
                pump.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not a FIN: a cut link, not a polite close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
