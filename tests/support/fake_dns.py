"""A DNS server on 127.0.0.1 for tests of the bridge's resolver: what it answers is decided by
the name asked, and every question is counted. Nothing is ever forwarded.

* ``*.fast.test``: ``A 127.0.0.1`` at once (``AAAA``: no data);
* ``*.slow.test``: never answered (an authoritative server that drops queries);
* anything else: ``NXDOMAIN``.

It serves UDP in a thread of its own, so that a test's event loop, busy or not, is never what
delays an answer. A :class:`bridge.http.dns.DnsResolver` asks it when given
``servers=[fake.address]``: then no other server is ever asked.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from types import TracebackType

__all__ = ["FakeDns"]

_A, _AAAA = 1, 28


class FakeDns:
    """The server, listening from ``__enter__`` to ``__exit__`` on ``127.0.0.1:port``."""

    def __init__(self) -> None:
        #: Questions received, by ``(name, type)`` (``type``: ``"A"``, ``"AAAA"`` ...).
        self.questions: Counter[tuple[str, str]] = Counter()
        #: The names asked, in the order they came (repeated when asked again).
        self.names: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        # Room for a burst of questions (a test's hundreds of lookups at once) without a drop.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.settimeout(0.05)
        #: The UDP port it listens on.
        self.port: int = self._sock.getsockname()[1]
        #: ``127.0.0.1:port``, as a resolver is told of a name server.
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)

    def asked(self, suffix: str = "") -> int:
        """Questions received for names ending with ``suffix``."""
        with self._lock:
            return sum(n for (name, _), n in self.questions.items() if name.endswith(suffix))

    def __enter__(self) -> FakeDns:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        ident, _flags, count = struct.unpack(">HHH", data[:6])
        if count != 1:
            return None
        at, labels = 12, []
        while at < len(data) and data[at]:
            size = data[at]
            labels.append(data[at + 1 : at + 1 + size].decode("ascii", "replace"))
            at += 1 + size
        if at + 5 > len(data):
            return None
        qtype = struct.unpack(">H", data[at + 1 : at + 3])[0]
        question = data[12 : at + 5]
        name = ".".join(labels).lower()
        kind = {_A: "A", _AAAA: "AAAA"}.get(qtype, str(qtype))
        with self._lock:
            self.questions[(name, kind)] += 1
            self.names.append(name)
        if name.endswith(".slow.test"):
            return None  # dropped: the resolver waits for its timeout
        if name.endswith(".fast.test"):
            if qtype != _A:
                return struct.pack(">HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
            answer = b"\xc0\x0c" + struct.pack(">HHIH", _A, 1, 60, 4) + bytes([127, 0, 0, 1])
            return struct.pack(">HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer
        return struct.pack(">HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
