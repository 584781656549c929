"""Cost of one hot-path metric update: bridge.metrics' handles against prometheus-client's API.

Run: ``.venv/bin/python -m bench.hot_metrics [--number N] [--repeat R]``. Prints, for each way of
counting, the best and the median of ``repeat`` timings of ``number`` calls, in µs per call
(timeit's own loop included, about 0.01 µs).
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.metrics import Metrics

#: (what is measured, the statement timed once per call); names are those of :func:`namespace`.
CASES = (
    ("counter: HotCounter.inc()", "hot_counter.inc()"),
    ("counter: labels() child, remembered, .inc()", "counter_child.inc()"),
    ("counter: .labels(...).inc()", "m.attempts.labels('success', '2xx').inc()"),
    ("counter: m.child(...).inc() (lookup + hot)", "m.child(m.attempts, 'success', '2xx').inc()"),
    ("histogram: HotHistogram.observe()", "hot_histogram.observe(x)"),
    ("histogram: labels() child, remembered, .observe()", "histogram_child.observe(x)"),
    ("histogram: .labels(...).observe()", "m.request_duration.labels('success').observe(x)"),
    (
        "histogram: m.child(...).observe() (lookup + hot)",
        "m.child(m.request_duration, 'success').observe(x)",
    ),
    ("histogram, 20 buckets: HotHistogram.observe()", "hot_unlabelled.observe(x)"),
    ("histogram, 20 buckets: Histogram.observe()", "m.end_to_end.observe(x)"),
)


def namespace() -> dict[str, Any]:
    """A fresh registry's metrics and the handles :data:`CASES` time."""
    m = Metrics(CollectorRegistry(), "bench")
    return {
        "m": m,
        "x": 0.042,  # a mid-range bucket of both histograms
        "hot_counter": m.child(m.attempts, "success", "2xx"),
        "counter_child": m.attempts.labels("success", "2xx"),
        "hot_histogram": m.child(m.request_duration, "success"),
        "histogram_child": m.request_duration.labels("success"),
        "hot_unlabelled": m.child(m.end_to_end),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Cost of one metric update, in µs.")
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    names = namespace()
    for label, statement in CASES:
        runs = timeit.repeat(statement, number=args.number, repeat=args.repeat, globals=names)
        per_call = sorted(run / args.number * 1e6 for run in runs)
        best, median = per_call[0], statistics.median(per_call)
        print(f"{label:52s} best {best:6.3f} µs   median {median:6.3f} µs")


if __name__ == "__main__":
    main()
