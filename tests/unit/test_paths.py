"""bridge.paths: an id is one path segment, as the clients the bridge uses send it."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

import httpx
import pytest
import yarl
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.paths import path_segment


def sent_by_yarl(path: str) -> str:
    """The path aiohttp's client sends for ``path`` given as encoded (as the workers do)."""
    return yarl.URL("http://127.0.0.1:7002" + path, encoded=True).raw_path


def sent_by_httpx(path: str) -> str:
    """The path httpx sends for ``path`` under a base URL (as the CLI's ``--api-url`` does)."""
    with httpx.Client(base_url="http://127.0.0.1:7002") as client:
        return client.build_request("GET", path).url.raw_path.decode("ascii")


@pytest.mark.parametrize("sent", [sent_by_yarl, sent_by_httpx])
@given(text=st.text(min_size=1))
@example(text=".")
@example(text="..")
@example(text="...")
@example(text="%2E%2E")
@example(text="../x")
@example(text="a?b#c")
def test_any_id_is_one_segment_the_server_decodes_back(
    sent: Callable[[str], str], text: str
) -> None:
    """Until 2026-12-07 ``.`` and ``..`` were sent as they are, and both clients resolved them
    away (``/internal/v1/deliveries/..`` was ``/internal/v1/``)."""
    path = sent(f"/internal/v1/deliveries/{path_segment(text)}/x")
    _, internal, v1, deliveries, segment, tail = path.split("/")
    assert (internal, v1, deliveries, tail) == ("internal", "v1", "deliveries", "x")
    assert unquote(segment, errors="strict") == text


def test_only_dot_segments_have_their_dots_encoded() -> None:
    assert [path_segment(t) for t in (".", "..", "...", "a.b", ".x")] == [
        "%2E",
        "%2E%2E",
        "...",
        "a.b",
        ".x",
    ]
    assert path_segment("a/b?c#d%e f") == "a%2Fb%3Fc%23d%25e%20f"
