"""The RocksDB delivery log's cost per attempt record read: ``Attempt.parse`` and
``RocksStore.add`` of 100,000 records of 1,000 webhooks (``attempt_records``), median of five
runs, in microseconds per record.

``python -m bench.rocks_add [TREE]``: the tree's ``bridge`` (another checkout: a ``git worktree``
of an earlier commit) measured with this one's records, for a before and after in one sitting.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    from bridge.attempts.record import Attempt
    from bridge.attempts.stores import RocksStore

    from .control_plane import attempt_records

    records = attempt_records([f"wh_{n}" for n in range(1000)], 100_000, days=2)
    runs = []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as directory:
            store = RocksStore(Path(directory), max_attempts=1000, max_age=7 * 86400)
            now = time.time()
            store.open(0, now)
            began = time.perf_counter()
            for offset, (_, value, stamp) in enumerate(records):
                store.add(0, offset, Attempt.parse(value), value, now, stamp)
            runs.append((time.perf_counter() - began) / len(records) * 1e6)
            store.close()
    shown = ", ".join(f"{r:.1f}" for r in runs)
    tree = sys.argv[1] if len(sys.argv) > 1 else "."
    print(f"{tree}: {shown} us/record, median {statistics.median(runs):.1f}")


if __name__ == "__main__":
    main()
