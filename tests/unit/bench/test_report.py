"""bench/report.py: what the Results table of BENCHMARKS.md shows of a run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report

META: dict[str, Any] = {
    "argv": ["bench/run"],
    "mode": "full",
    "started": "2026-12-07 08:00:00 UTC",
    "seconds": 900.0,
    "bridge_commit": "abc1234",
    "receiver": "aiohttp receiver",
    "loadavg_start": (0.1, 0.1, 0.1),
    "loadavg_end": (1.0, 1.0, 1.0),
    "cpu": "a CPU",
    "cores": 2,
    "memory_gib": 23.5,
    "kernel": "6.18",
    "python_version": "3.11.7",
    "python": "/venv/bin/python",
    "packages": {"aiohttp": "3.14.5"},
}

CEILING = {
    "name": "ceiling_aiohttp",
    "deliveries_per_s": 12000.0,
    "ceiling_per_s": 12000.0,
    "ratio": 1.0,
    "body_bytes": 598,
}
SENDER = {
    "name": "ceiling_bridge_sender",
    "deliveries_per_s": 30000.0,
    "ceiling_per_s": 12000.0,
    "ratio": 2.5,
}
FANOUT_1 = {
    "name": "fanout_1",
    "deliveries_per_s": 9000.0,
    "ceiling_per_s": 12000.0,
    "ratio": 0.75,
}
HALF_LOAD = {
    "name": "latency_half_load",
    "deliveries_per_s": 4500.0,
    "ceiling_per_s": 12000.0,
    "ratio": None,
    "offered_per_s": 4500.0,
    "offered_vs_fanout_1": 0.5,
}


def _table(tmp_path: Path, results: list[dict[str, Any]]) -> dict[str, list[str]]:
    path = tmp_path / "BENCHMARKS.md"
    report.write_benchmarks(path, META, results)
    rows = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    return {row.split(" | ")[0][2:]: row.split(" | ")[1:] for row in rows[1:]}


def _row(table: dict[str, list[str]], name: str) -> dict[str, str]:
    columns = ("deliveries/s", "p50 ms", "p99 ms", "ceiling/s", "ratio", "notes")
    return dict(zip(columns, table[name], strict=True))


def test_a_paced_scenario_shows_the_load_it_offered_where_others_show_their_ratio(
    tmp_path: Path,
) -> None:
    set_rate = HALF_LOAD | {"name": "isolation", "offered_vs_fanout_1": None}
    table = _table(tmp_path, [CEILING, FANOUT_1, HALF_LOAD, set_rate])
    assert _row(table, "fanout_1")["ratio"] == "0.75"
    assert _row(table, "latency_half_load")["ratio"] == "offered 0.5 × fanout_1"
    assert _row(table, "isolation")["ratio"] == "offered at a set rate"


def test_the_results_say_what_the_ratios_are_against(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    report.write_benchmarks(path, META, [CEILING, SENDER, FANOUT_1, HALF_LOAD])
    text = " ".join(path.read_text().split())
    assert "not an upper bound on the bridge" in text
    assert "no Kafka) outruns it (its ratio is 2.5 in this run)" in text
    assert "fan-out 1 is at 0.30 of what the bridge's sender alone reaches here" in text
    assert "The ceilings post 598-byte bodies" in text


def test_fan_out_1_with_the_log_shows_its_ratio_against_the_adjacent_ceiling(
    tmp_path: Path,
) -> None:
    log = {
        "name": "fanout_1_log",
        "deliveries_per_s": 7900.0,
        "ceiling_per_s": 12000.0,
        "ratio": 0.655,
        "pairs": 3,
        "ratio_adjacent_median_with_log": 0.59,
        "ratio_adjacent_median_without_log": 0.7,
        "ratio_adjacent_median_split": 0.66,
    }
    notes = _row(_table(tmp_path, [CEILING, log]), "fanout_1_log")["notes"]
    assert "ratio_adjacent_median_with_log=0.59" in notes
    assert "ratio_adjacent_median_without_log=0.7" in notes


def test_each_store_of_the_attempts_query_has_a_row(tmp_path: Path) -> None:
    memory = {"p50_ms": 2.07, "p99_ms": 5.23, "worker_rss_mib": 1557.0, "data_dir_bytes": 0}
    rocksdb = {
        "p50_ms": 2.41,
        "p99_ms": 19.04,
        "worker_rss_mib": 879.0,
        "rss_per_attempt_bytes": 812,
        "data_dir_bytes": 238059520,
        "ingest_per_s": 14672.6,
        "error": "the log read 10 of 20 records",
    }
    query = {
        "name": "attempts_query",
        "deliveries_per_s": None,
        "p50_ms": 2.07,
        "p99_ms": 5.23,
        "ceiling_per_s": 12000.0,
        "ratio": None,
        "webhooks": 100000,
        "store": "memory",
        "stores": {"memory": memory, "rocksdb": rocksdb},
    } | {k: v for k, v in memory.items() if k not in ("p50_ms", "p99_ms")}
    table = _table(tmp_path, [CEILING, query])
    assert _row(table, "attempts_query")["notes"].startswith("store=memory; webhooks=100000")
    row = _row(table, "attempts_query, rocksdb store")
    assert (row["p50 ms"], row["p99 ms"]) == ("2.41", "19.0")
    assert "store=rocksdb" in row["notes"]
    assert "worker_rss_mib=879" in row["notes"]
    assert "rss_per_attempt_bytes=812" in row["notes"]
    assert "data_dir_bytes=238059520" in row["notes"]
    assert "ERROR: the log read 10 of 20 records" in row["notes"]
