"""bridge.worker.logs: JSON and text lines carry the same fields, never a secret; auto picks text
only on a terminal; the text format hides Faust's start-up narration below DEBUG."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.worker.logs import (
    CHATTY_LOGGERS,
    FIELDS,
    QUIET_LOGGERS,
    SILENCED_LOGGERS,
    JsonFormatter,
    TextFormatter,
    logging_config,
    resolve_log_format,
)

CANARY = "s3cret-CANARY-4f1d"


def _record(
    message: str = "delivery failed",
    *,
    name: str = "bridge.delivery.pipeline",
    level: int = logging.WARNING,
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, message, (), exc_info)
    record.__dict__.update(extra)
    return record


# ------------------------------------------------------------------------------ text lines


def test_a_text_line_has_time_level_short_logger_message_and_fields() -> None:
    record = _record(delivery_id="d-1", webhook_id="hook_1", attempt=2, status=503)
    record.created = 1_700_000_000.25
    line = TextFormatter().format(record)
    time_part, rest = line.split(" ", 1)
    assert len(time_part) == len("12:34:56.250") and time_part.endswith(".250")
    assert rest == (
        "WARNING pipeline: delivery failed delivery_id=d-1 webhook_id=hook_1 attempt=2 status=503"
    )


def test_a_text_line_stays_one_line_and_quotes_values() -> None:
    record = _record(
        "first\nsecond\r\nthird",
        level=logging.INFO,
        error='timed out "after" 30s',
        detail="a=b",
        reason="",
    )
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert "INFO    pipeline: first\\nsecond\\r\\nthird " in line
    assert 'error="timed out \\"after\\" 30s"' in line
    assert 'detail="a=b"' in line
    assert 'reason=""' in line


@given(text=st.text(), value=st.text())
@settings(max_examples=300, deadline=None)
def test_no_line_holds_a_character_a_terminal_could_act_on(text: str, value: str) -> None:
    """A message or a field may hold a record's text (a schema error names the keys of the
    event it refused): until 2026-12-07 text lines wrote its C0 and C1 controls and
    bidirectional overrides raw, and JSON lines its C1 controls and format characters, all
    obeyed by the terminal a line is read in. Every character shown is printable (or a space),
    and each format reads back what was logged."""
    record = _record(text, webhook_id=value)
    text_line = TextFormatter().format(record)
    json_text = JsonFormatter().format(record)
    for line in (text_line, json_text):
        assert line.isprintable(), repr(line)
    parsed = json.loads(json_text)
    assert (parsed["message"], parsed["webhook_id"]) == (text, value)
    message = text_line.split(" pipeline: ", 1)[1].rsplit(" webhook_id=", 1)[0]
    assert message.encode("ascii", "backslashreplace").decode("unicode_escape") == text
    shown = text_line.rsplit(" webhook_id=", 1)[1]
    assert (json.loads(shown) if shown.startswith('"') else shown) == value


def test_an_exception_follows_its_line_indented() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("crashed", level=logging.ERROR, exc_info=sys.exc_info())
    first, *trace = TextFormatter().format(record).splitlines()
    assert first.endswith("ERROR   pipeline: crashed")
    assert trace[0] == "    Traceback (most recent call last):"
    assert trace[-1] == "    ValueError: boom"


def test_both_formats_carry_the_same_fields() -> None:
    values = {name: f"v-{name}" for name in FIELDS}
    record = _record(**values)
    text = TextFormatter().format(record)
    parsed = json.loads(JsonFormatter().format(record))
    for name, value in values.items():
        assert parsed[name] == value
        assert f" {name}={value}" in text


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_secret_reaches_a_line_in_either_format(formatter: logging.Formatter) -> None:
    record = _record(
        secret=CANARY,
        body=CANARY,
        signature=CANARY,
        password=CANARY,
        headers={"X-Webhook-Signature": CANARY},
        settings={"kafka_sasl_password": CANARY},
        webhook_id="hook_1",
    )
    line = formatter.format(record)
    assert CANARY not in line
    assert "hook_1" in line


# ----------------------------------------------------------------------------- the format


@pytest.fixture
def terminal() -> Iterator[io.TextIOWrapper]:
    controller, device = os.openpty()
    stream = open(device, "w", encoding="utf-8")  # noqa: SIM115
    try:
        yield stream
    finally:
        stream.close()
        os.close(controller)


def test_auto_is_text_on_a_terminal_and_json_elsewhere(terminal: io.TextIOWrapper) -> None:
    assert resolve_log_format("auto", terminal) == "text"
    assert resolve_log_format("auto", io.StringIO()) == "json"
    assert resolve_log_format("json", terminal) == "json"
    assert resolve_log_format("text", io.StringIO()) == "text"


def test_auto_is_json_when_stderr_is_closed() -> None:
    closed = io.StringIO()
    closed.close()
    assert resolve_log_format("auto", closed) == "json"


def test_auto_reads_stderr_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert resolve_log_format("auto") == "json"
    assert logging_config("INFO", "auto")["formatters"]["main"]["()"] is JsonFormatter


def test_json_config_leaves_library_loggers_alone() -> None:
    config = logging_config("INFO", "json")
    assert config["formatters"]["main"]["()"] is JsonFormatter
    # All but the HTTP libraries, which would print requests' URLs and headers, and lines
    # each topic read would print.
    every = (*SILENCED_LOGGERS, *CHATTY_LOGGERS)
    assert config["loggers"] == {name: {"level": "WARNING"} for name in every}
    assert config["handlers"]["stderr"]["filters"] == ["refused"]
    assert config["root"]["level"] == "INFO"


@pytest.mark.parametrize(("level", "quiet"), [("INFO", "WARNING"), ("ERROR", "ERROR")])
def test_text_config_quiets_service_narration(level: str, quiet: str) -> None:
    config = logging_config(level, "text")
    assert config["formatters"]["main"]["()"] is TextFormatter
    every = (*QUIET_LOGGERS, *SILENCED_LOGGERS, *CHATTY_LOGGERS)
    assert config["loggers"] == {name: {"level": quiet} for name in every}
    assert {"faust", "mode"} <= set(QUIET_LOGGERS)
    narration = config["filters"]["narration"]["()"]()
    assert config["handlers"]["stderr"]["filters"] == ["refused", "narration"]
    assert not narration.filter(_record("[^--WebServer]: Starting...", level=logging.INFO))
    assert narration.filter(_record("[^--WebServer]: port taken", level=logging.WARNING))
    assert narration.filter(_record("invalid subscription record skipped", level=logging.INFO))


def test_text_config_at_debug_shows_everything() -> None:
    config = logging_config("DEBUG", "text")
    assert config["loggers"] == {name: {"level": "WARNING"} for name in SILENCED_LOGGERS}
    assert config["handlers"]["stderr"]["filters"] == ["refused"]


def test_text_config_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    """dictConfig accepts the text config, and Faust's INFO narration then stays out."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = (root.level, root.handlers[:], {n: logging.getLogger(n).level for n in QUIET_LOGGERS})
    try:
        logging.config.dictConfig(logging_config("INFO", "text"))
        logging.getLogger("faust.worker").info("Ready")
        logging.getLogger("bridge.worker.web").info("[^-WebServer]: Starting...")
        logging.getLogger("bridge.delivery.pipeline").info("kept", extra={"webhook_id": "h"})
        logging.getLogger("faust.worker").warning("slow")
    finally:
        for handler in root.handlers:
            if handler not in saved[1]:
                root.removeHandler(handler)
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO    pipeline: kept webhook_id=h",
        "WARNING worker: slow",
    ]
