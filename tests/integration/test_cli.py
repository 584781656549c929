"""The commands a newcomer uses, run as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bridge.config import Settings
from bridge.embedded import free_port
from tests.support.processes import settings_env

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
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{web_port}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert run.poll() is None, (tmp_path / "run.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                await asyncio.sleep(0.1)
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


async def test_broker_command_runs_the_embedded_broker_until_ctrl_c() -> None:
    import socket

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    broker = subprocess.Popen(
        [*CLI, "broker", "--port", str(port)],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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
