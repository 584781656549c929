"""``webhook-bridge run`` takes every setting as a flag, as docs/configuration.md lists them."""

from __future__ import annotations

import dataclasses

from bridge.cli import commands as cli
from bridge.config import Settings


def test_run_accepts_every_setting() -> None:
    accepted = set(cli.KAFKA_SETTINGS + cli.TOPIC_SETTINGS + cli.WORKER_SETTINGS)
    missing = [f.name for f in dataclasses.fields(Settings) if f.name not in accepted]
    assert missing == []


def test_new_worker_flags_parse() -> None:
    args = cli._parser().parse_args(
        ["run", "--event-loop", "asyncio", "--kafka-output-linger", "2ms"]
    )
    settings = cli._settings(args)
    assert settings.event_loop == "asyncio"
    assert settings.kafka_output_linger == 0.002
