"""What tests of the workers' /v1 share: a read-write token, its file, the served document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge.api.auth import hash_token
from bridge.api.openapi import openapi_document

__all__ = [
    "LOG_AUTH",
    "LOG_TOKEN",
    "SITE_AUTH",
    "SITE_TOKEN",
    "served_only",
    "served_document",
    "write_token_file",
]

#: A token with the read and write scopes, in every file :func:`write_token_file` writes.
LOG_TOKEN = "wbt_worker-activity-0123456789abcdef0123456789ab"
LOG_AUTH = {"Authorization": f"Bearer {LOG_TOKEN}"}


#: A token with the read scope restricted to site ``s1``, in the same files.
SITE_TOKEN = "wbt_worker-activity-site-s1-0123456789abcdef0123"
SITE_AUTH = {"Authorization": f"Bearer {SITE_TOKEN}"}


def write_token_file(path: Path) -> Path:
    """A token file holding :data:`LOG_TOKEN` and :data:`SITE_TOKEN` (their SHA-256 only)."""
    entries = [
        {"name": "it", "sha256": hash_token(LOG_TOKEN), "scopes": ["read", "write"]},
        {"name": "site", "sha256": hash_token(SITE_TOKEN), "scopes": ["read"], "site_id": "s1"},
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


def served_only(document: dict[str, Any]) -> dict[str, Any]:
    """The document without the operations marked ``x-bridge-served: false``."""
    for path, item in list(document["paths"].items()):
        for method in [m for m, op in item.items() if m != "parameters"]:
            if item[method].get("x-bridge-served", True) is False:
                del item[method]
        if not [m for m in item if m != "parameters"]:
            del document["paths"][path]
    return document


def served_document() -> dict[str, Any]:
    """The operations the API serves, as its document declares them."""
    return served_only(openapi_document())
