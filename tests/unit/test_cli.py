"""bridge.cli: what the management commands refuse before they contact a broker, in one line.

The broker address given is a closed port: a command that got as far as connecting would fail
with another message.
"""

from __future__ import annotations

import pytest

from bridge.cli import commands as cli

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
