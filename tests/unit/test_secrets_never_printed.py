"""No secret is printed: not a Kafka SASL password by aiokafka's DEBUG lines, not the
credentials of a URL by a repr, not a key written where its id goes by a keyring error, not a
mistyped flag's value by the command line's error."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import sys

import pytest
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import ApiVersionResponse_v0, SaslHandShakeResponse_v1

from bridge.cli.commands import main
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.errors import ConfigError
from bridge.redaction import without_userinfo
from bridge.subscriptions.secretbox import Keyring, generate_key
from bridge.subscriptions.store import WebhookStore
from bridge.worker.logs import JsonFormatter
from tests.support.builders import foreign_webhook

SASL_PASSWORD = "saslPassw0rd-never-printed"


async def _fake_broker() -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                message = await reader.readexactly(size)
                api_key, _version, correlation_id = struct.unpack(">hhi", message[:8])
                if api_key == 18:
                    body = ApiVersionResponse_v0(
                        error_code=0, api_versions=[(17, 0, 1), (36, 0, 0), (3, 0, 1)]
                    ).encode()
                elif api_key == 17:
                    body = SaslHandShakeResponse_v1(
                        error_code=0, enabled_mechanisms=["PLAIN"]
                    ).encode()
                else:  # the authenticate request: hang up
                    break
                reply = struct.pack(">i", correlation_id) + body
                writer.write(struct.pack(">i", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


# WebhookStore.__aenter__ does not stop its producer when start() fails (unrelated).
async def test_the_sasl_password_is_not_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A fake broker answers up to the SASL authentication, then hangs up: aiokafka logs
    every request at DEBUG (the authentication's holds the password); those lines are
    dropped, its others are not."""
    server, port = await _fake_broker()
    settings = Settings.load(
        env={},
        overrides={
            "kafka_bootstrap_servers": f"127.0.0.1:{port}",
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "bridge",
            "kafka_sasl_password": SASL_PASSWORD,
            "log_level": "DEBUG",
        },
    )
    assert SASL_PASSWORD not in repr(settings)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(KafkaError):
            async with asyncio.timeout(10):
                async with WebhookStore(settings):
                    pass
    finally:
        server.close()
        await server.wait_closed()
    fmt = JsonFormatter()
    lines = [fmt.format(r) for r in caplog.records]
    hits = [line for line in lines if SASL_PASSWORD in line]
    assert not hits, hits[0]
    assert any(r.name.startswith("aiokafka") and r.levelno == logging.DEBUG for r in caplog.records)


URL_PASSWORD = "urlPassw0rd-never-printed"


def test_a_webhooks_repr_hides_its_urls_credentials() -> None:
    webhook = foreign_webhook(f"https://alice:{URL_PASSWORD}@example.com/hook")
    assert URL_PASSWORD not in repr(webhook)
    assert URL_PASSWORD not in str(webhook)


def test_the_settings_repr_hides_url_credentials() -> None:
    settings = Settings.load(
        env={
            "BRIDGE_API_URL": f"https://ops:{URL_PASSWORD}@127.0.0.1:8080",
            "BRIDGE_API_TOKEN": "wbt_x",
        }
    )
    assert "wbt_x" not in repr(settings)  # the declared secret is hidden...
    assert URL_PASSWORD not in repr(settings)  # ...the password in the URL is not


def test_the_redacted_settings_hide_url_credentials() -> None:
    settings = Settings.load(env={"BRIDGE_API_URL": f"https://ops:{URL_PASSWORD}@127.0.0.1:8080"})
    assert URL_PASSWORD not in repr(settings.redacted())


def test_a_keyring_error_never_quotes_a_key_given_before_its_id() -> None:
    key = generate_key()
    with pytest.raises(ConfigError) as caught:
        Keyring.from_setting(f"{key}:k1")
    assert key not in str(caught.value), str(caught.value)


def test_no_command_prints_the_key_of_a_key_first_keyring() -> None:
    key = generate_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_SECRET_KEYS"] = f"{key}:k1"
    env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # never reached
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "webhooks", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert key not in done.stdout + done.stderr, done.stderr


TOKEN = "wbt_argvToken0123456789"


def test_a_mistyped_flag_is_named_without_its_value(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["webhooks", "list", "--api-tokn", TOKEN])
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err, captured.err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://alice:pw@example.com/hook", "https://***@example.com/hook"),
        ("http://u@h/x", "http://***@h/x"),
        ("ops:pw@kafka:9092,kafka2:9092", "***@kafka:9092,kafka2:9092"),
        ("https://example.com/a@b", "https://example.com/a@b"),
        # A password holding an "@": hidden whole (its tail showed until 2026-12-07).
        ("https://alice:pa@ssTAIL@example.com/hook", "https://***@example.com/hook"),
        ("ops:p@wTAIL@kafka:9092", "***@kafka:9092"),
        ("ops@corp:pwTAIL@kafka:9092", "***@kafka:9092"),
        # Nothing past the URL: another field's address, a query's "@", a mail address.
        (
            '{"url":"https://u:pw@h.example","owner":"ops@corp.example"}',
            '{"url":"https://***@h.example","owner":"ops@corp.example"}',
        ),
        ("https://h/p?x=a@b", "https://h/p?x=a@b"),
        ("see https://a.example/x and me@b.example", "see https://a.example/x and me@b.example"),
        ("https://u:pw@[::1]:8080/x", "https://***@[::1]:8080/x"),
        ("kafka:9092", "kafka:9092"),
    ],
)
def test_url_credentials_are_hidden_and_nothing_else(text: str, shown: str) -> None:
    assert without_userinfo(text) == shown


@pytest.mark.parametrize(
    "argv",
    [
        ["run", f"--api-tok={TOKEN}"],  # --api-tokens or --api-token?
        ["webhooks", "create", "--url", "https://h.example/x", "--events", "post.created",
         f"--sec={TOKEN}"],
    ],
)  # fmt: skip
def test_a_prefix_of_flags_is_named_without_its_value(argv: list[str], capsys) -> None:
    """argparse's "ambiguous option" quoted the flag as typed, value and all (until
    2026-12-05 printed); since 2026-12-07 a prefix is no flag at all (``allow_abbrev``
    off), refused as unrecognized, named without its value."""
    with pytest.raises(SystemExit):
        main(argv)
    captured = capsys.readouterr()
    flag = argv[-1].split("=", 1)[0]
    assert f"unrecognized arguments: {flag} (values not shown)" in captured.err, captured.err
    assert TOKEN not in captured.out + captured.err, captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--delivery-log-max-a", "7d"],
        ["webhooks", "list", "--js"],
    ],
)
def test_a_flag_is_given_whole(argv: list[str], capsys) -> None:
    """Until 2026-12-07 any unambiguous prefix of a flag was taken for it: a flag added later
    could make a working command ambiguous."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_api_servers_parser_names_a_mistyped_flag_without_its_value(capsys) -> None:
    from bridge.api.__main__ import main as api_main

    with pytest.raises(SystemExit):
        api_main(["token", "--name", "n", "--api-tokn", TOKEN])
    captured = capsys.readouterr()
    assert "--api-tokn" in captured.err and TOKEN not in captured.out + captured.err


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_http_libraries_never_log_a_request(level: str, log_format: str) -> None:
    """httpx logs every request's URL at INFO (a token in its query included), httpcore its
    headers at DEBUG: silenced in every format and at every level (the httpx sender's URLs
    were logged on every delivery until 2026-12-05)."""
    from bridge.worker.logs import SILENCED_LOGGERS, logging_config

    config = logging_config(level, log_format)
    for name in SILENCED_LOGGERS:
        assert logging.getLevelName(config["loggers"][name]["level"]) >= logging.WARNING


def test_a_webhook_named_after_its_url_shows_no_credentials_nor_query_token() -> None:
    """A record written elsewhere, named after its URL (the default), password and all: its
    name is shown as its URL is (until 2026-12-05 the name printed the password); logs and
    reprs also leave out the query, which may carry a token."""
    from bridge.api.service import public_view

    url = "https://alice:PassW0rd-secret@example.com/hook?token=QueryTok3n-secret"
    webhook = foreign_webhook(url, name=url)
    shown = repr(webhook)
    assert "PassW0rd-secret" not in shown and "QueryTok3n-secret" not in shown, shown
    assert "https://***@example.com/hook?***" in shown
    answer = jsoncanon.dumps(public_view(webhook)).decode()
    assert "PassW0rd-secret" not in answer, answer
    other = foreign_webhook(url, name="ops:Pw-secret@team")
    assert "Pw-secret" not in jsoncanon.dumps(public_view(other)).decode()


def test_bootstrap_servers_with_credentials_are_refused_without_them() -> None:
    """Kafka takes no credentials in its bootstrap servers, and the clients printed them in
    every connection error (until 2026-12-05): refused, the value not quoted."""
    with pytest.raises((ConfigError, ValueError)) as refused:
        Settings.load({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "ops:Bootstr4p-secret@kafka:9092"})
    assert "Bootstr4p-secret" not in str(refused.value)
    assert "kafka_sasl_username" in str(refused.value)


def test_a_name_that_is_a_url_shows_no_query_token_whatever_the_url() -> None:
    """The default name of a URL past 500 characters is its first 500, and a URL changed
    since leaves the name the old URL: each showed its query token in reprs until
    2026-12-07."""
    long_url = "https://example.com/hook?token=QueryTok3n-secret&pad=" + "x" * 600
    shown = repr(foreign_webhook(long_url, name=long_url[:500]))
    assert "QueryTok3n-secret" not in shown, shown
    stale = foreign_webhook(
        "https://example.com/new?token=New-secret",
        name="HTTPS://example.com/hook?token=Old-secret",  # a scheme is read in any case
    )
    assert "Old-secret" not in repr(stale) and "New-secret" not in repr(stale)


def test_the_settings_repr_hides_url_query_tokens() -> None:
    settings = Settings.load(
        env={
            "BRIDGE_API_URL": "http://127.0.0.1:8080/?token=ApiUrlTok3n-secret",
            "BRIDGE_ADVERTISED_URL": "http://10.0.0.1:6066/?access_token=Adv-secret",
        }
    )
    for shown in (repr(settings), repr(settings.redacted())):
        assert "ApiUrlTok3n-secret" not in shown and "Adv-secret" not in shown, shown


def test_the_api_servers_bootstrap_servers_take_no_credentials(capsys) -> None:
    """``python -m bridge.api serve --bootstrap-servers user:password@...`` was passed on as
    given, and the Kafka clients printed it in their errors (until 2026-12-07): the flag is
    the setting's now, refused as BRIDGE_KAFKA_BOOTSTRAP_SERVERS is."""
    from bridge.api.__main__ import main as api_main

    with pytest.raises(SystemExit):
        api_main(["serve", "--tokens", "t.json", "--bootstrap-servers", "ops:Serve-secret@h:1"])
    captured = capsys.readouterr()
    assert "--bootstrap-servers" in captured.err
    assert "Serve-secret" not in captured.out + captured.err, captured.err


CANARY = "Canary-secret-0123456789"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--api-token", CANARY, "webhooks", "list"], "--api-token"),
        (["--kafka-sasl-password", CANARY, "run"], "--kafka-sasl-password"),
        (["--secret-keys", f"k1:{CANARY}", "run"], "--secret-keys"),
        (["webhooks", "--api-token", CANARY, "list"], "--api-token"),
        (
            [
                "webhooks",
                "--secret",
                CANARY,
                "create",
                "--url",
                "https://h.example/",
                "--events",
                "*",
            ],
            "--secret",
        ),
        (["tokens", "--api-token", CANARY, "add", "--file", "t.json"], None),
        (["--api-tokn", CANARY, "webhooks", "list"], None),  # mistyped: no flag takes it
        ([CANARY], None),
    ],
)
def test_a_secret_flag_before_the_command_is_named_without_its_value(
    argv: list[str], named: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The value of a flag given before its command stands where the command goes, and
    argparse's "invalid choice: 'VALUE'" printed it (until 2026-12-07); the flag is named when
    a command takes it with a value."""
    with pytest.raises(SystemExit):
        main(argv)
    captured = capsys.readouterr()
    assert CANARY not in captured.out + captured.err, captured.err
    assert "invalid choice (not shown" in captured.err, captured.err
    if named is not None:
        assert f"{named} takes a value and goes after the" in captured.err, captured.err


@pytest.mark.parametrize("flag", ["--kafka-sasl-password", "--api-tokens", "--bootstrap-servers"])
def test_the_api_servers_parser_names_a_flag_before_its_command_without_its_value(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.api.__main__ import main as api_main

    with pytest.raises(SystemExit):
        api_main([flag, CANARY, "serve"])
    captured = capsys.readouterr()
    assert CANARY not in captured.out + captured.err, captured.err
    assert f"{flag} takes a value and goes after the command" in captured.err, captured.err
