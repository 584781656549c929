"""py-spy during a scenario, and a summary of where the worker's time went."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import REPO

#: Components a sample is charged to: the innermost frame whose file belongs to one of these
#: (checked in order); samples whose frames are all elsewhere go to "python/asyncio (stdlib)".
COMPONENTS: list[tuple[str, str]] = [
    ("/bridge/", "bridge (project code)"),
    ("/httpcore/", "httpcore (HTTP client)"),
    ("/httpx/", "httpx (HTTP client)"),
    ("/h11/", "h11 (HTTP/1.1 parser)"),
    ("/anyio/", "anyio (httpcore's async layer)"),
    ("/jsonschema/", "jsonschema (validation)"),
    ("/referencing/", "jsonschema (validation)"),
    ("/rpds/", "jsonschema (validation)"),
    ("/aiokafka/", "aiokafka"),
    ("/kafka/", "aiokafka"),
    ("/faust/", "faust"),
    ("/mode/", "mode (faust's service layer)"),
    ("/prometheus_client/", "prometheus_client"),
    ("/aiohttp/", "aiohttp (delivery client, and the /metrics server)"),
    ("/opentracing/", "faust"),
    ("/croniter/", "faust"),
    ("/yarl/", "yarl"),
    ("/logging/", "logging"),
]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def pyspy_binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


@dataclass
class Profiler:
    """A ``py-spy record`` process attached to one PID; :meth:`finish` stops it (SIGINT, which
    makes py-spy write its output) with a bounded wait."""

    popen: subprocess.Popen[bytes]
    output: Path
    fmt: str

    @classmethod
    def start(
        cls, pid: int, output: Path, *, fmt: str, max_seconds: int, rate: int = 100
    ) -> Profiler:
        binary = pyspy_binary()
        if binary is None:
            raise RuntimeError("py-spy not installed (pip install py-spy)")
        output.parent.mkdir(parents=True, exist_ok=True)
        log = open(output.with_suffix(".pyspy.log"), "wb")  # noqa: SIM115
        command = [
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--duration",
            str(max_seconds),
            "--format",
            fmt,
            "--output",
            str(output),
            # Sampling without pausing the worker: a little less exact, far less intrusive.
            "--nonblocking",
        ]
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return cls(popen, output, fmt)

    def finish(self, timeout: float = 20.0) -> bool:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5.0)
        return self.output.exists() and self.output.stat().st_size > 0

    def log_text(self) -> str:
        try:
            return self.output.with_suffix(".pyspy.log").read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("func"), match.group("file") or ""


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    root = str(REPO) + os.sep
    return path.replace(root, "")


def _component(path: str) -> str | None:
    # py-spy prints paths relative to their sys.path entry ("aiokafka/client.py"), or absolute.
    path = "/" + path.lstrip("/")
    for needle, name in COMPONENTS:
        if needle in path:
            # "/bridge/" also matches nothing else; site-packages "kafka/" only via aiokafka.
            if needle == "/kafka/" and "aiokafka" not in path:
                continue
            return name
    return None


#: Frames that are on every stack of their thread (the event loop, the CLI, thread start-up):
#: they say nothing about where the time goes, so inclusive tables leave them out.
GENERIC = (
    "BaseEventLoop.",
    "Handle._run ",
    "_run_module_as_main ",
    "_run_code ",
    "<module> ",
    "main (bridge/cli/commands.py)",
    "main (bench/patched_worker.py)",
    "_run (bridge/cli/commands.py)",
    "Worker.execute_from_commandline ",
    "Thread._bootstrap",
    "ServiceThread._start_thread ",
    "WorkerThread.run ",
)
IDLE_LEAVES = ("EpollSelector.select ", "select.epoll.poll")


def summarise(raw_path: Path, top: int = 15) -> dict[str, object]:
    """From py-spy's raw (collapsed stack) output: the share of samples per thread, idle in the
    event loop's epoll, per component (each sample charged to its innermost frame in a known
    package), and the top functions by own and by inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        # With --threads py-spy's raw format starts with the process and thread names.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        labels = []
        for frame in frames:
            func, path = _parse_frame(frame)
            labels.append((f"{func} ({_short_file(path)})", path))
        in_thread = any(label.startswith("Thread._bootstrap") for label, _ in labels)
        threads[
            "other thread (faust's consumer thread)"
            if in_thread
            else "main thread (the worker's event loop)"
        ] += count
        own[labels[-1][0]] += count
        for label in {label for label, _ in labels}:
            if not label.startswith(GENERIC):
                inclusive[label] += count
        if labels[-1][0].startswith(IDLE_LEAVES):
            components["idle: an event loop waiting in epoll"] += count
            continue
        charged = "python/asyncio (stdlib)"
        for _, path in reversed(labels):
            component = _component(path)
            if component is not None:
                charged = component
                break
        components[charged] += count

    def table(counter: Counter[str], key: str) -> list[dict[str, object]]:
        return [
            {key: name, "share": round(count / total, 3), "samples": count}
            for name, count in counter.most_common(top)
        ]

    if not total:
        return {
            "samples": 0,
            "by_thread": [],
            "by_component": [],
            "top_own": [],
            "top_inclusive": [],
        }
    return {
        "samples": total,
        "by_thread": table(threads, "thread"),
        "by_component": [
            {"component": name, "share": round(count / total, 3), "samples": count}
            for name, count in components.most_common()
        ],
        "top_own": table(own, "function"),
        "top_inclusive": table(inclusive, "function"),
    }


def format_summary(summary: dict[str, object], title: str) -> str:
    rows: Any = summary
    lines = [f"### {title}", "", f"{rows['samples']} samples (100 Hz, non-blocking).", ""]
    lines += ["| thread | share |", "|---|---|"]
    for row in rows["by_thread"]:
        lines.append(f"| {row['thread']} | {row['share'] * 100:.1f}% |")
    lines += [
        "",
        "Time by component (each sample charged to its innermost frame in a known package; "
        "stdlib frames are charged to the package that called them):",
        "",
        "| component | share |",
        "|---|---|",
    ]
    for row in rows["by_component"]:
        lines.append(f"| {row['component']} | {row['share'] * 100:.1f}% |")
    lines += ["", "Top functions by own time:", "", "| function | share |", "|---|---|"]
    for row in rows["top_own"]:
        lines.append(f"| `{row['function']}` | {row['share'] * 100:.1f}% |")
    lines += [
        "",
        "Top functions by inclusive time (the event loop, CLI and thread start-up frames, which "
        "are on every stack, left out):",
        "",
        "| function | share |",
        "|---|---|",
    ]
    for row in rows["top_inclusive"]:
        lines.append(f"| `{row['function']}` | {row['share'] * 100:.1f}% |")
    return "\n".join(lines) + "\n"
