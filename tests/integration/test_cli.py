"""The commands a newcomer uses, run as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bridge.config import Settings
from bridge.kafka.reading import read_topic
from bridge.worker.embedded import free_port
from tests.support.processes import settings_env
from tests.support.waiting import eventually, eventually_sync

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "bridge.cli"]


def cli(
    settings: Settings | None, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = (
        settings_env(settings)
        if settings
        else {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    )
    result = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


async def test_topics_apply_is_idempotent_and_reports_drift(make_settings) -> None:
    settings = make_settings()
    first = cli(settings, "topics", "apply")
    assert f"created  {settings.events_topic}" in first.stdout
    second = cli(settings, "topics", "apply")
    assert "created" not in second.stdout
    assert f"exists   {settings.subscriptions_topic}" in second.stdout

    drifted = make_settings(
        group_id=settings.group_id + "-d",
        events_topic=settings.events_topic + "-d",
        subscriptions_topic=settings.subscriptions_topic + "-d",
        deadletter_topic=settings.deadletter_topic + "-d",
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=drifted.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(drifted.events_topic, 2, 1),
                NewTopic(
                    drifted.subscriptions_topic, 3, 1, topic_configs={"cleanup.policy": "delete"}
                ),
            ]
        )
    finally:
        await admin.close()
    result = cli(drifted, "topics", "apply", check=False)
    assert result.returncode == 1
    assert f"{drifted.events_topic}: partition count is 2, declared 6" in result.stderr
    assert (
        f"{drifted.subscriptions_topic}: cleanup.policy is delete, declared compact"
        in result.stderr
    )
    # Missing topics were still created.
    assert f"created  {drifted.deadletter_topic}" in result.stdout


async def test_readme_flow_on_the_embedded_broker(tmp_path: Path) -> None:
    """`webhook-bridge run` with no broker configured, then create, publish, receive."""
    broker_port, web_port, receiver_port = free_port(), free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env = dict(
        base,
        BRIDGE_EMBEDDED_PORT=str(broker_port),
        BRIDGE_WEB_PORT=str(web_port),
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
    )
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    run = subprocess.Popen([*CLI, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    receive = subprocess.Popen(
        [*CLI, "receive", "--port", str(receiver_port), "--secret", "demo-secret-123"],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                assert run.poll() is None, (tmp_path / "run.log").read_text()
                try:
                    answer = await client.get(f"http://127.0.0.1:{web_port}/readyz")
                except httpx.HTTPError:
                    return False
                return answer.status_code == 200

            await eventually(
                ready, timeout=60, interval=0.1, message=lambda: (tmp_path / "run.log").read_text()
            )
        common = ["--embedded-port", str(broker_port)]
        created = subprocess.run(
            [
                *CLI,
                "webhooks",
                "create",
                *common,
                "--url",
                f"http://127.0.0.1:{receiver_port}/hook",
                "--events",
                "post.published",
                "--site-id",
                "site_1",
                "--user-id",
                "user_1",
                "--name",
                "Demo",
            ],
            env=base,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = dict(line.split(None, 1) for line in created.stdout.splitlines())
        assert len(lines["secret"]) == 64  # 32 random bytes, hex
        listed = subprocess.run(
            [*CLI, "webhooks", "list", "--json", *common],
            env=base,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        record = json.loads(listed.stdout)
        assert record["id"] == lines["id"] and record["secret"] == "***"
        assert lines["secret"] not in listed.stdout
        subprocess.run(
            [*CLI, "webhooks", "update", lines["id"], "--secret", "demo-secret-123", *common],
            env=base,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        subprocess.run(
            [
                *CLI,
                "publish",
                "post.published",
                *common,
                "--site-id",
                "site_1",
                "--user-id",
                "user_1",
                "--data",
                '{"id": "post_1", "title": "Hello"}',
            ],
            env=base,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert receive.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(receive.stdout.readline), 30)
        delivery = json.loads(line)
        assert delivery["verified"] is True
        assert delivery["event"] == "post.published"
        assert delivery["body"]["event"]["data"]["title"] == "Hello"
    finally:
        receive.kill()
        receive.wait()
        if receive.stdout is not None:
            receive.stdout.close()
        run.send_signal(2)  # Ctrl-C
        try:
            run.wait(20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        log.close()
    # Not a terminal: the worker's log lines are JSON objects.
    logged = [
        json.loads(line)
        for line in (tmp_path / "run.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(line["logger"].startswith("faust.") for line in logged)
    # Ctrl-C stopped the embedded broker too.
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker_port), timeout=0.5).close()


def test_management_commands_explain_a_missing_broker() -> None:
    port = free_port()
    result = cli(None, "webhooks", "list", "--embedded-port", str(port), check=False)
    assert result.returncode == 1
    assert "no Kafka broker configured" in result.stderr
    assert "BRIDGE_KAFKA_BOOTSTRAP_SERVERS" in result.stderr


def test_bad_event_data_is_refused_before_publishing() -> None:
    result = cli(
        None,
        "publish",
        "post.created",
        "--site-id",
        "s",
        "--user-id",
        "u",
        "--data",
        '{"id": "p", "title": "t", "n": 9007199254740993}',
        "--bootstrap-servers",
        "127.0.0.1:1",
        check=False,
    )
    assert result.returncode == 1
    assert "unsafe_integer" in result.stderr


@pytest.mark.parametrize("sigint_on_entry", ["default", "ignored"])
async def test_broker_command_runs_the_embedded_broker_until_ctrl_c(sigint_on_entry: str) -> None:
    """Stopped by SIGINT however it was started: a process started in a script's background
    inherits SIGINT ignored (until 2026-12-07 such a broker went on after it)."""
    import signal
    import socket

    disposition = signal.SIG_DFL if sigint_on_entry == "default" else signal.SIG_IGN
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    broker = subprocess.Popen(
        [*CLI, "broker", "--port", str(port)],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
    )
    try:
        assert broker.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(broker.stdout.readline), 30)
        assert f"127.0.0.1:{port}" in line
        # A real Kafka-protocol broker answers there: apply the topics through it.
        settings = Settings.load(env={}, overrides={"kafka_bootstrap_servers": f"127.0.0.1:{port}"})
        result = cli(settings, "topics", "apply")
        assert "created  postion.events" in result.stdout
    finally:
        broker.send_signal(2)
        try:
            code = broker.wait(20)
        except subprocess.TimeoutExpired:
            broker.kill()
            code = broker.wait()
        if broker.stdout is not None:
            broker.stdout.close()
    assert code == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def _process_state(pid: int) -> str | None:
    """The state letter of ``/proc/<pid>/stat``; None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _broker_child(parent: int, port: int) -> int | None:
    """The pid of ``parent``'s Tansu child listening on ``port``, if it has one yet."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"tcp://127.0.0.1:{port}".encode() in cmdline:
            return int(entry.name)
    return None


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("command", ["broker", "run"])
def test_the_embedded_broker_dies_with_a_killed_parent(command: str, tmp_path: Path) -> None:
    """SIGKILL of ``broker`` or ``run`` leaves no Tansu behind holding the port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_EMBEDDED_PORT=str(port),
        BRIDGE_WEB_PORT=str(free_port()),
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
    )
    with open(tmp_path / "out.log", "wb") as log:
        parent = subprocess.Popen(
            [*CLI, command], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    child = None
    try:

        def started() -> bool:
            nonlocal child
            assert parent.poll() is None, (tmp_path / "out.log").read_text()
            child = child or _broker_child(parent.pid, port)
            return child is not None and _listening(port)

        log = tmp_path / "out.log"
        eventually_sync(started, timeout=30, interval=0.02, message=lambda: log.read_text())
        assert child is not None
        broker = child
        parent.kill()
        parent.wait()
        # Gone, or a zombie not reaped yet by whoever inherited it: either way not running.
        eventually_sync(
            lambda: _process_state(broker) in (None, "Z", "X"),
            timeout=10,
            interval=0.02,
            message=f"broker pid {broker} outlived its parent",
        )
        eventually_sync(
            lambda: not _listening(port), timeout=10, interval=0.02, message=f"port {port} taken"
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and _process_state(child) not in (None, "Z", "X"):
            os.kill(child, 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_taken_port_is_reported_with_the_process_holding_it() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = cli(None, "broker", "--port", str(port), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"webhook-bridge: port {port} is already in use by pid {os.getpid()} ("
    )
    assert result.stderr.count("\n") == 1 and "--embedded-port" in result.stderr


async def test_publish_reads_a_large_payload_from_stdin_and_a_file(
    settings, tmp_path: Path
) -> None:
    """200 KB of data does not fit on a command line: ``--data -`` and ``--data @FILE``."""
    data = {"id": "post_big", "title": "Ünïcödé ✓", "content": "x" * 200_000}
    text = json.dumps(data, ensure_ascii=False)
    common = ["publish", "post.created", "--site-id", "site_1", "--user-id", "user_1"]
    piped = subprocess.run(
        [*CLI, *common, "--data", "-"],
        env=settings_env(settings),
        input=text.encode(),
        capture_output=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    path = tmp_path / "data.json"
    path.write_text(text, encoding="utf-8")
    from_file = cli(settings, *common, "--data", f"@{path}")
    ids = [piped.stdout.decode().split()[-1], from_file.stdout.split()[-1]]
    events = {
        event["id"]: event
        for event in (
            json.loads(value) for _, value in await read_topic(settings, settings.events_topic)
        )
    }
    assert sorted(events) == sorted(ids)
    assert all(event["data"] == data for event in events.values())


def test_publish_explains_a_missing_data_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = cli(
        None,
        "publish",
        "post.created",
        "--site-id",
        "s",
        "--user-id",
        "u",
        "--data",
        f"@{missing}",
        "--bootstrap-servers",
        "127.0.0.1:1",
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"webhook-bridge: --data @{missing}: No such file or directory\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal")
def test_run_on_a_terminal_logs_readable_lines_without_start_up_chatter(tmp_path: Path) -> None:
    import pty
    import signal
    import threading

    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_EMBEDDED_PORT=str(free_port()),
        BRIDGE_WEB_PORT=str(web_port),
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
        BRIDGE_EVENT_LOOP="asyncio",
    )
    controller, device = pty.openpty()
    run = subprocess.Popen(
        [*CLI, "run"], env=env, stdin=device, stdout=device, stderr=device, close_fds=True
    )
    os.close(device)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the last process holding it
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{web_port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert run.poll() is None, b"".join(chunks).decode(errors="replace")
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")
            time.sleep(0.1)
        # A record the subscription table skips, with a warning naming its place and reason.
        settings = Settings.load(env=env)
        servers = f"127.0.0.1:{settings.embedded_port}"
        asyncio.run(_produce(servers, settings.subscriptions_topic, b"hook", b"not json"))
        while "invalid subscription record skipped" not in b"".join(chunks).decode(
            "utf-8", "replace"
        ):
            assert run.poll() is None and time.monotonic() < deadline, b"".join(chunks)
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        reader.join(10)
        os.close(controller)
    output = b"".join(chunks).decode(errors="replace")
    assert "worker webhook-bridge: kafka 127.0.0.1:" in output
    assert "Starting..." not in output and "Stopping..." not in output, output
    assert "assigned partitions" not in output, output
    assert not any(line.startswith("{") for line in output.splitlines()), output
    (skipped,) = [line for line in output.splitlines() if "invalid subscription record" in line]
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} WARNING app: invalid subscription record skipped "
        r"reason=malformed_json topic=postion\.webhooks partition=\d+ offset=0 detail=\".+\"\r?",
        skipped,
    ), skipped


async def _produce(servers: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_commands_refuse_topics_that_do_not_exist_and_create_none(make_settings) -> None:
    """A misspelt topic setting read as an empty topic (`webhooks list` listed nothing, exit
    0), and a write made the topic, of the broker's default shape, on a broker creating topics
    on use, as the embedded one does (until 2026-12-07). Each is now one line, exit 1, and no
    topic is made."""
    settings = make_settings()  # its topics not created
    commands = [
        ["webhooks", "list"],
        ["dlq", "list"],
        ["webhooks", "attempts", "wh_1"],
        ["webhooks", "create", "--url", "https://example.com/h", "--events", "*",
         "--site-id", "s1", "--user-id", "u1"],
        ["publish", "post.created", "--site-id", "s1", "--user-id", "u1",
         "--data", '{"id": "p1", "title": "t"}'],
    ]  # fmt: skip
    for command in commands:
        result = cli(settings, *command, check=False)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "does not exist" in result.stderr and "topics apply" in result.stderr, command
        assert result.stderr.count("\n") == 1, result.stderr
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        made = set(await admin.list_topics())
    finally:
        await admin.close()
    ours = {settings.events_topic, settings.subscriptions_topic, settings.deadletter_topic}
    assert not ours & made, ours & made


def test_run_says_in_one_line_what_stops_it_starting() -> None:
    """An unreachable broker, a bootstrap server that is not host:port, a web port taken: until
    2026-12-07 each was a traceback (the port's after the worker had joined its group)."""
    import socket

    closed = free_port()
    unreachable = cli(None, "run", "--bootstrap-servers", f"127.0.0.1:{closed}", check=False)
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().endswith(
        f"cannot reach Kafka at 127.0.0.1:{closed}: KafkaConnectionError"
    ), unreachable.stderr
    assert "Traceback" not in unreachable.stderr + unreachable.stdout
    malformed = cli(None, "run", "--bootstrap-servers", "127.0.0.1:notaport", check=False)
    assert malformed.returncode == 2 and "--bootstrap-servers: invalid value" in malformed.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            None, "run", "--bootstrap-servers", f"127.0.0.1:{closed}", "--web-port", str(port),
            check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port} is already in use by pid" in result.stderr
    assert "--web-port" in result.stderr and "Traceback" not in result.stderr
