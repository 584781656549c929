"""Bridge.start/stop run the worker inside the caller's event loop and leave nothing behind: no
thread, task, socket, loop, signal handler, logging or loop-policy change, and nothing that keeps
the Faust app alive once the loop is gone."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from bridge.admin.publish import publish_events
from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.subscriptions.store import WebhookStore
from bridge.worker.app import Bridge
from tests.support.receivers import Receiver

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def process_state() -> dict[str, Any]:
    """What a worker run as a process changes and one run in-process must not."""
    root = logging.getLogger()
    return {
        "signals": {sig: signal.getsignal(sig) for sig in SIGNALS},
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "policy": asyncio.get_event_loop_policy(),
        "root_level": root.level,
        "root_handlers": list(root.handlers),
        "loggers": {
            name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
            for name, lg in logging.root.manager.loggerDict.items()
            if isinstance(lg, logging.Logger)
        },
        "cwd": os.getcwd(),
        "stdout": sys.stdout,
        "stderr": sys.stderr,
    }


def open_sockets() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(f"{fd}:{target}")
    return out


def test_a_bridge_started_in_the_callers_loop_stops_in_bounded_time_and_leaves_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(drain_timeout=1.0)
    app_ref: list[weakref.ref[Any]] = []
    timings: dict[str, float] = {}

    async def scenario() -> None:
        await apply_topics(settings)
        receiver = await Receiver().start()
        release = asyncio.Event()
        receiver.holds["/held"] = release
        try:
            async with WebhookStore(settings) as store:
                await store.create(
                    url=receiver.url("/held"),
                    events=["post.created"],
                    site_id="s1",
                    user_id="u1",
                    secret="secret-held",
                    webhook_id="held",
                )
            tasks_before = asyncio.all_tasks()
            bridge = Bridge(settings)
            app_ref.append(weakref.ref(bridge.app))
            await asyncio.wait_for(bridge.start(), 60)
            assert bridge.ready()[0], bridge.ready()
            # Faust's consumer runs in a thread of its own while the bridge runs.
            assert any(t.name != "MainThread" for t in threading.enumerate())
            event = build_event(
                "post.created", {"id": "p", "title": "t"}, site_id="s1", user_id="u1"
            )
            await publish_events(settings, [event])
            await receiver.wait_for(lambda got: len(got) == 1, timeout=20)

            # The delivery is still in flight: stopping waits drain_timeout for it, no more.
            started = time.monotonic()
            await asyncio.wait_for(bridge.stop(), 30)
            timings["stop"] = time.monotonic() - started
            release.set()
            await receiver.stop()
            left = {
                t for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task()
            }
            assert left == set(), left
            del bridge
        finally:
            release.set()
            await receiver.stop()

    before = process_state()
    threads_before = set(threading.enumerate())
    sockets_before = open_sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with asyncio.Runner() as runner:
            runner.run(scenario())
        gc.collect()
    after = process_state()
    assert [str(w.message) for w in caught] == []
    # Loggers of modules imported meanwhile (mode gives each a NullHandler, as libraries do) are
    # left unconfigured; no other logger, handler, signal disposition, loop policy or stream
    # changed.
    for name in set(after["loggers"]) - set(before["loggers"]):
        level, handlers, propagate, disabled = after["loggers"].pop(name)
        assert (level, propagate, disabled) == (logging.NOTSET, True, False), name
        assert all(type(h) is logging.NullHandler for h in handlers), (name, handlers)
    assert after == before
    assert set(threading.enumerate()) == threads_before
    assert open_sockets() <= sockets_before
    assert app_ref[0]() is None, "something still holds the Faust app"
    # It waited for the held delivery (handed to the retry path then), and not much longer.
    assert settings.drain_timeout <= timings["stop"] < settings.drain_timeout + 5.0, timings
