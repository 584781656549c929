"""The worker's event loop follows the ``event_loop`` setting, in every thread."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

import pytest
import uvloop

from bridge.cli.commands import WORKER_GC_THRESHOLDS, _new_loop, tune_gc


@pytest.fixture(autouse=True)
def _default_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def _loop_made_in_a_thread() -> asyncio.AbstractEventLoop:
    made: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: made.append(asyncio.new_event_loop()))
    thread.start()
    thread.join(10)
    return made[0]


def test_uvloop_for_the_worker_and_the_loops_faust_starts_in_threads() -> None:
    loop = _new_loop("uvloop")
    other = _loop_made_in_a_thread()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert isinstance(other, uvloop.Loop)
    finally:
        loop.close()
        other.close()


def test_asyncio_loop_when_asked() -> None:
    _new_loop("uvloop").close()
    loop = _new_loop("asyncio")
    other = _loop_made_in_a_thread()
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert not isinstance(other, uvloop.Loop)
    finally:
        loop.close()
        other.close()


def test_tune_gc_sets_the_worker_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == WORKER_GC_THRESHOLDS
        assert WORKER_GC_THRESHOLDS[0] > before[0]
    finally:
        gc.set_threshold(*before)
