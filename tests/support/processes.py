"""Worker processes for integration tests: started for real, stopped with a bounded wait."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bridge.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(settings.to_env())
    return env


class WorkerProcess:
    """``webhook-bridge run`` in a child process, with its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "run"],
            env=settings_env(self.settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"worker exited with {self.process.returncode}:\n{self.tail()}"
                    )
                try:
                    response = await client.get(self.base_url + "/readyz", timeout=1.0)
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready within {timeout}s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    async def metrics(self) -> dict[str, float]:
        """The worker's /metrics as {'name{labels}': value}."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(self.base_url + "/metrics", timeout=5.0)).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def wait_metric(
        self, name: str, predicate: object, timeout: float = 30.0
    ) -> dict[str, float]:
        """Poll /metrics until ``predicate(value)`` holds for ``name`` (0 when absent)."""
        deadline = time.monotonic() + timeout
        while True:
            values = await self.metrics()
            if predicate(values.get(name, 0.0)):  # type: ignore[operator]
                return values
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} = {values.get(name)} did not reach the condition in {timeout}s"
                )
            await asyncio.sleep(0.1)

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
