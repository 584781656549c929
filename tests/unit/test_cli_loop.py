"""The worker's event loop follows the ``event_loop`` setting."""

from __future__ import annotations

import asyncio

import uvloop

from bridge.cli import _new_loop


def test_uvloop_by_default_setting_value() -> None:
    loop = _new_loop("uvloop")
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_loop_when_asked() -> None:
    loop = _new_loop("asyncio")
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
