"""bridge.cli: what the management commands refuse before they contact a broker, in one line;
``publish --data`` from a file or stdin; the helper every management command runs through.

The broker address given is a closed port: a command that got as far as connecting would fail
with another message.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import socket
import sys
from collections.abc import Awaitable, Callable
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
from tests.support.fakes import RecordingProducer, positioned

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


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--site-id", "\udcff", "--user-id", "u"], "argument 4 (after --site-id)"),
        (["--site-id", "s", "--user-id", "u", "--id", "e\ud800"], "argument 8 (after --id)"),
    ],
)
def test_publish_refuses_arguments_that_are_not_utf8(
    capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    """As every command (checked before the arguments are parsed): usage, 2."""
    assert cli.main(["publish", "post.created", *args, *BROKER]) == 2
    err = capsys.readouterr().err
    assert err == f"webhook-bridge: {said} is not valid UTF-8\n"


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


def a_webhook(webhook_id: str, **changes: Any) -> Webhook:
    """A site ``s1`` webhook of account ``u1`` for every event, with ``changes``."""
    fields: dict[str, Any] = {
        "id": webhook_id,
        "name": webhook_id,
        "url": f"https://hooks.example/{webhook_id}",
        "secret": "whsec_" + "w" * 32,
        "events": frozenset({"*"}),
        "site_id": "s1",
        "user_id": "u1",
    }
    return Webhook(**{**fields, **changes})


def use_store(monkeypatch: pytest.MonkeyPatch, **methods: Callable[..., Awaitable[Any]]) -> None:
    """Management commands open a ``WebhookStore`` whose methods are ``methods`` (coroutine
    functions, given the method's arguments): no broker asked."""
    from bridge.subscriptions import store

    class FakeStore:
        def __init__(self, settings: Settings) -> None:
            pass

        async def __aenter__(self) -> FakeStore:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

    for name, method in methods.items():
        setattr(FakeStore, name, staticmethod(method))
    monkeypatch.setattr(store, "WebhookStore", FakeStore)


def use_webhooks(monkeypatch: pytest.MonkeyPatch, *webhooks: Webhook) -> None:
    """Management commands find ``webhooks`` in the subscriptions topic (no broker asked)."""

    async def load(*, reveal: bool = True) -> dict[str, Any]:
        return {webhook.id: webhook for webhook in webhooks}

    use_store(monkeypatch, load=load)


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
    hook = a_webhook("wh_t")
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
    assert "  post.created  attempt 1  failure  " in older
    manual = cli._attempt_line(Attempt.of(base | {"trigger": "manual"}))
    assert "  post.created  manual attempt 1  failure  " in manual
    recovered = cli._attempt_line(Attempt.of(base | {"trigger": "manual", "recovery_id": "r\n1"}))
    assert "  post.created  manual attempt 1 (r\\n1)  failure  " in recovered
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


# ---------------------------------------------------------------- Kafka-direct admin commands


def hook(created_at: str | None = None) -> Webhook:
    extra = {} if created_at is None else {"created_at": created_at}
    return Webhook(
        id="wh",
        name="wh",
        url="https://hooks.example/wh",
        secret="whsec_" + "s" * 32,
        events=frozenset({"*"}),
        site_id="s1",
        user_id="u1",
        extra=extra,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["webhooks", "recover", "wh", "--since", "1000000d"],
        ["webhooks", "recover", "wh", "--since", "2h", "--until", "99999999999d"],
        ["webhooks", "attempts", "wh", "--since", "0001-01-01T00:00:00+01:00"],
        ["webhooks", "attempts", "wh", "--until", "9999-12-31T23:00:00-05:00"],
        ["dlq", "list", "--since", "1000000d"],
        ["dlq", "replay", "--until", "9999-12-31T23:00:00-05:00"],
    ],
)
def test_a_time_outside_the_calendar_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Until 2026-12-06 each was a traceback (``OverflowError``, or ``year 0 is out of
    range`` where the time was shown or sent)."""
    # Through the API too (a closed port: refused before any request).
    api = ["--api-url", "http://127.0.0.1:1", "--api-token", "wbt_t"]
    for extra in ([], api) if argv[0] == "webhooks" else ([],):
        err = refused(capsys, *argv, *extra)
        assert err.startswith("webhook-bridge: not a time: ")


@pytest.mark.parametrize("rate", ["inf", "nan", "0", "0.001", "1001", "-1", "ten"])
def test_recover_takes_a_rate_the_api_would(capsys: pytest.CaptureFixture[str], rate: str) -> None:
    """Until 2026-12-06 ``--rate inf`` was taken: the recovery ran unpaced, and printed
    ``"rate": Infinity``, which is not JSON; ``0`` and ``nan`` failed later."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["webhooks", "recover", "wh", "--since", "2h", "--rate", rate, *BROKER])
    assert exited.value.code == 2
    assert "--rate: must be a number from 0.01 to 1000" in capsys.readouterr().err
    args = cli._parser().parse_args(["webhooks", "recover", "wh", "--since", "2h", "--rate", "1e3"])
    assert args.rate == 1000.0


def test_recover_of_one_delivery_through_the_api_names_its_webhook(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``webhooks recover ID --delivery D`` through the API redelivers D of ID: until
    2026-12-06 ID was not sent, and the API redelivered D whichever webhook it was of. The
    window and rate do not apply there, and the command says so."""
    import httpx

    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202, json={"id": "r1", "state": "done", "enqueued": 1})

    api_answering(monkeypatch, answer)
    assert cli.main(["webhooks", "recover", "wh", "--since", "2h", "--delivery", "d/1"]) == 0
    (request,) = sent
    assert request.method == "POST"
    assert request.url.raw_path == b"/v1/deliveries/d%2F1/redeliver?webhook_id=wh"
    assert dict(request.url.params) == {"webhook_id": "wh"}
    assert "--since, --until and --rate are not used" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("ended", "said"),
    [
        ({"state": "cancelled", "enqueued": 1}, "recovery r1 ended cancelled after 1 of"),
        (
            {"state": "failed", "enqueued": 2, "error": "webhook_inactive"},
            "recovery r1 ended failed (webhook_inactive) after 2 of",
        ),
    ],
)
def test_a_recovery_that_did_not_end_done_ends_the_command_1(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ended: dict[str, Any],
    said: str,
) -> None:
    """Cancelled (``DELETE /v1/recoveries/ID``) or failed (its webhook turned off) while the
    command followed it: until 2026-12-07 the command ended 0, the view on stdout the only
    word of it."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, json={"id": "r1", **ended})

    api = api_answering(monkeypatch, answer)
    assert cli.main(["webhooks", "recover", "wh", "--since", "2h", *api]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["state"] == ended["state"]
    assert err.startswith(f"webhook-bridge: {said}")


def test_redeliver_an_attempt_recorded_in_year_1_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An attempt record's time is whatever a writer put there: until 2026-12-06 one in year 1
    made ``deliveries redeliver`` a traceback (the events were looked for from a time before
    year 1). No event is stamped before the epoch: there is nothing to redeliver."""
    from bridge.admin import activity
    from bridge.attempts.record import Attempt

    attempt = Attempt.of(
        {
            "delivery_id": "d1",
            "webhook_id": "wh",
            "event_id": "e1",
            "event_type": "post.created",
            "attempt": 1,
            "outcome": "failure",
            "status": 500,
            "error": None,
            "duration_seconds": 0.1,
            "at": "0001-01-02T00:00:00.000Z",
            "next": "retry",
        }
    )

    async def find_delivery(settings: Settings, delivery: str, **_: Any) -> list[Attempt]:
        return [attempt]

    monkeypatch.setattr(activity, "find_delivery", find_delivery)
    use_webhooks(monkeypatch, hook())
    err = refused(capsys, "deliveries", "redeliver", "d1")
    assert err == "webhook-bridge: the event of delivery 'd1' is no longer in the source topics\n"


def test_an_unreachable_broker_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    """Until 2026-12-06 every Kafka-direct command ended in a ``KafkaConnectionError``
    traceback, after the client's own log line. The SASL settings are never shown."""
    password = "never-printed-0123456789"
    sasl = [
        "--kafka-security-protocol",
        "SASL_PLAINTEXT",
        "--kafka-sasl-mechanism",
        "PLAIN",
        "--kafka-sasl-username",
        "admin",
        "--kafka-sasl-password",
        password,
    ]
    for argv in (["dlq", "list"], ["webhooks", "stats", "wh"], ["dlq", "list", *sasl]):
        err = refused(capsys, *argv)
        assert err == "webhook-bridge: cannot reach Kafka at 127.0.0.1:1: KafkaConnectionError\n"
        assert password not in err and "admin" not in err


def test_any_other_kafka_error_is_one_line_naming_its_class() -> None:
    from aiokafka.errors import TopicAuthorizationFailedError

    async def work(settings: Settings) -> None:
        raise TopicAuthorizationFailedError()

    with pytest.raises(ConfigError) as caught:
        cli._run_managed(_parsed(*BROKER), work)
    assert str(caught.value) == "Kafka error at 127.0.0.1:1: TopicAuthorizationFailedError"


def test_dlq_list_shows_a_hostile_letter_as_json_the_terminal_does_not_obey(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead letter holds what producers and receivers wrote. Until 2026-12-06 ``dlq list``
    printed its C1 controls (``\\x9b`` is CSI), bidi overrides and line separators raw; they
    are JSON escapes now, as ``webhooks attempts`` escapes a response's body, and the line is
    still the letter's JSON, its other text as it is."""
    from bridge.admin import dead_letters

    hostile = '\x9b2J\u202egnp.exe\u2028\x7f\x1b]0;x\x07\U000e0001 café ✓ "\\'
    letters = [{"delivery_id": "d1", "detail": hostile, hostile: [hostile]}, {"n": 2}]

    async def stream_dead_letters(settings: Settings, where: Any, **_: Any) -> Any:
        for letter in letters:
            yield letter

    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
    assert cli.main(["dlq", "list", *BROKER]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == letters
    assert all(line.isprintable() for line in lines)
    assert "café ✓" in lines[0] and "\\u202e" in lines[0] and "\\udb40\\udc01" in lines[0]


def test_dlq_replay_judges_a_letter_without_a_created_at_by_the_webhooks_now(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A letter written before letters named their webhook's ``created_at`` is replayed only
    while the webhook of its id is the one it was made for; until 2026-12-06 ``dlq replay``
    replayed it to a webhook created since, which took the deleted one's id."""
    from bridge.admin import dead_letters

    event = build_event("post.created", {"id": "p", "title": "t"}, site_id="s1", user_id="u1")
    sent_as = delivery_id(event.id, "wh")
    letters = [
        {
            "webhook_id": "wh",
            "delivery_id": sent_as,
            "event": event.envelope(),
            "attempts": [],
            "dead_lettered_at": "2026-12-04T11:00:00.000Z",
        }
    ]

    async def stream_dead_letters(settings: Settings, where: Any, **_: Any) -> Any:
        for letter in letters:
            yield letter

    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    use_webhooks(monkeypatch, hook(created_at="2026-12-04T12:00:00.000Z"))
    assert cli.main(["dlq", "replay", *BROKER]) == 1  # nothing replayed
    out = capsys.readouterr().out
    assert out == "0 replayed, 1 skipped: 1 webhook gone or replaced\n"
    assert producer.values == []
    use_webhooks(monkeypatch, hook(created_at="2026-12-04T10:00:00.000Z"))
    assert cli.main(["dlq", "replay", *BROKER]) == 0
    assert capsys.readouterr().out == f"replayed {sent_as}\n1 replayed, 0 skipped\n"
    assert b'"webhook_created_at":"2026-12-04T10:00:00.000Z"' in producer.values[0]


@pytest.mark.parametrize(
    ("command", "flag", "expected"),
    [
        (["webhooks", "create", "--url", "https://e.com/h", "--events", "*"], [], False),
        (
            ["webhooks", "create", "--url", "https://e.com/h", "--events", "*"],
            ["--standard-webhooks"],
            True,
        ),
        (
            ["webhooks", "create", "--url", "https://e.com/h", "--events", "*"],
            ["--standard-webhooks", "true"],
            True,
        ),
        (
            ["webhooks", "create", "--url", "https://e.com/h", "--events", "*"],
            ["--standard-webhooks", "false"],
            False,
        ),
        (["webhooks", "update", "wh"], [], None),
        (["webhooks", "update", "wh"], ["--standard-webhooks"], True),
        (["webhooks", "update", "wh"], ["--standard-webhooks", "false"], False),
    ],
)
def test_standard_webhooks_is_one_flag_on_create_and_update(
    command: list[str], flag: list[str], expected: bool | None
) -> None:
    """Until 2026-12-06 create took it bare and update only with a value, each refusing the
    other's spelling."""
    args = cli._parser().parse_args([*command, *flag])
    assert args.standard_webhooks is expected


def test_rotate_secret_says_which_header_the_old_secret_still_signs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """X-Webhook-Signature carries one signature: the new secret's at once. Until 2026-12-06 the
    command said "previous secret valid until", and receivers verifying that header with it
    refused the next delivery."""
    rotated = a_webhook(
        "wh_r",
        standard_webhooks=True,
        previous_secret="whsec_" + "o" * 32,
        previous_secret_expires_at="2026-12-07T18:00:00.000Z",
    )

    async def rotate_secret(webhook_id: str, **kw: Any) -> Webhook:
        return rotated

    use_store(monkeypatch, rotate_secret=rotate_secret)
    assert cli.main(["webhooks", "rotate-secret", "wh_r", "--overlap", "24h", *BROKER]) == 0
    out = capsys.readouterr().out
    assert "X-Webhook-Signature is signed with the new secret from the next delivery on" in out
    assert (
        "previous secret also signs the Standard Webhooks header (webhook-signature) until "
        "2026-12-07T18:00:00.000Z"
    ) in out
    assert "o" * 32 not in out


@pytest.mark.parametrize(
    ("url", "embedded", "warned"),
    [
        ("https://10.0.0.1/x", False, "10.0.0.1 is private"),
        ("http://hooks.example/x", False, "plain http not allowed"),
        ("https://hooks.example/x", False, None),
        # On the embedded broker, as `run` there judges: plain http and loopback allowed.
        ("http://127.0.0.1:8090/x", True, None),
        ("http://10.0.0.1/x", True, "10.0.0.1 is private"),
    ],
)
def test_webhooks_create_warns_of_an_endpoint_the_workers_refuse(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    embedded: bool,
    warned: str | None,
) -> None:
    """Until 2026-12-06 the CLI wrote a webhook at a private address that /v1 refuses (its
    every delivery dead-lettered by the workers), and warned of plain http even on the
    embedded broker, where the workers take it."""

    async def create(**fields: Any) -> Webhook:
        return a_webhook("wh_c", url=fields["url"])

    use_store(monkeypatch, create=create)
    for name in ("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "BRIDGE_ALLOW_HTTP", "BRIDGE_ALLOW_NETWORKS"):
        monkeypatch.delenv(name, raising=False)
    argv = ["webhooks", "create", "--url", url, "--events", "*", "--site-id", "s1"]
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        where = ["--embedded-port", str(port)] if embedded else BROKER
        assert cli.main([*argv, *where]) == 0
    err = capsys.readouterr().err
    if warned is None:
        assert "warning" not in err
    else:
        assert "warning: workers with these settings refuse this endpoint" in err
        assert warned in err


def test_webhooks_list_says_why_the_bridge_turned_a_webhook_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Until 2026-12-06 a webhook the bridge disabled (410, failing) was listed ``inactive``,
    as one its owner turned off; the reason was in ``--json`` only."""

    def made(webhook_id: str, active: bool, reason: str | None) -> Webhook:
        extra = {} if reason is None else {"disabled_reason": reason}
        return a_webhook(webhook_id, active=active, extra=extra)

    use_webhooks(
        monkeypatch,
        made("a_on", True, None),
        made("b_off", False, None),
        made("c_gone", False, "gone"),
        made("d_odd", False, "\x1b[2Jodd"),
    )
    assert cli.main(["webhooks", "list", *BROKER]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = [line.split("  site ")[0].split("  ", 1)[1].strip() for line in lines]
    assert states == ["active", "inactive", "disabled (gone)", 'disabled ("\\u001b[2Jodd")']


def test_deliveries_show_ends_with_the_state_the_api_gives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Until 2026-12-06 the plain listing left the delivery's state out (``/v1`` and
    ``--json`` readers worked it out from the last attempt themselves)."""
    from bridge.admin import activity
    from bridge.attempts.record import Attempt

    def attempt(n: int, status: int, outcome: str, next_step: str | None) -> Attempt:
        return Attempt.of(
            {
                "delivery_id": "d1",
                "webhook_id": "wh",
                "event_id": "e1",
                "event_type": "post.created",
                "attempt": n,
                "at": f"2026-12-06T10:00:0{n}.000Z",
                "status": status,
                "duration_seconds": 0.01,
                "error": None if outcome == "success" else "http_status",
                "outcome": outcome,
                "next": next_step,
            }
        )

    shown: list[list[Attempt]] = [
        [attempt(1, 500, "failure", "retry")],
        [attempt(1, 500, "failure", "retry"), attempt(2, 200, "success", None)],
        [attempt(1, 500, "failure", "dead_letter")],
    ]

    async def find_delivery(settings: Settings, delivery: str, **kw: Any) -> list[Attempt]:
        return shown.pop(0)

    monkeypatch.setattr(activity, "find_delivery", find_delivery)
    ends = []
    for _ in range(3):
        assert cli.main(["deliveries", "show", "d1", *BROKER]) == 0
        ends.append(capsys.readouterr().out.splitlines()[-1])
    assert ends == ["state retrying", "state delivered", "state dead_lettered"]
    shown.append([attempt(1, 500, "failure", "retry")])
    assert cli.main(["deliveries", "show", "d1", "--json", *BROKER]) == 0
    assert "state" not in capsys.readouterr().out.splitlines()[-1][:6]


def test_webhooks_delete_of_an_id_no_webhook_has_fails_as_the_api_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deleted: list[str] = []

    async def load(*, reveal: bool = True) -> dict[str, Webhook]:
        return {"wh_d": a_webhook("wh_d")}

    async def delete(webhook_id: str) -> None:
        deleted.append(webhook_id)

    use_store(monkeypatch, load=load, delete=delete)
    assert cli.main(["webhooks", "delete", "nope", *BROKER]) == 1
    assert capsys.readouterr().err == "webhook-bridge: no webhook 'nope'\n"
    assert cli.main(["webhooks", "delete", "wh_d", *BROKER]) == 0
    assert capsys.readouterr().out == "deleted wh_d\n"
    assert deleted == ["wh_d"]


@pytest.mark.parametrize("command", ["attempts", "stats"])
def test_attempts_and_stats_on_kafka_of_an_id_with_no_webhook_and_no_log_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """As ``/v1`` answers 404 (until 2026-12-06 an unknown id printed nothing, as a webhook not
    called yet does). A webhook with no attempt yet, and a deleted one's log, are shown."""
    import time

    from bridge.admin import activity
    from bridge.attempts.book import ActivityBook
    from tests.unit.attempts.test_attempts import attempt

    now = time.time()
    book = ActivityBook()
    book.add(attempt(now - 60, delivery_id="d1", webhook_id="gone"), now)

    async def read_activity(settings: Settings, webhook_id: str, **_: Any) -> Any:
        return activity.Reading(book.get(webhook_id) or book.empty(), 0)

    monkeypatch.setattr(activity, "read_activity", read_activity)
    use_webhooks(monkeypatch, a_webhook("quiet"))
    assert cli.main(["webhooks", command, "nope", *BROKER]) == 1
    assert capsys.readouterr().err == (
        "webhook-bridge: no webhook 'nope', and no attempt of it is kept\n"
    )
    assert cli.main(["webhooks", command, "quiet", "--json", *BROKER]) == 0
    quiet = capsys.readouterr().out
    assert cli.main(["webhooks", command, "gone", "--json", *BROKER]) == 0
    gone = capsys.readouterr().out
    if command == "attempts":
        assert quiet == ""
        assert json.loads(gone)["delivery_id"] == "d1"
    else:
        assert json.loads(quiet)["windows"]["1h"]["attempts"] == 0
        assert json.loads(gone)["windows"]["1h"]["attempts"] == 1


def three_letters() -> list[dict[str, Any]]:
    """Three dead letters of webhook ``wh``, events ``evt_0`` to ``evt_2``."""
    event = build_event("post.created", {"id": "p", "title": "t"}, site_id="s1", user_id="u1")
    return [
        {
            "webhook_id": "wh",
            "delivery_id": delivery_id(f"evt_{n}", "wh"),
            "event": {**event.envelope(), "id": f"evt_{n}"},
            "attempts": [],
            "dead_lettered_at": "2026-12-04T11:00:00.000Z",
            "webhook_created_at": "2026-12-04T10:00:00.000Z",
        }
        for n in range(3)
    ]


def test_dlq_replay_reads_the_webhooks_once_without_their_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It judges the webhooks, never signs with them: a shell without the workers'
    ``secret_keys`` finds an encrypted webhook as they do (until 2026-12-06 it seemed gone,
    and its letters were skipped)."""
    from bridge.admin import dead_letters

    letters = three_letters()

    async def stream_dead_letters(settings: Settings, where: Any, **_: Any) -> Any:
        for letter in letters:
            yield letter

    loads: list[bool] = []

    async def load(*, reveal: bool = True) -> dict[str, Any]:
        loads.append(reveal)
        webhook = hook(created_at="2026-12-04T10:00:00.000Z")
        return {webhook.id: webhook}

    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    use_store(monkeypatch, load=load)
    assert cli.main(["dlq", "replay", *BROKER]) == 0
    assert capsys.readouterr().out.endswith("3 replayed, 0 skipped\n")
    assert loads == [False] and len(producer.values) == 3


def test_dlq_replay_words_every_reason_a_letter_is_skipped() -> None:
    from bridge.admin.dead_letters import SKIP_REASONS, ReplayReport
    from bridge.cli.commands import _SKIP_WORDS, _skips

    assert tuple(_SKIP_WORDS) == SKIP_REASONS
    report = ReplayReport()
    assert _skips(report) == ""
    report.skip("webhook_off")
    report.skip("webhook_off")
    report.skip("already_replayed")
    report.skip("wrong_delivery_id")
    assert _skips(report) == (
        ": 2 webhook turned off (turn it on, then replay); 1 a delivery's further letter; "
        "1 a delivery id its event and webhook do not make"
    )


def api_answering(monkeypatch: pytest.MonkeyPatch, answer: Callable[[Any], Any]) -> list[str]:
    """Commands given ``--api-url`` talk to ``answer`` (a MockTransport handler)."""
    import httpx

    from bridge.cli.api_client import ApiClient

    monkeypatch.setattr(
        cli,
        "_api",
        lambda args: ApiClient(
            "http://api.test", "t", retry_for=0.0, transport=httpx.MockTransport(answer)
        ),
    )
    return ["--api-url", "http://api.test", "--api-token", "t"]


@pytest.mark.parametrize(
    "argv",
    [
        ["webhooks", "stats", "wh"],
        ["webhooks", "attempts", "wh"],
        ["webhooks", "recoveries", "wh"],
        ["deliveries", "show", "d1"],
        ["deliveries", "redeliver", "d1"],
        ["webhooks", "recover", "wh", "--since", "1h"],
    ],
)
@pytest.mark.parametrize("body", [{}, [], {"items": 5, "windows": 1, "attempts": None}, "x"])
def test_an_api_answer_of_another_shape_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    body: Any,
) -> None:
    import httpx

    flags = api_answering(monkeypatch, lambda request: httpx.Response(200, json=body))
    assert cli.main([*argv, *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_what_an_api_says_is_shown_never_obeyed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hostile server's problem title and the fields of its attempts reach the terminal
    escaped (until 2026-12-07 an OSC or a bidi override went through as they came)."""
    import httpx

    hostile = "\x1b]52;c;cGF3bmVk\x07\x9b2J\u202e\n"
    problem = {"title": f"no{hostile}", "detail": "x"}
    flags = api_answering(monkeypatch, lambda request: httpx.Response(404, json=problem))
    assert cli.main(["webhooks", "stats", "wh", *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\\x1b]52" in err
    assert all(c.isprintable() for c in err.rstrip("\n"))
    attempt = {
        "delivery_id": f"d{hostile}",
        "webhook_id": "wh",
        "event_id": "e",
        "event_type": f"post.created{hostile}",
        "attempt": 1,
        "outcome": "failure",
        "status": 500,
        "error": hostile,
        "at": "2026-01-15T10:30:00.000Z",
        "duration_seconds": 0.1,
        "next": hostile,
    }
    flags = api_answering(
        monkeypatch,
        lambda request: httpx.Response(200, json={"items": [attempt], "next_cursor": None}),
    )
    assert cli.main(["webhooks", "attempts", "wh", *flags]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and all(c.isprintable() for c in out.rstrip("\n")), out


@pytest.mark.parametrize(
    "command",
    [
        ["webhooks", "create", "--url", "https://e.com/h", "--events", "*", "--site-id", "s1"],
        ["webhooks", "update", "wh_s"],
        ["webhooks", "rotate-secret", "wh_s"],
    ],
)
def test_an_empty_secret_is_refused_as_a_flag_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Until 2026-12-07 ``create`` and ``rotate-secret`` given ``--secret ""`` (an unset
    ``$VAR``) exited 0 having stored a random secret they never printed, as they print only
    one they made: a rotation so locked out every receiver. ``receive`` refused it already."""
    written: list[str] = []

    async def write(*args: Any, **kw: Any) -> Webhook:
        written.append("written")
        return a_webhook("wh_s")

    use_store(monkeypatch, create=write, update=write, rotate_secret=write)
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--secret", "", *BROKER])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith("argument --secret: a secret is not empty")
    assert written == []


#: Text a terminal would act on: CSI as a C1 control, a bidi override, an OSC title sequence.
HOSTILE = "wh_\x9b2J\u202egnp\x1b]0;pwned\x07\u2028"


def test_webhooks_list_json_shows_hostile_text_never_obeyed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Until 2026-12-07 ``webhooks list --json`` printed a record's C1 controls and bidi
    overrides raw (``ensure_ascii=False``), as ``dlq list`` did before; its text is otherwise
    as it is."""
    use_webhooks(monkeypatch, a_webhook(HOSTILE, name=f"café {HOSTILE}", user_id=HOSTILE))
    assert cli.main(["webhooks", "list", "--json", *BROKER]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.isprintable() and "café" in line and "\\u009b" in line and "\\u202e" in line
    record = json.loads(line)
    assert (record["id"], record["user_id"], record["name"]) == (
        HOSTILE,
        HOSTILE,
        f"café {HOSTILE}",
    )
    assert record["secret"] == "***"


def test_the_webhook_commands_echo_an_id_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--id $'wh_\\e]0;pwned\\a'``: until 2026-12-07 create, update, rotate-secret and delete
    echoed the id raw, and the terminal took it as a title."""

    async def made(*args: Any, **kw: Any) -> Webhook:
        return a_webhook(HOSTILE)

    async def load(*, reveal: bool = True) -> dict[str, Webhook]:
        return {HOSTILE: a_webhook(HOSTILE)}

    async def delete(webhook_id: str) -> None:
        pass

    use_store(monkeypatch, create=made, update=made, rotate_secret=made, load=load, delete=delete)
    create = ["webhooks", "create", "--url", "https://e.com/h", "--events", "*", "--site-id", "s1"]
    commands = [
        [*create, "--id", HOSTILE],
        ["webhooks", "update", HOSTILE, "--name", "n"],
        ["webhooks", "rotate-secret", HOSTILE],
        ["webhooks", "delete", HOSTILE],
    ]
    for command in commands:
        assert cli.main([*command, *BROKER]) == 0
        out = capsys.readouterr().out
        assert all(line.isprintable() for line in out.splitlines()), out
        assert "wh_\\x9b2J\\u202egnp\\x1b]0;pwned\\x07\\u2028" in out


def test_webhooks_list_and_delete_need_no_secret_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listing and deleting never use a secret, so they read the webhooks without decrypting
    them: until 2026-12-07, without ``--secret-keys`` (or with a wrong key), ``list`` left out a
    webhook whose secret it could not decrypt, exiting 0, and ``delete`` said there was no such
    webhook while ``create --id`` said it existed."""
    stored = a_webhook("wh_enc", secret="enc:v1:k1:" + "c" * 40)
    deleted: list[str] = []

    async def load(*, reveal: bool = True) -> dict[str, Webhook]:
        # As WebhookStore.load without the key: the record is skipped when decrypted.
        return {} if reveal else {stored.id: stored}

    async def delete(webhook_id: str) -> None:
        deleted.append(webhook_id)

    use_store(monkeypatch, load=load, delete=delete)
    assert cli.main(["webhooks", "list", *BROKER]) == 0
    assert capsys.readouterr().out.startswith("wh_enc  active    site s1")
    assert cli.main(["webhooks", "list", "--json", *BROKER]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["secret"] == "***" and "enc:v1" not in out
    assert cli.main(["webhooks", "delete", "wh_enc", *BROKER]) == 0
    assert capsys.readouterr().out == "deleted wh_enc\n"
    assert deleted == ["wh_enc"]


def test_webhooks_list_hides_a_url_password_holding_a_quote_or_a_space(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record written elsewhere, named after its URL: its password ended at a quote, an
    angle bracket or a space for the redaction, which showed it whole (until 2026-12-07)."""
    url = "https://bob:Pw'<x y-secret@hooks.example/in"
    stored = a_webhook("wh_q", url=url, name=url)

    async def load(*, reveal: bool = True) -> dict[str, Webhook]:
        return {stored.id: stored}

    use_store(monkeypatch, load=load)
    for argv in ([], ["--json"]):
        assert cli.main(["webhooks", "list", *argv, *BROKER]) == 0
        out = capsys.readouterr().out
        assert "https://***@hooks.example/in" in out and "-secret" not in out, out


def test_webhooks_test_needs_no_secret_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test event, a recovery and a redelivery name the webhook and write records without
    its secret: until 2026-12-07 each read the webhooks decrypting them, and said there was
    no webhook of an encrypted secret without ``--secret-keys``."""
    stored = a_webhook("wh_enc", secret="enc:v1:k1:" + "c" * 40)
    sent = build_event(
        "test.event", {"webhook_id": stored.id, "message": ""}, site_id="s1", user_id="u1"
    )

    async def load(*, reveal: bool = True) -> dict[str, Webhook]:
        return {} if reveal else {stored.id: stored}

    async def send_test_event(settings: Settings, webhook: Webhook, *args: Any, **kw: Any) -> Any:
        assert webhook is stored
        return sent

    use_store(monkeypatch, load=load)
    monkeypatch.setattr(publish, "send_test_event", send_test_event)
    assert cli.main(["webhooks", "test", "wh_enc", *BROKER]) == 0
    assert capsys.readouterr().out.startswith(f"published test.event {sent.id}")


def replaying(monkeypatch: pytest.MonkeyPatch, *webhooks: Webhook) -> list[Any]:
    """``dlq replay`` reads three letters of webhook ``wh`` (events ``evt_0`` to ``evt_2``) and
    finds ``webhooks``; the list of what it writes is returned."""
    from bridge.admin import dead_letters

    letters = three_letters()

    async def stream_dead_letters(settings: Settings, where: Any, **_: Any) -> Any:
        for letter in letters:
            if where.delivery_id in (None, letter["delivery_id"]) and where.webhook_id in (
                None,
                letter["webhook_id"],
            ):
                yield letter

    producer = RecordingProducer()
    monkeypatch.setattr(dead_letters, "stream_positioned_letters", positioned(stream_dead_letters))
    monkeypatch.setattr(dead_letters, "AIOKafkaProducer", producer)
    use_webhooks(monkeypatch, *webhooks)
    return producer.sent


def test_dlq_replay_that_replays_nothing_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``deliveries redeliver`` does when nothing is sent: until 2026-12-07 a replay of an
    inactive webhook's letters ("0 replayed, 3 skipped") and one of a delivery with no letter
    exited 0. A replay matching no letter at all (no --delivery) still exits 0."""
    off = dataclasses.replace(hook(created_at="2026-12-04T10:00:00.000Z"), active=False)
    written = replaying(monkeypatch, off)
    assert cli.main(["dlq", "replay", "--webhook", "wh", *BROKER]) == 1
    captured = capsys.readouterr()
    assert captured.out == "0 replayed, 3 skipped: 3 webhook turned off (turn it on, then replay)\n"
    assert captured.err == (
        "webhook-bridge: nothing replayed: every matching dead letter was skipped\n"
    )
    assert cli.main(["dlq", "replay", "--delivery", "nope", *BROKER]) == 1
    captured = capsys.readouterr()
    assert captured.out == "0 replayed, 0 skipped\n"
    assert captured.err == "webhook-bridge: no dead letter of delivery 'nope' to replay\n"
    assert cli.main(["dlq", "replay", "--webhook", "none", *BROKER]) == 0
    assert capsys.readouterr().out == "0 replayed, 0 skipped\n"
    assert written == []

    written = replaying(monkeypatch, hook(created_at="2026-12-04T10:00:00.000Z"))
    target = delivery_id("evt_1", "wh")
    assert cli.main(["dlq", "replay", "--delivery", target, *BROKER]) == 0
    assert capsys.readouterr().out == f"replayed {target}\n1 replayed, 0 skipped\n"
    assert len(written) == 1


@pytest.mark.parametrize("command", ["list", "replay"])
def test_dlq_refuses_an_until_not_after_since(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """As /v1/dead-letters answers 400 (until 2026-12-07 taken, matching nothing)."""
    err = refused(capsys, "dlq", command, "--since", "1d", "--until", "2d")
    assert err == "webhook-bridge: --until must be after --since\n"
    err = refused(capsys, "dlq", command, "--since", "2026-01-01", "--until", "2026-01-01")
    assert err == "webhook-bridge: --until must be after --since\n"


def exit_and_error(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """What ``webhook-bridge ARGV`` exits with (a flag error too) and the last line it wrote to
    stderr, having checked that it wrote no traceback."""
    try:
        code = cli.main([*argv])
    except SystemExit as exc:  # argparse's flag errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n")
    return code, err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["webhooks", "rotate-secret", "wh", "--overlap=--"], "--overlap: not a duration: '--'"),
        (["webhooks", "attempts", "wh", "--since=--"], "not a time: '--'"),
        (["dlq", "list", "--since=--"], "not a time: '--'"),
        (["dlq", "replay", "--until=--"], "not a time: '--'"),
        (
            ["publish", "post.created", "--site-id", "s", "--user-id", "u", "--data=--"],
            "malformed_json",
        ),
        (["webhooks", "attempts", "wh", "--limit=--"], "argument --limit: invalid value"),
        (["webhooks", "update", "wh", "--active=--"], "argument --active: invalid value"),
        (["receive", "--port=--", "--secret", "s"], "argument --port: must be a port number"),
    ],
)
def test_an_option_given_as_double_dash_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    """Python 3.11's argparse gives ``--opt=--`` an empty list, whatever the option's type:
    until 2026-12-07 each of these ended in a TypeError or AttributeError traceback. The value
    is the text ``--`` now, judged as any other."""
    code, line = exit_and_error(capsys, *argv, *(BROKER if argv[0] != "receive" else []))
    assert code in (1, 2)
    assert said in line


@pytest.mark.parametrize("port", ["0", "99999", "-1", "http"])
def test_receive_refuses_a_port_that_is_none(capsys: pytest.CaptureFixture[str], port: str) -> None:
    """Until 2026-12-07 ``receive --port 99999`` was an OverflowError traceback."""
    code, line = exit_and_error(capsys, "receive", "--port", port, "--secret", "s")
    assert code == 2
    assert line.endswith("argument --port: must be a port number from 1 to 65535")


def test_receive_on_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Until 2026-12-07 an OSError traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = exit_and_error(capsys, "receive", "--port", str(port), "--secret", "s")
    assert code == 1
    assert line.startswith(f"webhook-bridge: cannot listen on 127.0.0.1:{port}: ")


def capturing_store(monkeypatch: pytest.MonkeyPatch, *webhooks: Webhook) -> list[Any]:
    """Management commands open the real ``WebhookStore`` over ``webhooks``, whose records are
    captured here (the list returned) instead of being sent: no broker asked."""
    from bridge.subscriptions import store

    sent: list[Any] = []

    class Capturing(store.WebhookStore):
        async def __aenter__(self) -> Capturing:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

        async def load(self, *, reveal: bool = True) -> dict[str, Webhook]:
            return {webhook.id: webhook for webhook in webhooks}

        async def _send(self, webhook_id: str, value: bytes | None) -> None:
            sent.append((webhook_id, None if value is None else json.loads(value)))

    monkeypatch.setattr(store, "WebhookStore", Capturing)
    return sent


def test_rotate_secret_refuses_an_overlap_of_a_webhook_without_standard_headers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``X-Webhook-Signature`` carries the current secret alone, so no delivery of a webhook
    without Standard Webhooks headers would carry the previous one: refused, as the API
    refuses it (409 overlap_needs_standard_webhooks). Until 2026-12-07 the overlap was written,
    the command said no delivery carried it, and a later overlap was refused as running."""
    sent = capturing_store(monkeypatch, a_webhook("wh_r", secret="o" * 32))
    code, line = exit_and_error(
        capsys, "webhooks", "rotate-secret", "wh_r", "--overlap", "24h", *BROKER
    )
    assert code == 1 and sent == []
    assert line.startswith("webhook-bridge: overlap_needs_standard_webhooks: no header would ")
    assert "X-Webhook-Signature holds one signature" in line
    # Without an overlap it rotates, and says nothing of a previous secret.
    assert cli.main(["webhooks", "rotate-secret", "wh_r", *BROKER]) == 0
    out = capsys.readouterr().out
    [(_, written)] = sent
    assert "previous_secret" not in written and f"secret  {written['secret']}" in out
    assert "previous" not in out and "o" * 32 not in out


def test_rotate_secret_with_an_overlap_of_a_standard_webhook_says_until_when(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    sent = capturing_store(monkeypatch, a_webhook("wh_s", secret=old, standard_webhooks=True))
    assert cli.main(["webhooks", "rotate-secret", "wh_s", "--overlap", "24h", *BROKER]) == 0
    out = capsys.readouterr().out
    [(_, written)] = sent
    assert written["previous_secret"] == old and written["secret"].startswith("whsec_")
    assert out.splitlines()[-1] == (
        "previous secret also signs the Standard Webhooks header (webhook-signature) until "
        f"{written['previous_secret_expires_at']}"
    )
    assert old not in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["create", "--url", "https://e.example/h", "--events", "*", "--site-id", "s",
          "--rate-limit", "1e-6"], "at least 0.01"),
        (["create", "--url", "https://e.example/h", "--events", "*", "--site-id", "s",
          "--rate-limit", "0"], "at least 0.01"),
        (["create", "--url", "https://e.example/h", "--events", "*", "--site-id", "s",
          "--rate-limit", "nan"], "at least 0.01"),
        (["update", "wh", "--rate-limit", "1e-320"], "at least 0.01 (0: no limit)"),
        (["update", "wh", "--rate-limit", "inf"], "at least 0.01 (0: no limit)"),
    ],
)  # fmt: skip
def test_a_rate_limit_below_the_lowest_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    """Until 2026-12-07 any positive rate was written, and the webhook's deliveries after its
    first were deferred until dead-lettered (at 1e-320 the wait was infinite)."""
    sent = capturing_store(monkeypatch, a_webhook("wh"))
    code, line = exit_and_error(capsys, "webhooks", *argv, *BROKER)
    assert code == 2 and said in line and "--rate-limit" in line
    assert sent == []


def test_a_rate_limit_at_the_lowest_is_written_and_0_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = capturing_store(monkeypatch, a_webhook("wh", rate_limit=5.0))
    assert cli.main(["webhooks", "update", "wh", "--rate-limit", "0.01", *BROKER]) == 0
    assert cli.main(["webhooks", "update", "wh", "--rate-limit", "0", *BROKER]) == 0
    assert [written.get("rate_limit") for _, written in sent] == [0.01, None]


def test_list_shows_no_overlap_that_has_ended_or_that_no_header_carries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the API: until 2026-12-07 an overlap's end was listed long after it had passed."""
    later = "2999-01-01T00:00:00.000Z"
    previous = "whsec_" + base64.b64encode(b"p" * 32).decode()
    use_webhooks(
        monkeypatch,
        a_webhook("ended", standard_webhooks=True, previous_secret=previous,
                  previous_secret_expires_at="2026-01-01T00:00:00.000Z"),
        a_webhook("plain", previous_secret="p" * 32, previous_secret_expires_at=later),
        a_webhook("running", standard_webhooks=True, previous_secret=previous,
                  previous_secret_expires_at=later),
    )  # fmt: skip
    assert cli.main(["webhooks", "list", "--json", *BROKER]) == 0
    listed = {w["id"]: w for w in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "previous_secret_expires_at" not in listed["ended"]
    assert "previous_secret" not in listed["ended"]
    assert "previous_secret_expires_at" not in listed["plain"]
    assert listed["running"]["previous_secret_expires_at"] == later
    assert listed["running"]["previous_secret"] == "***"


def test_run_checks_every_address_of_an_empty_web_host() -> None:
    """An empty web host is every address, IPv4 and IPv6, to the worker's server (asyncio):
    until 2026-12-07 run's port check asked getaddrinfo for "" and refused to start ("Name or
    service not known"). A port taken on either family is named."""
    port = free_port()
    settings = Settings.load(env={"BRIDGE_WEB_HOST": "", "BRIDGE_WEB_PORT": str(port)})
    cli._check_web_port(settings)
    if not socket.has_ipv6:
        return
    with socket.socket(socket.AF_INET6) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            taken.bind(("::", port))
        except OSError:
            pytest.skip("no IPv6 on this machine")
        taken.listen()
        with pytest.raises(ConfigError, match=f"port {port} is already in use"):
            cli._check_web_port(settings)


@pytest.mark.parametrize(
    "command",
    [
        ["deliveries", "redeliver", "d1"],
        ["webhooks", "recover", "wh", "--since", "2h", "--delivery", "d1"],
    ],
)
def test_a_redelivery_its_webhook_no_longer_gets_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Until 2026-12-07 a redelivery that sent nothing because the webhook no longer gets the
    event (its events changed, or it is off) said the event had left the source topics."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        ended = {"id": "r1", "state": "failed", "enqueued": 0, "error": "not_receiving"}
        return httpx.Response(202, json=ended)

    api_answering(monkeypatch, answer)
    assert cli.main([*command, *BROKER]) == 1
    err = capsys.readouterr().err.splitlines(keepends=True)[-1]
    assert err == (
        "webhook-bridge: the webhook of delivery 'd1' no longer gets its event (its events, "
        "site or account changed, or it is off): nothing sent\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["webhooks", "create", "--id", "", "--url", "https://h.example/", "--site-id", "s"],
        ["publish", "post.created", "--site-id", "s", "--user-id", "u", "--id", ""],
    ],
)
def test_an_empty_id_is_refused_not_made_anew(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """An unset ``$ID``: until 2026-12-07 a new webhook (or event) each time, with an id of its
    own: one event reached an endpoint under two delivery ids."""
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, *BROKER])
    assert exited.value.code == 2
    assert "an id is not empty" in capsys.readouterr().err


def test_a_test_message_longer_than_the_api_takes_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["webhooks", "test", "wh", "--message", "m" * 1001, *BROKER])
    assert exited.value.code == 2
    assert "--message: at most 1000 characters" in capsys.readouterr().err
    args = cli._parser().parse_args(["webhooks", "test", "wh", "--message", "m" * 1000])
    assert len(args.message) == 1000


def test_data_larger_than_a_record_is_refused_having_read_no_more(
    capsys: pytest.CaptureFixture[str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--data @/dev/zero`` grew the command 200-300 MB a second (until 2026-12-07)."""
    import io

    big = tmp_path / "big.json"
    big.write_bytes(b" " * (cli.MAX_DATA_BYTES + 1))
    argv = ["publish", "post.created", "--site-id", "s", "--user-id", "u"]
    err = refused(capsys, *argv, "--data", f"@{big}")
    assert f"--data @{big} is larger than 1,048,576 bytes" in err

    class Endless(io.RawIOBase):
        read_so_far = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            Endless.read_so_far += len(buffer)
            buffer[:] = b" " * len(buffer)
            return len(buffer)

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BufferedReader(Endless())))
    err = refused(capsys, *argv, "--data", "-")
    assert "--data from stdin is larger than" in err
    assert Endless.read_so_far < 2 * cli.MAX_DATA_BYTES


def test_an_argument_that_is_not_utf8_is_refused_unshown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bytes that are not UTF-8 (held as lone surrogates): until 2026-12-07 a traceback
    writing them to Kafka or a URL, or a token name the API could never use."""
    secretish = "s3cr\udcff"
    assert cli.main(["dlq", "list", "--webhook", secretish, *BROKER]) == 2
    err = capsys.readouterr().err
    assert err == "webhook-bridge: argument 4 (after --webhook) is not valid UTF-8\n"
    assert "s3cr" not in err


def test_a_bootstrap_host_the_clients_cannot_encode_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An empty label, or one of 64 characters: until 2026-12-07 an idna traceback, ``run``
    too. A flag's value is refused unshown (it may hold a secret); the environment's names
    what is wrong."""
    from bridge.errors import ConfigError

    for host in ("kafka..internal", "a" * 64 + ".example"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["dlq", "list", "--bootstrap-servers", f"{host}:9092"])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "--bootstrap-servers: invalid value" in err and "Traceback" not in err
        with pytest.raises(ConfigError, match="not a host name"):
            Settings.load(env={"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": f"{host}:9092"})


def test_an_id_too_long_for_a_url_is_one_line_through_the_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx's InvalidURL is no HTTPError: until 2026-12-07 a traceback."""
    import httpx

    api = api_answering(monkeypatch, lambda request: httpx.Response(200, json={}))
    assert cli.main(["webhooks", "stats", "w" * 100_000, *api]) == 1
    err = capsys.readouterr().err
    assert err.startswith("webhook-bridge: no request made: its URL is too long")
