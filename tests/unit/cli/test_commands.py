"""bridge.cli: what the management commands refuse before they contact a broker, in one line;
``publish --data`` from a file or stdin; the helper every management command runs through.

The broker address given is a closed port: a command that got as far as connecting would fail
with another message.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.admin import publish
from bridge.cli import commands as cli
from bridge.config import Settings
from bridge.contract.events import Event, build_event
from bridge.contract.payload import delivery_id
from bridge.errors import ConfigError
from bridge.subscriptions.webhook import Webhook
from bridge.worker.embedded import free_port

BROKER = ["--bootstrap-servers", "127.0.0.1:1"]


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main([*argv, *BROKER]) == 1  # as for every other invalid input
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:99999/x", "the port is not a number from 1 to 65535"),
        ("http://xn--/", "the host is not a valid domain name"),  # once an IDNA traceback
        ("https://user:pw@hooks.example/", "credentials"),
        ("ftp://hooks.example/", "the scheme is not http or https"),
    ],
)
def test_webhooks_create_and_update_refuse_an_unusable_url(
    capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    err = refused(capsys, "webhooks", "create", "--url", url, "--events", "*", "--site-id", "s")
    assert err.startswith("webhook-bridge: --url refused (invalid_url): ")
    assert why in err
    assert "pw@" not in err
    err = refused(capsys, "webhooks", "update", "hook", "--url", url)
    assert err.startswith("webhook-bridge: --url refused (invalid_url): ")


@pytest.mark.parametrize(
    "args",
    [
        ["--data", '{"id": "p", "title": "\\ud800"}'],  # escaped in the JSON text
        ["--data", '{"id": "p", "title": "t", "\\udfff": 1}'],
        ["--data", '{"id": "p", "title": "t"}', "--site-id", "\udcff"],  # a non-UTF-8 argv
        ["--data", '{"id": "p", "title": "t"}', "--id", "e\ud800"],
    ],
)
def test_publish_refuses_lone_surrogates(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    base = {"--site-id": "s", "--user-id": "u"}
    for flag in args[::2]:
        base.pop(flag, None)
    extra = [item for pair in base.items() for item in pair]
    err = refused(capsys, "publish", "post.created", *args, *extra)
    assert err.startswith("webhook-bridge: invalid_text: a lone surrogate")
    assert err.isascii()


# ------------------------------------------------------------------------ publish --data


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Events ``publish`` would send (the producer faked)."""
    sent: list[Event] = []

    async def publish_events(settings: Settings, events: Any) -> None:
        sent.extend(events)

    monkeypatch.setattr(publish, "publish_events", publish_events)
    return sent


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _publish(*data: str) -> int:
    return cli.main(["publish", "post.created", "--site-id", "s", "--user-id", "u", *data, *BROKER])


BIG = {"id": "post_1", "title": "Ünïcödé ✓", "content": "x" * 200_000}


def test_publish_reads_data_from_a_file(
    published: list[Event], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(BIG, ensure_ascii=False), encoding="utf-8")
    assert _publish("--data", f"@{path}") == 0
    (event,) = published
    assert event.data == BIG
    assert capsys.readouterr().out == f"published post.created {event.id}\n"


@pytest.mark.parametrize("argument", ["-", "@-"])
def test_publish_reads_data_from_stdin(
    published: list[Event], monkeypatch: pytest.MonkeyPatch, argument: str
) -> None:
    _stdin(monkeypatch, json.dumps(BIG).encode())
    assert _publish("--data", argument) == 0
    assert published[0].data == BIG


def test_publish_inline_data_and_its_default(published: list[Event]) -> None:
    assert _publish("--data", '{"id": "p", "title": "t"}') == 0
    assert published[0].data == {"id": "p", "title": "t"}


def test_publish_refuses_a_missing_file(
    published: list[Event], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    assert _publish("--data", f"@{missing}") == 1
    err = capsys.readouterr().err
    assert err == f"webhook-bridge: --data @{missing}: No such file or directory\n"
    assert published == []


def test_publish_refuses_a_directory(
    published: list[Event], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _publish("--data", f"@{tmp_path}") == 1
    assert capsys.readouterr().err == f"webhook-bridge: --data @{tmp_path}: Is a directory\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": "p",', "malformed_json: --data @{path} is not JSON: Expecting property name"),
        (
            b"\n\n\n",
            "malformed_json: --data @{path} is not JSON: Expecting value at line 4 column 1",
        ),
        (b'{"id": "\xff"}', "malformed_json: --data @{path} is not JSON: invalid UTF-8 at byte 8"),
        (b"[1, 2]", "schema_invalid: --data must be a JSON object"),
    ],
)
def test_publish_refuses_a_file_that_is_not_a_json_object(
    published: list[Event],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    message: str,
) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(content)
    assert _publish("--data", f"@{path}") == 1
    err = capsys.readouterr().err
    assert err.startswith("webhook-bridge: " + message.format(path=path))
    assert err.count("\n") == 1
    assert published == []


def test_publish_refuses_invalid_json_on_stdin(
    published: list[Event], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, b"not json")
    assert _publish("--data", "-") == 1
    err = capsys.readouterr().err
    assert err.startswith("webhook-bridge: malformed_json: --data from stdin is not JSON: ")
    assert err.count("\n") == 1


def test_publish_inline_invalid_json_keeps_its_message(
    published: list[Event], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _publish("--data", "{") == 1
    err = capsys.readouterr().err
    assert err.startswith("webhook-bridge: malformed_json: Expecting property name")


# -------------------------------------------------------------------------- _run_managed


def _parsed(*argv: str) -> Any:
    return cli._parser().parse_args(["webhooks", "list", *argv])


def test_run_managed_uses_the_configured_broker(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Settings] = []

    async def work(settings: Settings) -> str:
        seen.append(settings)
        return "done"

    assert cli._run_managed(_parsed("--bootstrap-servers", "127.0.0.1:1"), work) == "done"
    assert seen[0].kafka_bootstrap_servers == "127.0.0.1:1"
    assert capsys.readouterr().err == ""


def test_run_managed_uses_a_running_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    seen: list[Settings] = []

    async def work(settings: Settings) -> None:
        seen.append(settings)

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert cli._run_managed(_parsed("--embedded-port", str(port)), work) is None
    assert seen[0].kafka_bootstrap_servers == f"127.0.0.1:{port}"
    assert capsys.readouterr().err == f"using the embedded broker at 127.0.0.1:{port}\n"


def test_run_managed_explains_a_missing_broker_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    started: list[Settings] = []

    async def work(settings: Settings) -> None:
        started.append(settings)

    port = free_port()
    with pytest.raises(ConfigError, match="no Kafka broker configured") as info:
        cli._run_managed(_parsed("--embedded-port", str(port)), work)
    assert f"none is listening on 127.0.0.1:{port}" in str(info.value)
    assert started == []


def use_webhooks(monkeypatch: pytest.MonkeyPatch, *webhooks: Webhook) -> None:
    """Management commands find ``webhooks`` in the subscriptions topic (no broker asked)."""
    from bridge.subscriptions import store

    class FixedStore:
        def __init__(self, settings: Settings) -> None:
            pass

        async def __aenter__(self) -> FixedStore:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def load(self) -> dict[str, Any]:
            return {webhook.id: webhook for webhook in webhooks}

    monkeypatch.setattr(store, "WebhookStore", FixedStore)


def test_a_management_command_exits_1_with_its_error_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_webhooks(monkeypatch)
    assert cli.main(["webhooks", "test", "nope", *BROKER]) == 1
    assert capsys.readouterr().err == "webhook-bridge: no webhook 'nope'\n"


def test_a_test_event_names_the_delivery_to_look_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``webhooks test`` prints the event id and the delivery id ``deliveries show`` takes."""
    hook = Webhook(
        id="wh_t",
        name="t",
        url="https://hooks.example/t",
        secret="whsec_" + "t" * 32,
        events=frozenset({"*"}),
        site_id="s1",
        user_id="u1",
    )
    sent = build_event(
        "test.event", {"webhook_id": hook.id, "message": ""}, site_id="s1", user_id="u1"
    )

    async def send_test_event(settings: Settings, webhook: Webhook, *args: Any, **kw: Any) -> Any:
        assert webhook is hook
        return sent

    use_webhooks(monkeypatch, hook)
    monkeypatch.setattr(publish, "send_test_event", send_test_event)
    assert cli.main(["webhooks", "test", hook.id, *BROKER]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"published test.event {sent.id}",
        f"delivery {delivery_id(sent.id, hook.id)}",
    ]


def test_an_attempt_line_shows_the_response_size_and_an_escaped_prefix() -> None:
    """A receiver's bytes are shown, never obeyed: control characters, line breaks, bidi
    overrides, quotes and backslashes come out as escapes; the size is always there."""
    from bridge.attempts.record import Attempt

    base = {
        "delivery_id": "d1",
        "webhook_id": "wh",
        "event_id": "e1",
        "event_type": "post.created",
        "attempt": 1,
        "outcome": "failure",
        "status": 500,
        "error": "http_status",
        "duration_seconds": 0.25,
        "at": "2024-01-15T10:30:00.250Z",
        "next": "retry",
        "next_at": "2024-01-15T10:30:05.250Z",
    }
    older = cli._attempt_line(Attempt.of(base))
    assert older.endswith("0.250s  -  -> retry at 2024-01-15T10:30:05.250Z")
    sized = cli._attempt_line(Attempt.of(base | {"response_bytes": 12}))
    assert "  0.250s  12B  -> retry" in sized and "body" not in sized
    cut = cli._attempt_line(
        Attempt.of(base | {"response_bytes": 65000, "response_truncated": True})
    )
    assert "  65000B+  " in cut
    hostile = '\x1b[2J\x1b]0;x\x07\x00\r\nfake line\u202e\u0085"\\ caf\u00e9'
    line = cli._attempt_line(Attempt.of(base | {"response_bytes": 40, "response_prefix": hostile}))
    assert line.endswith(
        'body "\\x1b[2J\\x1b]0;x\\x07\\x00\\r\\nfake line\\u202e\\x85\\"\\\\ caf\u00e9"'
    )
    assert line.isprintable()
