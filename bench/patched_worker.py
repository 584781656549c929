"""A worker with one cost taken away, to measure what that cost limits (never for production).

``python -m bench.patched_worker PATCH[,PATCH...]`` runs ``bridge.cli run`` (same ``BRIDGE_*``
environment) after monkeypatching, in this process only:

* ``no_freshness``: ``TableFreshness.wait_current`` returns at once (no end-offsets round trip
  to the broker before each event is matched);
* ``no_attempt_log``: attempt records are not written to the attempts topic;
* ``no_event_validation``: events are parsed without the JSON Schema validation.

(``sync_race_fixed`` and ``no_spinner`` served while those fixes were not in the bridge; both
are in it now: bridge/sync.py and ``Bridge.worker``.)

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


def _no_attempt_log() -> None:
    from bridge import outputs

    _require(outputs, "KafkaOutputs")
    _require(outputs.KafkaOutputs, "attempt")

    async def attempt(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    outputs.KafkaOutputs.attempt = attempt  # type: ignore[method-assign]


def _no_event_validation() -> None:
    from bridge import events

    _require(events, "schema_errors")
    _require(events, "event_data_errors")
    events.schema_errors = lambda *args, **kwargs: []  # type: ignore[assignment]
    events.event_data_errors = lambda *args, **kwargs: []  # type: ignore[assignment]


PATCHES = {
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
