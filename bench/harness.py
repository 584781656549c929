"""``bench/run [--quick] [--only NAME] [--profile NAME]``: the benchmark harness.

Starts an embedded broker on a free port and the receivers, measures the ceilings, runs every
scenario (each with its own worker process, topics and group), prints one JSON object per result
on stdout (progress goes to stderr) and saves them under bench/out/; a full run with every result
measured then rewrites BENCHMARKS.md. Everything it starts is stopped at the end, also on
Ctrl-C, SIGTERM and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bridge.config import Settings
from bridge.worker.embedded import EmbeddedBroker

from . import ceilings, control_plane, recoveries, report
from .procs import REPO, Procs, free_port
from .receivers import Receiver, start_fast_receiver
from .scenarios import NEEDS_FANOUT_1, SCENARIOS, Context, Sizes

OUT = REPO / "bench" / "out"
ORDER = [
    "fanout_1",
    "fanout_10",
    "latency_half_load",
    "isolation",
    "isolation_slow",
    "subscriptions_100k",
    "naive_baseline",
    "recovery_after_sigkill",
    "fanout_1_log",
    "attempts_query",
    "recoveries_beside",
]
#: What ``--profile`` takes: a scenario, or one variant of fanout_1_log (its delivering worker,
#: in the first round that runs it), with the scenario it runs in.
PROFILE_TARGETS = (
    {name: name for name in ORDER}
    | {f"fanout_1_log_{variant}": "fanout_1_log" for variant in control_plane.LOG_VARIANTS}
    | {
        f"recoveries_beside_{variant}": "recoveries_beside"
        for variant in recoveries.RECOVERY_VARIANTS
    }
)
#: Every scenario by name: the delivery scenarios and the control plane's.
ALL_SCENARIOS = {
    **SCENARIOS,
    "fanout_1_log": control_plane.fanout_1_log,
    "attempts_query": control_plane.attempts_query,
    "recoveries_beside": recoveries.recoveries_beside,
}
#: Longest a scenario may take before the run gives up on it (seconds).
SCENARIO_TIMEOUT = {"quick": 90.0, "full": 420.0}
#: ... except these, which run several workers or fill a topic with a million records first.
LONG_SCENARIO_TIMEOUT = {
    "fanout_1_log": {"quick": 90.0, "full": 600.0},
    "attempts_query": {"quick": 90.0, "full": 900.0},
    "recoveries_beside": {"quick": 120.0, "full": 600.0},
}
#: Seconds from the start of a run after which no further scenario starts (quick runs must end
#: within four minutes, full ones within twenty-seven, stragglers and shutdown included).
RUN_BUDGET = {"quick": 225.0, "full": 1500.0}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes; under 4 minutes; never rewrites BENCHMARKS.md",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=ORDER,
        metavar="NAME",
        help="run only this scenario (repeatable); " + ", ".join(ORDER),
    )
    parser.add_argument(
        "--profile",
        choices=PROFILE_TARGETS,
        metavar="NAME",
        help="run py-spy on this scenario's worker (from ready to the end of its load; for "
        "subscriptions_100k from start to ready) and print the top functions; "
        "fanout_1_log_off, fanout_1_log_all or fanout_1_log_split (recoveries_beside_none, "
        "recoveries_beside_share_1, recoveries_beside_share_default): that variant's delivering "
        "worker in its first round",
    )
    parser.add_argument(
        "--profile-format",
        choices=["raw", "flamegraph", "speedscope"],
        default="raw",
        help="py-spy output format (raw is summarised; flamegraph writes an svg)",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        metavar="EVENTS_PER_S",
        help="offer this rate in the paced scenarios (latency_half_load, isolation, "
        "isolation_slow; recovery_after_sigkill offers half of it) instead of half the fan-out "
        "1 rate measured in the run, which is then not measured unless asked for: to compare "
        "two versions of the bridge at the same load; never rewrites BENCHMARKS.md",
    )
    parser.add_argument(
        "--receiver",
        choices=["auto", "nginx", "aiohttp"],
        default="auto",
        help="healthy receiver: nginx when installed (auto), or the aiohttp one",
    )
    parser.add_argument(
        "--worker-patch",
        metavar="PATCH[,PATCH]",
        help="ablation: run every bridge worker through bench.patched_worker with these "
        "patches (no_freshness, no_attempt_log, no_event_validation, no_http, "
        "no_faust_sensor; bench/patched_worker.py); never rewrites BENCHMARKS.md",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="do not rewrite BENCHMARKS.md (runs with --quick or --only, and runs with a result "
        "not measured, never rewrite it)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="abort the run after this long (default 4.5 with --quick, 27 otherwise)",
    )
    return parser


def _selected(args: argparse.Namespace, sizes: Sizes) -> list[str]:
    names = list(args.only or ORDER)
    if not args.only and not sizes.isolation_slow:
        names.remove("isolation_slow")
    if args.profile and PROFILE_TARGETS[args.profile] not in names:
        names.append(PROFILE_TARGETS[args.profile])
    if NEEDS_FANOUT_1 & set(names) and "fanout_1" not in names and args.paced_rate is None:
        names.insert(0, "fanout_1")
    return [n for n in ORDER if n in names]


def _emit(result: dict[str, Any], results: list[dict[str, Any]]) -> None:
    results.append(result)
    print(json.dumps(result), flush=True)


async def _run(
    args: argparse.Namespace,
    procs: Procs,
    broker: EmbeddedBroker,
    workdir: Path,
    meta: dict[str, Any],
    results: list[dict[str, Any]],
) -> None:
    run_started = time.monotonic()
    sizes = Sizes.for_mode(args.quick)
    names = _selected(args, sizes)
    force = None if args.receiver == "auto" else args.receiver
    receiver = start_fast_receiver(procs, workdir, sizes.endpoints, force=force)
    meta["receiver"] = receiver.describe()
    meta["receiver_kind"] = receiver.kind
    print(f"bench: receiver: {receiver.describe()}", file=sys.stderr, flush=True)
    print(f"bench: scenarios: {', '.join(names)}", file=sys.stderr, flush=True)
    urls = [receiver.url(i) for i in range(sizes.endpoints)]
    refused = receiver.unverified()

    print("bench: ceilings ...", file=sys.stderr, flush=True)
    loop_kind = Settings().event_loop  # the worker's default; the ceilings run on it too
    top = await _safe(
        "ceiling_aiohttp",
        ceilings.aiohttp_ceiling(urls, sizes.aiohttp_requests, 32, loop=loop_kind),
    )
    top["receiver"] = receiver.kind
    refused = await _refusals(top, receiver, refused)
    _emit(top, results)
    ceiling = top.get("deliveries_per_s") or 0.0
    kafka_topic = f"bench-{meta['run_id']}-kafka-ceiling"
    kafka = await _safe(
        "ceiling_kafka_consume",
        ceilings.kafka_ceiling(broker.bootstrap_servers, kafka_topic, sizes.kafka_records),
    )
    try:
        kafka["cpu_costs_us"] = ceilings.cpu_costs()
    except Exception as exc:  # the bridge's internals moved: say so, go on
        kafka["cpu_costs_us"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        kafka["end_offsets_rtt_ms"] = await asyncio.wait_for(
            ceilings.end_offsets_rtt(broker.bootstrap_servers, kafka_topic), 60
        )
    except Exception as exc:
        kafka["end_offsets_rtt_ms"] = None
        kafka["end_offsets_error"] = f"{type(exc).__name__}: {exc}"[:300]
    _emit(kafka, results)
    floor = await _safe(
        "ceiling_kafka_latency",
        ceilings.kafka_latency_floor(
            broker.bootstrap_servers, f"bench-{meta['run_id']}-kafka-latency", 200.0, 4.0
        ),
    )
    _emit(floor, results)
    for name, coroutine in (
        ("ceiling_httpx_8", ceilings.httpx_ceiling(urls, sizes.httpx_requests, 8)),
        (
            "ceiling_bridge_sender",
            ceilings.bridge_sender_ceiling(urls, sizes.sender_requests, 32, loop=loop_kind),
        ),
    ):
        _check_stop()
        extra = await _safe(name, coroutine)
        rate = extra.get("deliveries_per_s")
        extra["ratio"] = round(rate / ceiling, 4) if rate and ceiling else None
        extra["ceiling_per_s"] = ceiling or None
        refused = await _refusals(extra, receiver, refused)
        _emit(extra, results)

    ctx = Context(
        procs=procs,
        bootstrap=broker.bootstrap_servers,
        receiver=receiver,
        workdir=workdir,
        out_dir=OUT,
        python=sys.executable,
        sizes=sizes,
        run_id=meta["run_id"],
        ceiling=ceiling,
        latency_floor_ms=floor.get("p50_ms"),
        profile=args.profile,
        profile_format=args.profile_format,
        profile_seconds=120 if not args.quick else 60,
        paced_rate=args.paced_rate,
    )
    mode = "quick" if args.quick else "full"
    budget = RUN_BUDGET[mode]
    for name in names:
        _check_stop()
        remaining = budget - (time.monotonic() - run_started)
        if remaining < 20:
            _emit(
                {
                    "name": name,
                    "deliveries_per_s": None,
                    "p50_ms": None,
                    "p99_ms": None,
                    "ceiling_per_s": ctx.ceiling,
                    "ratio": None,
                    "error": f"skipped: the run's {budget:.0f} s budget is spent",
                },
                results,
            )
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        timeout = LONG_SCENARIO_TIMEOUT.get(name, SCENARIO_TIMEOUT)[mode]
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(ALL_SCENARIOS[name](ctx), min(timeout, remaining))
        except TimeoutError:
            result = _failed(
                name,
                ctx.ceiling,
                f"TimeoutError: the scenario did not finish in its {min(timeout, remaining):.0f} s",
            )
        except Exception as exc:  # one scenario's failure is reported, the run goes on
            result = _failed(name, ctx.ceiling, f"{type(exc).__name__}: {str(exc)[-1500:]}")
        result["scenario_s"] = round(time.monotonic() - started, 1)
        _check_stop()
        refused = await _refusals(result, receiver, refused)
        _emit(result, results)
    meta["profile_summary"] = ctx.profile_summary


async def _refusals(
    result: dict[str, Any], receiver: Receiver, before: Counter[str]
) -> Counter[str]:
    """Make ``result`` an error if the receiver refused to count requests as deliveries since
    it had refused ``before`` (a body not signed with its webhook's secret: the arrivals the
    result rests on are not all deliveries); returns the receiver's refusals now."""
    await asyncio.sleep(0.2)  # the receiver writes its logs every 0.1 s
    now = receiver.unverified()
    refused = now - before
    if refused:
        note = f"the receiver refused {refused.total()} requests: {dict(refused)}"
        result["error"] = f"{result['error']}; {note}" if result.get("error") else note
    return now


#: The signal that asked the run to stop, once one did.
_STOP: list[int] = []


def _check_stop() -> None:
    if _STOP:
        raise KeyboardInterrupt(f"signal {_STOP[0]}")


async def _guarded(coroutine: Awaitable[None], seconds: float) -> None:
    """Run the benchmark with a deadline; SIGINT and SIGTERM stop it between awaits (and no
    scenario may swallow that: the loop checks after each one), then everything is stopped."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(signum: int) -> None:
        if not _STOP:
            _STOP.append(signum)
            print(f"bench: signal {signum}; stopping", file=sys.stderr, flush=True)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await asyncio.wait_for(coroutine, seconds)
    except asyncio.CancelledError:
        if _STOP:
            raise KeyboardInterrupt(f"signal {_STOP[0]}") from None
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    _check_stop()


async def _safe(name: str, coroutine: Awaitable[Mapping[str, Any]]) -> dict[str, Any]:
    """A ceiling's result, or a result saying why it could not be measured."""
    try:
        return dict(await coroutine)
    except Exception as exc:  # a ceiling must not end the run
        return _failed(name, None, f"{type(exc).__name__}: {str(exc)[-500:]}")


def _failed(name: str, ceiling: float | None, error: str) -> dict[str, Any]:
    """The result of a scenario or ceiling that could not be measured, saying why."""
    return {
        "name": name,
        "deliveries_per_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "ceiling_per_s": ceiling,
        "ratio": None,
        "error": error,
    }


def _install_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _install_sigterm()
    if args.worker_patch:
        from . import kit

        kit.WORKER_PATCH = args.worker_patch
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-bridge-bench-"))
    run_id = uuid.uuid4().hex[:6]
    meta: dict[str, Any] = {
        "run_id": run_id,
        "mode": "quick" if args.quick else "full",
        "argv": ["bench/run", *(argv if argv is not None else sys.argv[1:])],
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "loadavg_start": os.getloadavg(),
        "workdir": str(workdir),
        "python": sys.executable,
    }
    meta.update(report.machine())
    meta["bridge_commit"] = report.bridge_commit()
    meta["other_busy_processes_start"] = report.busy_processes(exclude_self=True)
    print(f"bench: run {run_id}, logs in {workdir}", file=sys.stderr, flush=True)
    procs = Procs(workdir)
    broker = EmbeddedBroker(free_port(), log_path=str(workdir / "tansu.log"))
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    limit = args.max_minutes or (4.5 if args.quick else 27.0)
    status = 0
    try:
        broker.start()
        print(f"bench: embedded broker at {broker.bootstrap_servers}", file=sys.stderr, flush=True)
        asyncio.run(_guarded(_run(args, procs, broker, workdir, meta, results), limit * 60))
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything", file=sys.stderr, flush=True)
        status = 130
    except TimeoutError:
        print(f"bench: run exceeded {limit} minutes; stopping", file=sys.stderr, flush=True)
        status = 1
    finally:
        procs.stop_all()
        broker.stop()
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["other_busy_processes_end"] = report.busy_processes(exclude_self=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (OUT / f"results-{stamp}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2, default=str)
    )
    print(
        f"bench: done in {meta['seconds']} s; results in bench/out/results-{stamp}.json",
        file=sys.stderr,
        flush=True,
    )
    meta["worker_patch"] = args.worker_patch
    failed = [r["name"] for r in results if r.get("error")]
    if failed:
        status = status or 1
    if _writes_benchmarks(args, status, results):
        report.write_benchmarks(REPO / "BENCHMARKS.md", meta, results)
        print("bench: BENCHMARKS.md rewritten", file=sys.stderr, flush=True)
    elif failed:
        print(
            f"bench: BENCHMARKS.md not rewritten: {', '.join(failed)} not measured",
            file=sys.stderr,
            flush=True,
        )
    return status


def _writes_benchmarks(
    args: argparse.Namespace, status: int, results: list[dict[str, Any]]
) -> bool:
    """Whether the run rewrites BENCHMARKS.md: a full run of every scenario at its own rates,
    with nothing in the way (``--no-write``), that ended (exit status 0) with every result
    measured. A ``--quick`` run's sizes are not the ones the file states (its
    ``subscriptions_100k`` writes 20,000), and a result with an error would replace a
    measurement by its absence."""
    if status != 0 or not results or any(r.get("error") for r in results):
        return False
    partial = args.only or args.worker_patch or args.paced_rate is not None
    return not (args.quick or args.no_write or partial)


if __name__ == "__main__":
    sys.exit(main())
