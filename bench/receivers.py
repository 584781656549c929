"""Starting the receivers (nginx, or the aiohttp fallback; slow and hanging ones) and reading
their arrival logs."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc, Procs, free_ports, wait_port
from .receiver import unverified_log

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    log_format bench '$msec $http_x_webhook_delivery $server_port';
    server {{
{listens}
        access_log {log} bench buffer=256k flush=100ms;
        location / {{ return 200 "OK"; }}
    }}
}}
"""


@dataclass
class Arrivals:
    """Incremental reader of an arrival log: ``<unix time> <delivery id> <port>`` lines."""

    path: Path
    offset: int = 0
    times: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    _rest: bytes = b""

    def poll(self) -> int:
        """Read what was appended; returns the number of arrivals so far."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return len(self.times)
        self.offset += len(data)
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        for line in data[:cut].split(b"\n"):
            parts = line.split()
            if len(parts) == 3:
                self.times.append(float(parts[0]))
                self.ids.append(parts[1].decode())
                self.ports.append(int(parts[2]))
        return len(self.times)

    def mark(self) -> int:
        """Index of the next arrival (to look only at what comes after now)."""
        self.poll()
        return len(self.times)


@dataclass
class Receiver:
    """The receiver every scenario's healthy webhooks point at."""

    kind: str  # "nginx" or "aiohttp"
    ports: list[int]
    proc: Proc
    log_path: Path
    #: Timestamp resolution of the arrival log, in seconds.
    resolution: float

    def url(self, i: int, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.ports[i % len(self.ports)]}{path}"

    def arrivals(self) -> Arrivals:
        """A reader positioned at the end of the log (sees only what arrives from now on)."""
        reader = Arrivals(self.log_path)
        try:
            reader.offset = self.log_path.stat().st_size
        except FileNotFoundError:
            reader.offset = 0
        return reader

    def unverified(self) -> Counter[str]:
        """Requests the receiver did not count as deliveries so far, by why (nginx checks
        nothing: none)."""
        return unverified(self.log_path) if self.kind == "aiohttp" else Counter()

    def describe(self) -> str:
        if self.kind == "nginx":
            return (
                f"nginx ({self.version}) `return 200`, 1 worker process, {len(self.ports)} "
                "ports, access log with $msec (1 ms resolution) as the arrival record"
            )
        return (
            f"aiohttp receiver (bench/receiver.py), {len(self.ports)} ports, each body's "
            "signature checked, arrival time recorded once the body is read (time.time())"
        )

    version: str = ""


def nginx_available() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def start_nginx(procs: Procs, workdir: Path, nports: int) -> Receiver:
    binary = nginx_available()
    assert binary is not None
    directory = workdir / "nginx"
    directory.mkdir(parents=True, exist_ok=True)
    ports = free_ports(nports)
    log = directory / "access.log"
    listens = "\n".join(f"        listen 127.0.0.1:{p} backlog=1024;" for p in ports)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, listens=listens, log=log))
    import subprocess

    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    # -e: error log before the config is read (the default one is not writable everywhere).
    proc = procs.spawn(
        "nginx",
        [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
        stop_signal=signal.SIGTERM,
        kill_children=True,
    )
    for port in ports:
        wait_port("127.0.0.1", port, 10.0, proc.popen)
    receiver = Receiver("nginx", ports, proc, log, 0.001)
    receiver.version = version.replace("nginx version: ", "")
    return receiver


def start_aiohttp(
    procs: Procs,
    workdir: Path,
    name: str,
    listens: list[tuple[int, str, float]],
    *,
    python: str = sys.executable,
) -> tuple[Proc, Path]:
    log = workdir / f"{name}-arrivals.log"
    command = [python, "-m", "bench.receiver", "--log", str(log), "--uvloop"]
    for port, mode, seconds in listens:
        command += ["--listen", f"{port}:{mode}:{seconds}"]
    proc = procs.spawn(name, command)
    for port, _, _ in listens:
        wait_port("127.0.0.1", port, 15.0, proc.popen)
    return proc, log


def start_fast_receiver(procs: Procs, workdir: Path, nports: int, *, force: str | None) -> Receiver:
    """nginx when installed (unless ``force == "aiohttp"``), else the aiohttp receiver."""
    if force != "aiohttp" and nginx_available():
        return start_nginx(procs, workdir, nports)
    if force == "nginx":
        raise RuntimeError("--receiver nginx: nginx is not installed")
    ports = free_ports(nports)
    proc, log = start_aiohttp(procs, workdir, "receiver", [(p, "ok", 0.0) for p in ports])
    return Receiver("aiohttp", ports, proc, log, 1e-6)


def unverified(log: Path) -> Counter[str]:
    """The requests an aiohttp receiver logging arrivals to ``log`` did not count as deliveries
    (a body not whole JSON naming a webhook, or not signed with its secret), by why."""
    try:
        text = unverified_log(log).read_text()
    except FileNotFoundError:
        return Counter()
    return Counter(line.split()[-1] for line in text.splitlines() if len(line.split()) == 4)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
