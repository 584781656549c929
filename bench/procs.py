"""Child processes of a benchmark run: started for real, always stopped by PID with bounded waits.

Everything the harness starts goes through :class:`Procs`, whose :meth:`Procs.stop_all` runs at
the end of the run (also on Ctrl-C, SIGTERM and exceptions). Nothing is ever stopped by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (held together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listened on {host}:{port} within {timeout}s")
        time.sleep(0.02)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), to stop a master's workers by PID."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    #: Signal for a graceful stop (nginx wants SIGQUIT or SIGTERM, others SIGTERM).
    stop_signal: int = signal.SIGTERM
    #: Also stop these child PIDs if the process had to be killed (nginx workers).
    kill_children: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class Procs:
    """The registry of every process a run started."""

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        stop_signal: int = signal.SIGTERM,
        kill_children: bool = False,
    ) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                command,
                env=env,
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches only the harness, which then
                # stops everything in order.
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path, stop_signal, kill_children)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> int | None:
        """Graceful signal, a bounded wait, then SIGKILL (and the children, by PID)."""
        popen = proc.popen
        if popen.poll() is None:
            children = children_of(popen.pid) if proc.kill_children else []
            try:
                popen.send_signal(proc.stop_signal)
            except ProcessLookupError:
                pass
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                try:
                    popen.wait(5.0)
                except subprocess.TimeoutExpired:
                    print(f"bench: {proc.name} (pid {popen.pid}) did not die", file=sys.stderr)
                for child in children:
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if proc in self.started:
            self.started.remove(proc)
        return popen.returncode

    def kill(self, proc: Proc) -> None:
        """SIGKILL now (the recovery scenario's crash), then reap."""
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(5.0)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        # Newest first: workers before the receivers and the broker they use.
        for proc in list(reversed(self.started)):
            try:
                self.stop(proc, grace=8.0)
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name}: {exc}", file=sys.stderr)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A tiny synchronous GET (status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""
