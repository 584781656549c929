"""A worker with one cost taken away, to measure what that cost limits (never for production).

``python -m bench.patched_worker PATCH[,PATCH...]`` runs ``bridge.cli run`` (same ``BRIDGE_*``
environment) after monkeypatching, in this process only:

* ``sync_race_fixed``: ``TableFreshness.wait_current`` with the race found by this harness
  fixed (it reads the round it awaited, not ``self._round``), to measure the bridge as meant;
* ``no_freshness``: ``TableFreshness.wait_current`` returns at once (no end-offsets round trip
  to the broker before each event is matched);
* ``no_attempt_log``: attempt records are not written to the attempts topic;
* ``no_event_validation``: events are parsed without the JSON Schema validation;
* ``no_spinner``: faust.Worker without its terminal spinner (which keeps the root logger at
  DEBUG).

``bench/run --worker-patch PATCH`` uses it for every bridge worker of the run. A patch that no
longer fits the bridge's code fails loudly at start, so a stale patch cannot measure nothing.
"""

from __future__ import annotations

import sys
from typing import Any


def _require(owner: Any, name: str) -> None:
    if not hasattr(owner, name):
        raise SystemExit(f"bench.patched_worker: {owner!r} has no {name!r} any more")


def _no_freshness() -> None:
    from bridge.sync import TableFreshness

    _require(TableFreshness, "wait_current")

    async def wait_current(self: Any, *args: Any, **kwargs: Any) -> bool:
        return True

    TableFreshness.wait_current = wait_current  # type: ignore[method-assign]


def _sync_race_fixed() -> None:
    """``TableFreshness.wait_current`` as in bridge/sync.py, except that after awaiting a round
    it looks at *that* round, not at ``self._round`` (which another waiter may have replaced by
    a newer, still running round: ``InvalidStateError`` and the record is never matched)."""
    import asyncio

    from bridge.sync import TableFreshness

    _require(TableFreshness, "wait_current")
    _require(TableFreshness, "_run_round")

    async def wait_current(self: Any, received_at: float) -> bool:
        if received_at <= self._covered_until:
            return True
        deadline = self._clock() + self._timeout
        while received_at > self._covered_until:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            current = self._round
            if current is not None and current.done() and not current.cancelled():
                current.exception()
            if current is None or current.done() or self._round_started < received_at:
                if current is not None and not current.done():
                    await asyncio.wait({current}, timeout=remaining)
                    continue
                self._round_started = self._clock()
                current = self._round = asyncio.ensure_future(
                    asyncio.wait_for(self._run_round(self._round_started), self._timeout)
                )
            done, _ = await asyncio.wait({current}, timeout=remaining)
            if not done:
                return False
            if current.cancelled() or current.exception() is not None:
                if self._round is current:
                    self._round = None
                await asyncio.sleep(min(0.05, max(0.0, deadline - self._clock())))
        return True

    TableFreshness.wait_current = wait_current  # type: ignore[method-assign]


def _no_attempt_log() -> None:
    from bridge import app

    _require(app, "_KafkaOutputs")
    _require(app._KafkaOutputs, "attempt")

    async def attempt(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    app._KafkaOutputs.attempt = attempt  # type: ignore[method-assign]


def _no_event_validation() -> None:
    from bridge import events

    _require(events, "schema_errors")
    _require(events, "event_data_errors")
    events.schema_errors = lambda *args, **kwargs: []  # type: ignore[assignment]
    events.event_data_errors = lambda *args, **kwargs: []  # type: ignore[assignment]


def _no_spinner() -> None:
    """faust.Worker without its terminal spinner: at WARNING and above Faust installs a DEBUG
    ``SpinnerHandler`` and sets the root logger to DEBUG, so every library debug call builds a
    LogRecord (and the spinner writes terminal escapes into the log)."""
    import faust.worker

    _require(faust.worker.Worker, "_setup_spinner_handler")
    original = faust.worker.Worker.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.spinner = None

    faust.worker.Worker.__init__ = init  # type: ignore[method-assign]


PATCHES = {
    "no_spinner": _no_spinner,
    "sync_race_fixed": _sync_race_fixed,
    "no_freshness": _no_freshness,
    "no_attempt_log": _no_attempt_log,
    "no_event_validation": _no_event_validation,
}


def main() -> int:
    names = [n for n in sys.argv[1].split(",") if n] if len(sys.argv) > 1 else []
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
    print(f"bench.patched_worker: patched {', '.join(names) or 'nothing'}", flush=True)
    from bridge.cli import main as cli_main

    return cli_main(["run"])


if __name__ == "__main__":
    sys.exit(main())
