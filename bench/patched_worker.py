"""A worker with one cost taken away, to measure what that cost limits (never for production).

``python -m bench.patched_worker PATCH[,PATCH...]`` runs ``bridge.cli run`` (same ``BRIDGE_*``
environment) after monkeypatching, in this process only:

* ``no_freshness``: ``TableFreshness.wait_current`` returns at once (no end-offsets round trip
  to the broker before each event is matched);
* ``no_attempt_log``: attempt records are not written to the attempts topic;
* ``no_event_validation``: events are parsed without the JSON Schema validation;
* ``no_faust_sensor``: Faust's per-record sensor calls (records in and out, stream events
  in and out, end offsets) do nothing;
* ``no_http``: the HTTP/1.1 client answers 200 at once without a request (what the worker
  costs without its HTTP exchange; the receiver then sees nothing, so only the worker's
  ``delivered`` metric counts).

(``sync_race_fixed`` and ``no_spinner`` served while those fixes were not in the bridge; both
are in it now: bridge/subscriptions/freshness.py and ``Bridge.worker``.)

``bench/run --worker-patch PATCH`` uses it for every bridge worker of the run. A patch that no
longer fits the bridge's code fails loudly at start, so a stale patch cannot measure nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any


def _require(owner: Any, name: str) -> None:
    if not hasattr(owner, name):
        raise SystemExit(f"bench.patched_worker: {owner!r} has no {name!r} any more")


def _no_freshness() -> None:
    from bridge.subscriptions.freshness import TableFreshness

    _require(TableFreshness, "wait_current")

    async def wait_current(self: Any, *args: Any, **kwargs: Any) -> bool:
        return True

    TableFreshness.wait_current = wait_current  # type: ignore[method-assign]


def _no_attempt_log() -> None:
    from bridge.kafka import outputs

    _require(outputs, "KafkaOutputs")
    _require(outputs.KafkaOutputs, "attempt")

    async def attempt(self: Any, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        written.set_result(None)
        return written

    outputs.KafkaOutputs.attempt = attempt  # type: ignore[method-assign]


def _no_event_validation() -> None:
    from bridge.contract import events

    _require(events, "schema_errors")
    _require(events, "event_data_errors")
    # The names parse_event calls, imported into events from bridge.contract.schemas.
    for name in ("schema_errors", "event_data_errors"):
        setattr(events, name, lambda *args, **kwargs: [])


def _no_http() -> None:
    from bridge.http import http1

    _require(http1, "Http1Client")
    _require(http1.Http1Client, "post")

    async def post(self: Any, *args: Any, **kwargs: Any) -> http1.Answer:
        return 200, None, 0, False, None

    http1.Http1Client.post = post  # type: ignore[method-assign]

    # Without a request an attempt lasts microseconds, and so small a duration takes the
    # careful JSON encoder's path (Python writes 1e-05 where JavaScript writes 0.00001): a cost
    # real deliveries do not have. Each attempt is recorded as lasting 1.2345 ms instead.
    from bridge.http import http1_sender

    _require(http1_sender.Http1Sender, "__init__")
    original_init = http1_sender.Http1Sender.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        ticks = itertools.count()
        self._clock = lambda: next(ticks) * 0.0012345

    http1_sender.Http1Sender.__init__ = __init__  # type: ignore[method-assign]


def _no_faust_sensor() -> None:
    from bridge.worker import faust_monitor

    monitor = faust_monitor.FaustPrometheusMonitor
    for name in (
        "on_message_in",
        "on_stream_event_in",
        "on_stream_event_out",
        "on_message_out",
        "track_tp_end_offset",
    ):
        _require(monitor, name)
        setattr(monitor, name, lambda self, *args, **kwargs: None)


PATCHES = {
    "no_freshness": _no_freshness,
    "no_attempt_log": _no_attempt_log,
    "no_event_validation": _no_event_validation,
    "no_http": _no_http,
    "no_faust_sensor": _no_faust_sensor,
}


def main() -> int:
    names = [n for n in sys.argv[1].split(",") if n] if len(sys.argv) > 1 else []
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
    print(f"bench.patched_worker: patched {', '.join(names) or 'nothing'}", flush=True)
    from bridge.cli.commands import main as cli_main

    return cli_main(["run"])


if __name__ == "__main__":
    sys.exit(main())
