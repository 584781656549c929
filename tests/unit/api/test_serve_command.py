"""``python -m bridge.api serve``: the flags it takes are the settings it reads."""

from __future__ import annotations

import pytest

from bridge.api.__main__ import SERVE_IGNORES, parser, serve_settings
from bridge.config import Section, Settings, add_section_flags
from bridge.errors import ConfigError


def _flag(name: str) -> str:
    return Settings.specs()[name].flag


@pytest.mark.parametrize("name", SERVE_IGNORES)
def test_serve_refuses_the_flags_of_settings_only_a_worker_reads(name: str, capsys) -> None:
    """Until 2026-12-07 ``serve --role deliver`` or ``--delivery-log false`` was taken and
    ignored in silence."""
    with pytest.raises(SystemExit) as ended:
        parser().parse_args(["serve", "--tokens", "t.json", _flag(name), "x"])
    assert ended.value.code == 2
    said = capsys.readouterr().err
    # (until 2026-12-07 ``--delivery-log`` was refused as "ambiguous", a prefix of two
    # flags serve takes)
    assert "unrecognized arguments" in said, said


def test_serve_takes_the_flags_of_the_settings_it_reads() -> None:
    args = parser().parse_args(
        ["serve", "--tokens", "t.json", "--bootstrap-servers", "k:1", "--attempts-topic", "a"]
    )
    settings = serve_settings(args, {})
    assert (settings.kafka_bootstrap_servers, settings.attempts_topic) == ("k:1", "a")
    assert str(settings.api_tokens) == "t.json"


def test_serve_runs_in_the_api_role_whatever_the_environment_says() -> None:
    """Its loop shares nothing with deliveries: a worker's ``BRIDGE_ROLE`` gave it a worker's
    share of the loop for topic scans."""
    args = parser().parse_args(["serve", "--tokens", "t.json"])
    assert serve_settings(args, {"BRIDGE_ROLE": "deliver"}).role == "api"
    assert serve_settings(args, {"BRIDGE_ROLE": "all"}).role == "api"


def test_serve_needs_a_token_file() -> None:
    with pytest.raises(ConfigError, match="token file"):
        serve_settings(parser().parse_args(["serve"]), {})


def test_left_out_settings_must_exist() -> None:
    import argparse

    with pytest.raises(ValueError, match="no such setting: rol"):
        add_section_flags(argparse.ArgumentParser(), [Section.ACTIVITY], without=["rol"])


@pytest.mark.parametrize("port", ["99999", "-1", "0", "http"])
def test_serve_refuses_a_port_that_is_none(port: str, capsys) -> None:
    """Until 2026-12-07 an ``OverflowError`` traceback (99999, -1)."""
    with pytest.raises(SystemExit) as ended:
        parser().parse_args(["serve", "--tokens", "t.json", "--port", port])
    assert ended.value.code == 2
    assert "--port: must be a port number from 1 to 65535" in capsys.readouterr().err


def test_serve_on_an_address_it_cannot_take_is_one_line(monkeypatch, capsys) -> None:
    """A port in use, or a host not the machine's: until 2026-12-07 an ``OSError``
    traceback."""
    import errno

    from bridge.api import __main__ as serve_main

    async def refused(args: object) -> None:
        raise OSError(errno.EADDRINUSE, "address already in use")

    monkeypatch.setattr(serve_main, "_serve", refused)
    assert serve_main.main(["serve", "--tokens", "t.json", "--port", "8081"]) == 1
    assert capsys.readouterr().err == "error: 127.0.0.1:8081: address already in use\n"
