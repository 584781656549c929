"""Worker logs: JSON lines for machines, readable lines on a terminal; never a secret or body.

Both formats show the same things: time, level, logger, message and the known ``extra`` fields
(:data:`FIELDS`). A log call's other attributes never reach a line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

from bridge.terminal import escaped, json_line

__all__ = [
    "FIELDS",
    "QUIET_LOGGERS",
    "SILENCED_LOGGERS",
    "CHATTY_LOGGERS",
    "JsonFormatter",
    "TextFormatter",
    "logging_config",
    "resolve_log_format",
]

#: ``extra`` keys copied into the line when a log call passes them.
FIELDS = (
    "delivery_id",
    "webhook_id",
    "event_id",
    "event_type",
    "attempt",
    "status",
    "error",
    "outcome",
    "reason",
    "topic",
    "partition",
    "offset",
    "detail",
)
_FORBIDDEN = frozenset({"secret", "body", "signature", "password"})

#: Libraries whose INFO lines narrate start-up, stop and rebalances (each Faust and mode service
#: says "Starting...", aiokafka lists every assigned partition): raised to WARNING in the text
#: format unless the level is DEBUG.
QUIET_LOGGERS = ("faust", "mode", "aiokafka")
#: Libraries whose INFO and DEBUG lines print what must not be (httpx logs every request's URL,
#: a token in its query string included; httpcore's DEBUG lines its headers): WARNING in every
#: format and at every level (until 2026-12-05 the httpx sender logged each delivery's URL).
SILENCED_LOGGERS = ("httpx", "httpcore", "hpack")
#: Libraries whose INFO lines come once per topic read: a ``/v1`` request of ``serve`` and a
#: worker's recovery or dead-letter listing each read a topic, and aiokafka said "Updating
#: subscribed topics" for each (until 2026-12-06). WARNING in every format unless the level is
#: DEBUG.
CHATTY_LOGGERS = ("aiokafka.consumer.subscription_state",)


class _ServiceNarration(logging.Filter):
    """Drops the INFO and DEBUG lines mode services log through their own module's logger (the
    bridge's services too): they start with mode's ``[^--ServiceName]: `` label."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not str(record.msg).startswith("[^")


class _RefusedRequests(logging.Filter):
    """aiohttp logs a request its HTTP parser refused (``400``: a line too long, a bad header
    character) as an error with a traceback whose text quotes the bytes refused, such as an
    ``Authorization`` header. Anyone can send such a request: one INFO line naming the error's
    class and the client's address instead, nothing of the request; shown only at INFO or
    below (``threshold``)."""

    def __init__(self, threshold: int = logging.INFO) -> None:
        super().__init__()
        self._threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if not record.name.startswith("aiohttp") or not isinstance(refused, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "refused a malformed HTTP request from %s (%s)"
        record.args = (remote, type(refused).__name__)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return record.levelno >= self._threshold


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None and name not in _FORBIDDEN:
            out[name] = value
    return out


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON line: time, level, logger, message and known fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # Controls, line breaks and format characters as JSON escapes: a line read in a
        # terminal (kubectl logs) is never obeyed by it (until 2026-12-07 C1 controls and
        # bidirectional overrides of a record's text were written raw).
        return json_line(line, default=str)


class TextFormatter(logging.Formatter):
    """Formats a record as one readable line:
    ``12:04:05.123 INFO    pipeline: message key=value ...``.

    Local time, the logger's last name, line breaks in the message escaped (one line per event)
    and values with spaces or quotes JSON-quoted. An exception's traceback follows on its own
    lines, indented.
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        short = record.name.rpartition(".")[2]
        # The message as one line, nothing in it a terminal acts on (until 2026-12-07 only its
        # line breaks were escaped, and the escape sequences of a record's text, such as the
        # keys a schema error names, reached the operator's terminal raw).
        message = escaped(record.getMessage(), quote=False)
        parts = [moment, f"{record.levelname:<7}", f"{short}:", message]
        parts.extend(f"{key}={_value(value)}" for key, value in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("    " + row for row in trace.splitlines())
        return line


def _value(value: Any) -> str:
    text = str(value)
    if not text or not text.isprintable() or any(c.isspace() or c in "\"'=\\" for c in text):
        return json_line(text)
    return text


def resolve_log_format(fmt: str, stream: TextIO | None = None) -> str:
    """``json`` or ``text``: ``auto`` is text when ``stream`` (default: stderr, where the logs
    go) is a terminal, else json."""
    if fmt != "auto":
        return fmt
    target = sys.stderr if stream is None else stream
    try:
        return "text" if target.isatty() else "json"
    except (AttributeError, ValueError):  # closed or replaced by an object without isatty
        return "json"


def logging_config(level: str, fmt: str, stream: TextIO | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the worker: lines on stderr in ``fmt`` (``json``,
    ``text`` or ``auto``, see :func:`resolve_log_format`)."""
    resolved = resolve_log_format(fmt, stream)
    formatter = JsonFormatter if resolved == "json" else TextFormatter
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": formatter}},
        "filters": {
            "refused": {"()": _RefusedRequests, "threshold": logging.getLevelName(level.upper())}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "stream": "ext://sys.stderr",
                "filters": ["refused"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
    loud = logging.getLevelName(max(logging.WARNING, logging.getLevelName(level.upper())))
    config["loggers"] = {name: {"level": loud} for name in SILENCED_LOGGERS}
    if level.upper() != "DEBUG":
        config["loggers"].update({name: {"level": loud} for name in CHATTY_LOGGERS})
    if resolved == "text" and level.upper() != "DEBUG":
        quiet = loud
        config["loggers"].update({name: {"level": quiet} for name in QUIET_LOGGERS})
        config["filters"]["narration"] = {"()": _ServiceNarration}
        config["handlers"]["stderr"]["filters"].append("narration")
    return config
