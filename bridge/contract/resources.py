"""Access to the data files shipped from ``topics/`` (topic declarations and JSON Schemas)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["load_json"]

_PACKAGE = "bridge.topicdefs"


@cache
def load_json(relative_path: str) -> Any:
    """Parse a JSON file below ``topics/`` (e.g. ``"schemas/event.json"``)."""
    node = resources.files(_PACKAGE)
    for part in relative_path.split("/"):
        node = node.joinpath(part)
    return json.loads(node.read_text(encoding="utf-8"))
