"""The HTTP clients' tests that talk to real servers run on asyncio's loop and on uvloop, the
workers' loop: TLS, connection reuse and reads are each loop's own code below the clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop

#: Test modules run on both loops.
BOTH_LOOPS = frozenset({"test_dns.py", "test_http1_hostile.py", "test_senders.py"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    if item.path.name not in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop}  # the hook must name one at least
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
