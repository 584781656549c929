"""The embedded broker's process handling: dying with its parent, naming who holds a port,
choosing a free one."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.worker.embedded import (
    _bindable,
    die_with_parent,
    free_port,
    port_holder,
    port_in_use_message,
)
from tests.support.waiting import eventually_sync

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")

#: A child that answers one line, then lives on for a bounded time whatever its parent does
#: (it does not stop at the end of its input, so only a signal ends it early).
ECHO_THEN_LINGER = (
    "import sys, time; sys.stdout.write(sys.stdin.readline()); sys.stdout.flush(); time.sleep(120)"
)

#: A parent that starts ECHO_THEN_LINGER bound to itself (from its main thread or from a thread
#: that has ended by then), checks that the child is alive, prints the child's pid and waits.
PARENT = """
import subprocess, sys, threading
from bridge.worker.embedded import spawn_bound_to_parent

command = [sys.executable, "-c", sys.argv[2]]
pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE)
box = []
if sys.argv[1] == "thread":
    starter = threading.Thread(target=lambda: box.append(spawn_bound_to_parent(command, **pipes)))
    starter.start()
    starter.join()
else:
    box.append(spawn_bound_to_parent(command, **pipes))
child = box[0]
# A round trip after the starting thread ended: a parent-death signal sent at its end would
# have killed the child before it could answer.
child.stdin.write(b"ping\\n")
child.stdin.flush()
assert child.stdout.readline() == b"ping\\n"
print(child.pid, flush=True)
sys.stdin.read()
"""


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (its parent died, it was reparented)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _read_line(stream: object, timeout: float) -> bytes:
    assert hasattr(stream, "readline") and hasattr(stream, "fileno")
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout}s"
    line: bytes = stream.readline()
    return line


@pytest.fixture
def listening() -> Iterator[int]:
    """A port this process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@linux_only
@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_the_child_dies_when_its_parent_is_killed(started_from: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, started_from, ECHO_THEN_LINGER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    child_pid = None
    try:
        child_pid = int(_read_line(parent.stdout, 30.0))
        assert not _dead(child_pid)
        parent.kill()
        parent.wait()
        eventually_sync(
            lambda: _dead(child_pid), timeout=10.0, message=f"pid {child_pid} outlived its parent"
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for stream in (parent.stdin, parent.stdout):
            assert stream is not None
            stream.close()
        if child_pid is not None and not _dead(child_pid):
            os.kill(child_pid, signal.SIGKILL)


@linux_only
def test_a_child_whose_parent_died_before_prctl_kills_itself() -> None:
    """The race the check after ``prctl`` closes: the parent the child was forked for is gone
    (here: a pid that is not its parent), so the child must not live on."""
    not_the_parent = os.getppid()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        preexec_fn=die_with_parent(not_the_parent),
    )
    try:
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@linux_only
def test_the_holder_of_a_port_is_named(listening: int) -> None:
    holder = port_holder(listening)
    assert holder is not None and holder.startswith(f"pid {os.getpid()} (")
    message = port_in_use_message(listening)
    assert f"port {listening} is already in use by pid {os.getpid()} (" in message
    assert "--embedded-port" in message and "\n" not in message


def _fake_proc(root: Path, *, tcp: str = "", tcp6: str = "", fds: dict[str, str]) -> Path:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"  # noqa: E501
    (root / "net").mkdir(parents=True)
    (root / "net" / "tcp").write_text(header + tcp)
    (root / "net" / "tcp6").write_text(header + tcp6)
    for pid, inode in fds.items():
        (root / pid / "fd").mkdir(parents=True)
        (root / pid / "fd" / "3").symlink_to(f"socket:[{inode}]")
        (root / pid / "cmdline").write_bytes(b"tansu\0broker\0--listener-url\0tcp://x\nnewline\0")
    return root


def _tcp_line(port: int, state: str, inode: int, address: str = "0100007F") -> str:
    return (
        f"   0: {address}:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 "
        f"00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def test_the_listening_socket_is_found_in_tcp_and_tcp6(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path / "proc",
        # An established connection from the port (01) is not the listener (0A).
        tcp=_tcp_line(9092, "01", 111),
        tcp6=_tcp_line(9092, "0A", 222, address="00000000000000000000000001000000"),
        fds={"41": "111", "42": "222"},
    )
    assert (
        port_holder(9092, proc=str(proc)) == "pid 42 (tansu broker --listener-url tcp://x newline)"
    )
    assert port_holder(9093, proc=str(proc)) is None


def test_a_holder_that_cannot_be_inspected_is_said_so(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path / "proc", tcp=_tcp_line(9092, "0A", 333), fds={"41": "111"})
    message = port_in_use_message(9092, proc=str(proc))
    assert message == (
        "port 9092 is already in use by a process this user may not inspect; "
        "stop it or choose another with --embedded-port"
    )


def test_without_proc_the_message_still_names_the_port(tmp_path: Path) -> None:
    message = port_in_use_message(9092, proc=str(tmp_path / "missing"))
    assert message == "port 9092 is already in use; stop it or choose another with --embedded-port"


def test_long_command_lines_are_shortened(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path / "proc", tcp=_tcp_line(9092, "0A", 444), fds={"7": "444"})
    (proc / "7" / "cmdline").write_bytes(b"x" * 500 + b"\0")
    holder = port_holder(9092, proc=str(proc))
    assert holder is not None and holder.endswith("...)") and len(holder) < 140


def _ranges(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    return path


def test_free_ports_are_below_the_ephemeral_range_and_never_repeated(tmp_path: Path) -> None:
    # The kernel gives ports of its ephemeral range to outgoing connections: one of them took
    # a port between free_port() and the worker's bind. Chosen below it, and never twice.
    range_file = _ranges(tmp_path, "40000\t60999\n")
    ports = [free_port(range_file=range_file) for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(40000 - 16384 <= port < 40000 for port in ports)


def test_a_taken_or_handed_out_port_is_not_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The random choice is made to fall on a port held by a listener, then on the port just
    # handed out: both are passed over. Every port here is below the ephemeral range, where
    # only an explicit bind takes one (none is in TIME_WAIT after an outgoing connection).
    range_file = _ranges(tmp_path, "32768 60999")
    low = 32768 - 16384
    free = [
        port for port in range(low + 100, low + 400) if _bindable(socket.AF_INET, "127.0.0.1", port)
    ][:3]
    assert len(free) == 3, "no free ports below the ephemeral range"
    taken, first_choice, second_choice = free
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        picks = iter([taken - low, taken - low, first_choice - low] * 3 + [second_choice - low])
        monkeypatch.setattr("bridge.worker.embedded.random.randrange", lambda n: next(picks))
        monkeypatch.setattr("bridge.worker.embedded._handed_out", set())
        first = free_port(range_file=range_file)
        second = free_port(range_file=range_file)
    assert (first, second) == (first_choice, second_choice)


@pytest.mark.parametrize("text", ["", "garbage", "1500 60999"])
def test_without_a_usable_range_the_kernel_chooses(tmp_path: Path, text: str) -> None:
    port = free_port(range_file=_ranges(tmp_path, text))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_free_port_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))
