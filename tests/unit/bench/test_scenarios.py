"""bench/scenarios.py: what makes a scenario's result an error, and the figures it derives."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import scenarios
from bench.scenarios import Context, PacedRun, Sizes


def _context(**changes: Any) -> Context:
    values: dict[str, Any] = {
        "procs": None,
        "bootstrap": "127.0.0.1:1",
        "receiver": None,
        "workdir": Path("/nonexistent"),
        "out_dir": Path("/nonexistent"),
        "python": "python",
        "sizes": Sizes.for_mode(True),
        "run_id": "r",
        "ceiling": 10000.0,
        "fanout_1_rate": 2000.0,
    }
    values.update(changes)
    return Context(**values)


def _paced_run() -> PacedRun:
    return PacedRun(
        settings=SimpleNamespace(kafka_fetch_max_wait=0.05),  # type: ignore[arg-type]
        published=8000,
        publish_s=8.0,
        healthy_expected=8000,
        healthy_delivered=8000,
        complete=True,
        latencies=[0.03] * 6000,
        warmup_latencies=[0.02] * 2000,
        p99_by_window=[0.03, 0.03],
        acks=[0.004],
        healthy_rate=1000.0,
        arrival_window_s=8.0,
        ready_s=1.0,
        worker_cpu_pct=50.0,
        metrics={},
        extras=scenarios.WorkerExtras(
            events_consumed=8000,
            in_flight_at_end=0,
            consumer_lag_at_end=0,
            attempts_failed=0,
            retries_scheduled=0,
            dead_letters=0,
            sync_timeouts=0,
            worker_rss_mib=100.0,
        ),
        loadavg_start=0.0,
        loadavg_end=0.0,
        profiled={},
    )


FLOOR = {"p50_ms": 2.0, "p99_ms": 5.0, "p99_by_5s_ms": [5.0]}
RAW = {"p50_ms": 20.0, "p99_ms": 25.0, "p99_by_5s_ms": [25.0], "cpu_pct": 30.0}


async def _latency_half_load(
    monkeypatch: pytest.MonkeyPatch, floor: dict[str, Any], raw: dict[str, Any]
) -> dict[str, Any]:
    async def paced(*args: Any, **kwargs: Any) -> PacedRun:
        return _paced_run()

    async def kafka_latency_floor(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return floor

    async def raw_loop_latency(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return raw

    monkeypatch.setattr(scenarios, "paced", paced)
    monkeypatch.setattr(scenarios.ceilings, "kafka_latency_floor", kafka_latency_floor)
    monkeypatch.setattr(scenarios, "raw_loop_latency", raw_loop_latency)
    return await scenarios.latency_half_load(_context())


async def test_latency_at_half_load_against_its_floor_and_raw_loop_is_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = await _latency_half_load(monkeypatch, FLOOR, RAW)
    assert "error" not in result
    assert result["p99_vs_raw_loop"] == 1.2


async def test_a_raw_loop_that_delivered_nothing_fails_the_latency_scenario(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = {"p50_ms": None, "p99_ms": None, "p99_by_5s_ms": [], "cpu_pct": 0.0}
    missing["error"] = "4000 of 4000 deliveries missing"
    result = await _latency_half_load(monkeypatch, FLOOR, missing)
    assert result["error"] == "raw loop: 4000 of 4000 deliveries missing"
    assert result["p99_vs_raw_loop"] is None


async def test_a_floor_short_of_records_fails_the_latency_scenario(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short = FLOOR | {"error": "consumed 3000 of 4000 records"}
    result = await _latency_half_load(monkeypatch, short, RAW)
    assert result["error"] == "same-load floor: consumed 3000 of 4000 records"


class _Receiver:
    def url(self, i: int, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{9000 + i % 16}{path}"

    def arrivals(self) -> None:
        return None


class _Worker:
    pid = 1
    proc = SimpleNamespace(alive=lambda: True)

    def cpu_seconds(self) -> float:
        return 0.0

    def metrics(self) -> dict[str, float]:
        return {}

    def rss_kib(self) -> int:
        return 1024


async def test_a_paced_load_delivered_behind_its_publishing_shows_the_rate_delivered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """200 events/s published for 0.5 s, their deliveries arriving evenly over 1 s: the worker
    delivered at 100/s, whatever the offered rate."""

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    async def start_ready(*args: Any, **kwargs: Any) -> tuple[_Worker, float]:
        return _Worker(), 1.0

    async def publish_paced(
        settings: Any, sites: Any, rate: float, seconds: float, published: Any, stop: Any = None
    ) -> int:
        count = int(rate * seconds)
        for n in range(count):
            event = f"event-{n}"
            published.stamps[event] = 1000.0 + n / rate
            published.sites[event] = sites[n % len(sites)][0]
        await asyncio.sleep(seconds)
        return count

    async def wait_arrivals(
        arrivals: Any, expected: set[str], *args: Any, **kwargs: Any
    ) -> tuple[dict[str, float], bool]:
        ordered = sorted(expected)
        return {d: 1000.0 + n / (len(ordered) - 1) for n, d in enumerate(ordered)}, True

    monkeypatch.setattr(scenarios.kit, "prepare_topics", nothing)
    monkeypatch.setattr(scenarios.kit, "write_hooks", nothing)
    monkeypatch.setattr(scenarios.kit, "publish_paced", publish_paced)
    monkeypatch.setattr(scenarios, "_start_ready", start_ready)
    monkeypatch.setattr(scenarios, "_wait_arrivals", wait_arrivals)
    monkeypatch.setattr(scenarios, "_stop", lambda ctx, worker: None)
    ctx = _context(receiver=_Receiver(), workdir=tmp_path)
    run = await scenarios.paced(ctx, "isolation", 200.0, 0.5)
    assert run.healthy_delivered == 100
    assert run.healthy_rate == pytest.approx(99.0)
    assert run.arrival_window_s == pytest.approx(1.0)


def test_a_paced_scenario_has_no_ratio_but_the_load_it_offered() -> None:
    offered = scenarios._offered(_context(fanout_1_rate=9000.0), 4500.0)
    assert offered == {"offered_per_s": 4500.0, "offered_vs_fanout_1": 0.5, "ratio": None}
    set_rate = scenarios._offered(_context(fanout_1_rate=9000.0, paced_rate=4000.0), 4000.0)
    assert set_rate["offered_vs_fanout_1"] is None
