"""Child processes for integration tests (workers, Prometheus): started for real, their output in a
log file, waited on with deadlines and stopped with a bounded wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from bridge.config import Settings
from tests.support.waiting import eventually, poll


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(settings.to_env())
    return env


class ChildProcess:
    """A command in a child process, its output appended to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_http(self, url: str, *, timeout: float, what: str) -> None:
        """Poll ``url`` until it answers 200; fail with the log's tail when the process exits
        or the deadline passes."""
        async with httpx.AsyncClient() as client:

            async def answers() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{what} exited with {self.process.returncode}:\n{self.tail()}"
                    )
                try:
                    response = await client.get(url, timeout=1.0)
                except httpx.HTTPError:
                    return False
                return response.status_code == 200

            await eventually(
                answers,
                timeout=timeout,
                interval=0.1,
                message=lambda: f"{what} not ready:\n{self.tail()}",
            )

    def send_signal(self, sig: int) -> None:
        """``sig`` to the process while it runs (SIGSTOP and SIGCONT pause and wake it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, a bounded wait, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class MetricsWaiting:
    """``wait_metric`` over whatever ``metrics()`` reads (a child's /metrics, a registry)."""

    async def metrics(self) -> dict[str, float]:
        raise NotImplementedError

    async def wait_metric(
        self, name: str, predicate: Callable[[float], bool], timeout: float = 30.0
    ) -> dict[str, float]:
        """Poll the metrics until ``predicate(value)`` holds for ``name`` (0 when absent)."""
        values = await poll(
            self.metrics,
            until=lambda values: predicate(values.get(name, 0.0)),
            timeout=timeout,
            interval=0.1,
        )
        if not predicate(values.get(name, 0.0)):
            raise AssertionError(
                f"{name} = {values.get(name)} did not reach the condition in {timeout}s"
            )
        return values


class WorkerProcess(ChildProcess, MetricsWaiting):
    """``webhook-bridge run`` in a child process, with its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        super().__init__(log_path)
        self.settings = settings

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self) -> WorkerProcess:
        self.spawn([sys.executable, "-m", "bridge.cli", "run"], settings_env(self.settings))
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await self.wait_http(self.base_url + "/readyz", timeout=timeout, what="worker")

    async def metrics(self) -> dict[str, float]:
        """The worker's /metrics as {'name{labels}': value}."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(self.base_url + "/metrics", timeout=5.0)).text
        return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus text exposition as {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
