"""Structured logs: one JSON object per line, with the delivery's ids and never a secret or body."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "logging_config", "FIELDS"]

#: ``extra`` keys copied into the JSON line when a log call passes them.
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
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None and name not in _FORBIDDEN:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the worker: JSON lines (``json``) or plain text."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
