"""The scenarios: each starts its own worker process(es) on fresh topics and group, measures, and
returns one result dict (name, deliveries_per_s, p50_ms, p99_ms, ceiling_per_s, ratio, extras)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

from bridge.config import Settings

from . import ceilings, kit
from .ceilings import WINDOW_S
from .kit import Hook, Published, Worker, metric_sum, percentile, window_quantile
from .procs import Procs, free_port, rss_kib
from .profiling import Profiler, format_summary, summarise
from .receivers import Arrivals, Receiver, start_aiohttp, unverified
from .signatures import webhook_secret

DELIVERED = "webhook_bridge_deliveries_total"


@dataclass
class Sizes:
    """How much each scenario does; ``--quick`` shrinks everything to fit in three minutes."""

    aiohttp_requests: int
    httpx_requests: int
    sender_requests: int
    kafka_records: int
    fanout_1_events: int
    fanout_10_events: int
    paced_seconds: float
    subscriptions: int
    recovery_seconds: float
    naive_events: int
    isolation_slow: bool
    endpoints: int = 16
    #: ``--quick`` (bench/control_plane.py sizes its scenarios from it).
    quick: bool = False

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                aiohttp_requests=20000,
                httpx_requests=2000,
                sender_requests=3000,
                kafka_records=50000,
                fanout_1_events=5000,
                fanout_10_events=600,
                paced_seconds=8.0,
                subscriptions=20000,
                recovery_seconds=45.0,
                naive_events=800,
                isolation_slow=False,
                quick=True,
            )
        return cls(
            aiohttp_requests=60000,
            httpx_requests=8000,
            sender_requests=8000,
            kafka_records=200000,
            fanout_1_events=30000,
            fanout_10_events=3000,
            paced_seconds=30.0,
            subscriptions=100000,
            recovery_seconds=90.0,
            naive_events=4000,
            isolation_slow=True,
        )


@dataclass
class Context:
    """What every scenario shares within one run."""

    procs: Procs
    bootstrap: str
    receiver: Receiver
    workdir: Path
    out_dir: Path
    python: str
    sizes: Sizes
    run_id: str
    ceiling: float
    profile: str | None = None
    profile_format: str = "raw"
    profile_seconds: int = 60
    fanout_1_rate: float | None = None
    #: ``--paced-rate``: the paced scenarios' rate, instead of half the fan-out 1 rate.
    paced_rate: float | None = None
    latency_floor_ms: float | None = None
    baseline_rss_kib: int | None = None
    profile_summary: str | None = None
    #: Workers profiled so far, by name: a name run again (fanout_1_log's rounds) is profiled once.
    profiled: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def prefix(self, name: str) -> str:
        return f"bench-{self.run_id}-{name}-{uuid.uuid4().hex[:4]}"

    def settings(self, name: str, **changes: Any) -> Settings:
        return kit.make_settings(self.bootstrap, self.prefix(name), self.workdir, **changes)

    def urls(self, n: int | None = None) -> list[str]:
        return [self.receiver.url(i) for i in range(n or self.sizes.endpoints)]

    def log(self, text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def _result(
    ctx: Context, name: str, rate: float | None, p50: float | None, p99: float | None, **extra: Any
) -> dict[str, Any]:
    ratio = round(rate / ctx.ceiling, 4) if rate and ctx.ceiling else None
    return {
        "name": name,
        "deliveries_per_s": None if rate is None else round(rate, 1),
        "p50_ms": _ms(p50),
        "p99_ms": _ms(p99),
        "ceiling_per_s": round(ctx.ceiling, 1),
        "ratio": ratio,
        **extra,
    }


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


async def _wait_arrivals(
    arrivals: Arrivals,
    expected: set[str],
    timeout: float,
    alive: Callable[[], bool] | None = None,
    on_first: Callable[[], None] | None = None,
    stop_at: int | None = None,
    idle: float | None = None,
) -> tuple[dict[str, float], bool]:
    """Poll the receiver log until every expected delivery id arrived (first arrival time of
    each), or the deadline, or (with ``idle``) that many seconds pass after some arrivals
    without a new one (a stalled worker). Returns (arrivals, complete)."""
    first: dict[str, float] = {}
    seen = 0
    deadline = time.monotonic() + timeout
    progress = time.monotonic()
    while True:
        arrivals.poll()
        before = len(first)
        for i in range(seen, len(arrivals.ids)):
            delivery = arrivals.ids[i]
            if delivery in expected and delivery not in first:
                first[delivery] = arrivals.times[i]
                if on_first is not None and len(first) == 1:
                    on_first()
        seen = len(arrivals.ids)
        now = time.monotonic()
        if len(first) > before:
            progress = now
        if len(first) >= len(expected):
            return first, True
        if stop_at is not None and len(first) >= stop_at:
            return first, False
        if now > deadline:
            return first, False
        if idle is not None and first and now - progress > idle:
            return first, False
        if alive is not None and not alive():
            return first, False
        await asyncio.sleep(0.05)


def _window_rate(times: Sequence[float]) -> tuple[float | None, float | None]:
    """Deliveries/s between the first and last arrival, and that window in seconds."""
    if len(times) < 2:
        return None, None
    ordered = sorted(times)
    span = ordered[-1] - ordered[0]
    if span <= 0:
        return None, None
    return (len(ordered) - 1) / span, span


class WorkerExtras(TypedDict):
    """What a worker's metrics said at the end of a scenario (reported with its result)."""

    events_consumed: float
    in_flight_at_end: float
    consumer_lag_at_end: float
    attempts_failed: float
    retries_scheduled: float
    dead_letters: float
    sync_timeouts: float
    worker_rss_mib: float


def _worker_extras(worker: Worker, metrics: dict[str, float]) -> WorkerExtras:
    return {
        "events_consumed": metric_sum(metrics, "webhook_bridge_events_total"),
        "in_flight_at_end": metric_sum(metrics, "webhook_bridge_in_flight_requests"),
        "consumer_lag_at_end": metric_sum(metrics, "webhook_bridge_consumer_lag"),
        "attempts_failed": metric_sum(
            metrics, "webhook_bridge_delivery_attempts_total", outcome="failure"
        ),
        "retries_scheduled": metric_sum(metrics, "webhook_bridge_retries_scheduled_total"),
        "dead_letters": metric_sum(metrics, "webhook_bridge_dead_letters_total"),
        "sync_timeouts": metric_sum(metrics, "webhook_bridge_subscription_sync_timeouts_total"),
        "worker_rss_mib": round((worker.rss_kib() or 0) / 1024, 1),
    }


def _http_quantiles(metrics: dict[str, float]) -> tuple[float | None, float | None]:
    name = "webhook_bridge_http_request_duration_seconds"
    return (
        kit.histogram_quantile(metrics, name, 0.50, outcome="success"),
        kit.histogram_quantile(metrics, name, 0.99, outcome="success"),
    )


async def _start_ready(
    ctx: Context, settings: Settings, label: str, timeout: float = 120.0
) -> tuple[Worker, float]:
    worker = kit.start_worker(ctx.procs, settings, label, ctx.python)
    ready = await worker.wait_ready(timeout)
    return worker, ready


def _stop(ctx: Context, worker: Worker) -> None:
    ctx.procs.stop(worker.proc, grace=10.0)


def _start_profiler(ctx: Context, name: str, pid: int) -> Profiler | None:
    if ctx.profile != name or name in ctx.profiled:
        return None
    ctx.profiled.add(name)
    suffix = {"raw": "txt", "flamegraph": "svg", "speedscope": "json"}[ctx.profile_format]
    output = ctx.out_dir / f"profile-{name}.{suffix}"
    if output.exists():
        output.unlink()
    ctx.log(f"py-spy recording {name} (pid {pid}) to {output}")
    return Profiler.start(pid, output, fmt=ctx.profile_format, max_seconds=ctx.profile_seconds)


def _finish_profiler(
    ctx: Context, name: str, profiler: Profiler | None, result: dict[str, Any]
) -> None:
    if profiler is None:
        return
    ok = profiler.finish()
    result["profiled"] = True
    result["profile"] = str(profiler.output)
    if not ok:
        result["profile_error"] = profiler.log_text()[-500:]
        return
    if profiler.fmt == "raw":
        summary = summarise(profiler.output)
        result["profile_top"] = summary["by_component"]
        text = format_summary(summary, f"py-spy profile of {name}")
        (ctx.out_dir / f"profile-{name}.summary.md").write_text(text)
        (ctx.out_dir / f"profile-{name}.summary.json").write_text(json.dumps(summary, indent=2))
        ctx.profile_summary = text
        print(text, file=sys.stderr, flush=True)


# -- backlog throughput: fanout_1 and fanout_10 ------------------------------------------------

#: Seconds after /readyz without a single delivery of a pre-published backlog that count as
#: "the backlog was skipped".
SKIP_TIMEOUT = 6.0
#: Seconds without a new delivery, once deliveries started, after which a backlog counts as
#: stalled (the result then says how many arrived and the run goes on).
IDLE_TIMEOUT = 10.0


async def _backlog_skipped(
    arrivals: Arrivals, expected: set[str], alive: Callable[[], bool]
) -> bool:
    """True when not one delivery of the pre-published backlog arrives within SKIP_TIMEOUT of
    the worker being ready.

    This is a bug found with this harness (faust-streaming 0.15.3 under the bridge): a worker
    of a *new* consumer group fetches the events partitions while its tables are still
    recovering, before those partitions are active; Faust's ``Consumer.getmany`` drops records
    of inactive partitions, the fetch position has already moved past them, and the "seek to
    committed offsets" after recovery does nothing because the group has no committed offset.
    Those records are never delivered, and later commits go past them (at-least-once violated
    for events published before the group's first commit). With a small backlog (one fetch per
    partition) it is all or nothing, in about half the starts here; with a larger one the first
    fetch of every partition (~1 MB, ~1,800 events) was lost in most starts.
    """
    got, _ = await _wait_arrivals(arrivals, expected, SKIP_TIMEOUT, alive, stop_at=1)
    return not got


@dataclass(frozen=True)
class Beside:
    """A second worker of a backlog run, on its topics and in its group (own web port and data
    dir), started and ready before the delivering one: e.g. an API-role worker holding the
    delivery log of the attempts the other writes."""

    label: str
    #: Its settings, as changes to the delivering worker's.
    changes: dict[str, Any]
    #: Records it has processed so far (polled after the deliveries until it has one per
    #: delivery); None when it cannot tell.
    processed: Callable[[Worker], Awaitable[int | None]]


class Alongside(Protocol):
    """Load a backlog run puts on its delivering worker besides the deliveries (e.g.
    recoveries scanning the events topic): set up before the backlog is published, started
    once the worker is ready, its figures taken once the deliveries are in."""

    async def prepare(self, settings: Settings) -> None: ...

    async def start(self, worker: Worker) -> None: ...

    async def figures(self, worker: Worker) -> dict[str, Any]: ...


async def _start_beside(ctx: Context, settings: Settings, name: str, beside: Beside) -> Worker:
    companion = settings.replace(
        web_port=free_port(),
        data_dir=f"{settings.data_dir}-{beside.label}",
        **beside.changes,
    )
    worker = kit.start_worker(ctx.procs, companion, f"{name}_{beside.label}", ctx.python)
    try:
        await worker.wait_ready(120.0)
    except BaseException:
        _stop(ctx, worker)
        raise
    return worker


async def _beside_caught_up(
    beside: Beside, worker: Worker, target: int, cpu_start: float, last_arrival: float | None
) -> dict[str, Any]:
    """Wait (bounded) until the companion has processed ``target`` records; its CPU from the
    start of the deliveries to then, per record."""
    started = time.monotonic()
    deadline = started + max(30.0, target / 1000)
    done: int | None = None
    while time.monotonic() < deadline and worker.proc.alive():
        done = await beside.processed(worker)
        if done is not None and done >= target:
            break
        await asyncio.sleep(0.1)
    cpu = worker.cpu_seconds() - cpu_start
    prefix = f"{beside.label}_"
    out: dict[str, Any] = {
        prefix + "records": done,
        prefix + "cpu_s": round(cpu, 3),
        prefix + "cpu_ms_per_record": round(1000 * cpu / done, 3) if done else None,
        prefix + "caught_up_after_last_delivery_s": None
        if last_arrival is None or done is None or done < target
        else round(max(0.0, time.time() - last_arrival), 2),
        prefix + "rss_mib": round((worker.rss_kib() or 0) / 1024, 1),
    }
    if done is None or done < target:
        out[prefix + "error"] = f"{beside.label} processed {done} of {target} records"
    return out


async def backlog(
    ctx: Context,
    name: str,
    nsites: int,
    per_site: int,
    events: int,
    extra_settings: dict[str, Any] | None = None,
    beside: Beside | None = None,
    alongside: Alongside | None = None,
) -> dict[str, Any]:
    settings = ctx.settings(name, **(extra_settings or {}))
    await kit.prepare_topics(settings)
    hooks, by_site, sites = kit.make_hooks(settings.group_id, nsites, per_site, ctx.urls())
    await kit.write_hooks(settings, hooks)
    if alongside is not None:
        await alongside.prepare(settings)
    published = Published()
    await kit.publish_backlog(settings, sites, events, published)
    expected = set(published.expected_ids(by_site))
    arrivals = ctx.receiver.arrivals()
    load_start = _loadavg()
    # The companion joins the group first: its join's rebalance is over before deliveries start.
    companion = None if beside is None else await _start_beside(ctx, settings, name, beside)
    worker = kit.start_worker(ctx.procs, settings, name, ctx.python)
    profiler: Profiler | None = None
    try:
        ready = await worker.wait_ready(120.0)
        rss_ready = worker.rss_kib()
        skipped = await _backlog_skipped(arrivals, expected, worker.proc.alive)
        if skipped:
            # The worker read the backlog during its start-up and dropped it (see
            # _backlog_skipped). Measure throughput on a second backlog published now instead.
            ctx.log(f"{name}: the pre-published backlog was skipped at start; publishing again")
            published = Published()
            await kit.publish_backlog(settings, sites, events, published)
            expected = set(published.expected_ids(by_site))
        if alongside is not None:
            await alongside.start(worker)
        cpu_start = worker.cpu_seconds()
        companion_cpu_start = None if companion is None else companion.cpu_seconds()
        started = time.monotonic()
        started_wall = time.time()
        profiler = _start_profiler(ctx, name, worker.pid)
        first, complete = await _wait_arrivals(
            arrivals,
            expected,
            timeout=max(60.0, len(expected) / 20),
            alive=worker.proc.alive,
            idle=IDLE_TIMEOUT,
        )
        # CPU over the delivering phase: up to the last arrival, not the idle wait after it.
        elapsed = (max(first.values()) - started_wall) if first else time.monotonic() - started
        cpu = worker.cpu_seconds() - cpu_start
        beside_figures: dict[str, Any] = {}
        if beside is not None and companion is not None and companion_cpu_start is not None:
            last = max(first.values()) if first else None
            beside_figures = await _beside_caught_up(
                beside, companion, len(first), companion_cpu_start, last
            )
            beside_figures[f"{beside.label}_cpu_ms_per_delivery"] = (
                round(1000 * beside_figures[f"{beside.label}_cpu_s"] / len(first), 3)
                if first
                else None
            )
        alongside_figures = {} if alongside is None else await alongside.figures(worker)
        profiled: dict[str, Any] = {}
        _finish_profiler(ctx, name, profiler, profiled)
        profiler = None
        metrics = await asyncio.to_thread(worker.metrics)
        rate, window = _window_rate(list(first.values()))
        p50, p99 = _http_quantiles(metrics)
        arrivals.poll()
        counts = Counter(arrivals.ids)
        result = _result(
            ctx,
            name,
            rate,
            p50,
            p99,
            latency_kind="worker HTTP request duration (histogram, bucket-interpolated)",
            webhooks=len(hooks),
            events=events,
            deliveries_expected=len(expected),
            deliveries_seen=len(first),
            complete=complete,
            duplicates=sum(c - 1 for d, c in counts.items() if d in expected and c > 1),
            delivered_metric=metric_sum(metrics, DELIVERED, outcome="delivered"),
            window_s=None if window is None else round(window, 2),
            ready_s=round(ready, 2),
            worker_cpu_pct=round(100 * cpu / elapsed, 1) if elapsed > 0 else None,
            worker_cpu_ms_per_delivery=round(1000 * cpu / len(first), 3) if first else None,
            endpoints=len(ctx.urls()),
            loadavg_start=load_start,
            loadavg_end=_loadavg(),
            worker_rss_ready_mib=round((rss_ready or 0) / 1024, 1),
            backlog_skipped_at_start=skipped,
            **_worker_extras(worker, metrics),
            **beside_figures,
            **alongside_figures,
        )
        if rss_ready and name == "fanout_1":
            ctx.baseline_rss_kib = rss_ready
        result.update(profiled)
        if not complete:
            result["error"] = f"only {len(first)} of {len(expected)} deliveries arrived"
            consumed = result["events_consumed"]
            if not skipped and consumed < events and not result["consumer_lag_at_end"]:
                # The worker is idle at the end of its partitions yet never saw these events:
                # the start-up bug of _backlog_skipped, for part of the backlog (the records of
                # the first fetch of each partition, ~1 MB each).
                result["events_skipped_at_start"] = int(events - consumed)
                result["error"] += (
                    f"; the worker consumed {consumed:g} of {events} events and reports no lag: "
                    "the rest were skipped at start (first fetch of each partition dropped)"
                )
        return result
    finally:
        if profiler is not None:
            profiler.finish()
        _stop(ctx, worker)
        if companion is not None:
            _stop(ctx, companion)


async def fanout_1(ctx: Context) -> dict[str, Any]:
    """One delivery per event: 1000 sites with one webhook each, spread over the endpoints."""
    result = await backlog(ctx, "fanout_1", 1000, 1, ctx.sizes.fanout_1_events)
    ctx.fanout_1_rate = result["deliveries_per_s"]
    return result


async def fanout_10(ctx: Context) -> dict[str, Any]:
    """Ten webhooks matching every event: 100 sites with ten webhooks each."""
    return await backlog(ctx, "fanout_10", 100, 10, ctx.sizes.fanout_10_events)


# -- paced load: latency_half_load and isolation ---------------------------------------------------


def _half_rate(ctx: Context) -> float:
    if ctx.paced_rate is not None:
        return ctx.paced_rate
    rate = ctx.fanout_1_rate or 100.0
    return max(10.0, rate / 2)


def _offered(ctx: Context, rate: float) -> dict[str, Any]:
    """The load a paced scenario chose: events/s, and as a fraction of the run's fan-out 1 rate
    (None with ``--paced-rate``). Its result has no ``ratio``: the delivery rate of a worker
    that keeps up is the offered one, so rate / ceiling would be this choice, not a measurement."""
    fanout_1 = ctx.fanout_1_rate if ctx.paced_rate is None else None
    return {
        "offered_per_s": round(rate, 1),
        "offered_vs_fanout_1": round(rate / fanout_1, 3) if fanout_1 else None,
        "ratio": None,
    }


@dataclass
class PacedRun:
    """What :func:`paced` measured; the scenarios shape their results from it."""

    settings: Settings
    #: Events published.
    published: int
    #: Seconds the publishing took.
    publish_s: float
    #: Deliveries to the measured healthy webhooks: expected, and arrived.
    healthy_expected: int
    healthy_delivered: int
    #: Every expected healthy delivery arrived before the drain period ended.
    complete: bool
    #: Event timestamp -> first arrival (seconds) of each healthy delivery, after the warm-up
    #: and during it, and the p99 of each window of ``WINDOW_S``.
    latencies: list[float]
    warmup_latencies: list[float]
    p99_by_window: list[float | None]
    #: Event timestamp -> the broker's acknowledgement of its write (seconds).
    acks: list[float]
    #: Healthy deliveries per second between their first and last arrival ((n - 1) / (last -
    #: first)), and that window in seconds: the rate the worker delivered at, the offered one
    #: while it keeps up, lower when its deliveries trail behind the publishing.
    healthy_rate: float | None
    arrival_window_s: float | None
    ready_s: float
    worker_cpu_pct: float | None
    metrics: dict[str, float]
    extras: WorkerExtras
    loadavg_start: float
    loadavg_end: float
    #: The profile's summary when this scenario was profiled.
    profiled: dict[str, Any]


async def paced(
    ctx: Context,
    name: str,
    rate: float,
    seconds: float,
    *,
    hook_urls: Callable[[int], str] | None = None,
    measured: Callable[[int], bool] | None = None,
    nsites: int = 100,
    extra_settings: dict[str, Any] | None = None,
    drain: float = 20.0,
) -> PacedRun:
    """Publish at ``rate`` for ``seconds`` to a ready worker; latency from each event's timestamp
    to its arrival at the receiver. Returns raw measurements (the callers shape results)."""
    settings = ctx.settings(name, **(extra_settings or {}))
    await kit.prepare_topics(settings)
    urls = ctx.urls()
    hooks: list[Hook] = []
    by_site: dict[str, list[Hook]] = {}
    sites = []
    for s in range(nsites):
        site, user = f"{settings.group_id}-site-{s}", f"{settings.group_id}-user-{s}"
        url = hook_urls(s) if hook_urls is not None else urls[s % len(urls)]
        hook_id = f"{settings.group_id}-wh-{s}"
        hook = Hook(hook_id, url, webhook_secret(hook_id), site, user)
        hooks.append(hook)
        by_site[site] = [hook]
        sites.append((site, user))
    await kit.write_hooks(settings, hooks)
    worker, ready = await _start_ready(ctx, settings, name)
    profiler = _start_profiler(ctx, name, worker.pid)
    try:
        arrivals = ctx.receiver.arrivals()
        published = Published()
        load_start = _loadavg()
        cpu_start = worker.cpu_seconds()
        t0 = time.monotonic()
        sent = await kit.publish_paced(settings, sites, rate, seconds, published)
        publish_s = time.monotonic() - t0
        expected_all = published.expected_ids(by_site)
        healthy_urls = set(urls)
        url_of = {h.id: h.url for h in hooks}
        counted = {h.id for s, h in enumerate(hooks) if measured is None or measured(s)}
        healthy = {
            d for d, (_, wh) in expected_all.items() if url_of[wh] in healthy_urls and wh in counted
        }
        first, complete = await _wait_arrivals(
            arrivals, healthy, timeout=drain, alive=worker.proc.alive, idle=5.0
        )
        cpu = worker.cpu_seconds() - cpu_start
        wall = time.monotonic() - t0
        metrics = await asyncio.to_thread(worker.metrics)
        profiled: dict[str, Any] = {}
        _finish_profiler(ctx, name, profiler, profiled)
        profiler = None
        latencies, warmup, by_window = _arrival_latencies(first, expected_all, published)
        healthy_rate, window = _window_rate(list(first.values()))
        return PacedRun(
            warmup_latencies=warmup,
            settings=settings,
            published=sent,
            publish_s=publish_s,
            healthy_expected=len(healthy),
            healthy_delivered=len(first),
            complete=complete,
            latencies=latencies,
            p99_by_window=by_window,
            acks=published.acks,
            healthy_rate=healthy_rate,
            arrival_window_s=window,
            ready_s=ready,
            worker_cpu_pct=round(100 * cpu / wall, 1) if wall > 0 else None,
            metrics=metrics,
            extras=_worker_extras(worker, metrics),
            loadavg_start=load_start,
            loadavg_end=_loadavg(),
            profiled=profiled,
        )
    finally:
        if profiler is not None:
            profiler.finish()
        _stop(ctx, worker)


#: Seconds at the start of a paced load whose latencies are reported apart (``warmup_*``).
WARMUP_S = 2.0


def _arrival_latencies(
    first: dict[str, float], expected: dict[str, tuple[str, str]], published: Published
) -> tuple[list[float], list[float], list[float | None]]:
    """Event timestamp -> first arrival of each delivery: (after the warm-up, during it, p99 by
    window). The first WARMUP_S of load are reported apart: a worker reports ready about a
    second before it delivers at full speed (BENCHMARKS.md), which is start-up, not steady
    state."""
    begin = min(published.stamps.values(), default=0.0)
    latencies: list[float] = []
    warmup: list[float] = []
    samples = []
    for d, arrived in first.items():
        stamp = published.stamps[expected[d][0]]
        (warmup if stamp < begin + WARMUP_S else latencies).append(arrived - stamp)
        samples.append((stamp, arrived - stamp))
    return latencies, warmup, window_quantile(samples, begin, WINDOW_S, 0.99)


def _hooks_file(ctx: Context, settings: Settings, by_site: dict[str, list[Hook]]) -> Path:
    """The webhooks of a loop that reads them from a file (bench/naive_app.py,
    bench/raw_loop.py): ``{"site id": [{"id", "name", "url", "secret"}, ...]}``."""
    path = ctx.workdir / f"{settings.group_id}-hooks.json"
    path.write_text(
        json.dumps(
            {
                site: [
                    {"id": h.id, "name": f"bench {h.id}", "url": h.url, "secret": h.secret}
                    for h in site_hooks
                ]
                for site, site_hooks in by_site.items()
            }
        )
    )
    return path


async def raw_loop_latency(ctx: Context, rate: float, seconds: float) -> dict[str, Any]:
    """bench/raw_loop.py, its own process, under the same paced publishing as the worker (same
    rate, length, sites and receiver): the shortest topic-to-receiver loop's latency at this
    load on this machine."""
    settings = ctx.settings("raw_loop")
    await kit.prepare_topics(settings)
    hooks, by_site, sites = kit.make_hooks(settings.group_id, 100, 1, ctx.urls())
    hooks_file = _hooks_file(ctx, settings, by_site)
    ready_file = ctx.workdir / f"{settings.group_id}-ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        RAW_BROKER=ctx.bootstrap,
        RAW_TOPIC=settings.events_topic,
        RAW_WEBHOOKS=str(hooks_file),
        RAW_FETCH_WAIT_MS=str(round(settings.kafka_fetch_max_wait * 1000)),
        RAW_READY=str(ready_file),
        PYTHONUNBUFFERED="1",
    )
    proc = ctx.procs.spawn("raw_loop", [ctx.python, "-m", "bench.raw_loop"], env=env)
    try:
        deadline = time.monotonic() + 30.0
        while not ready_file.exists():
            if not proc.alive() or time.monotonic() > deadline:
                return {"error": f"raw loop did not start: {proc.tail(10)}"}
            await asyncio.sleep(0.05)
        arrivals = ctx.receiver.arrivals()
        published = Published()
        cpu_start = kit.cpu_seconds(proc.pid)
        t0 = time.monotonic()
        await kit.publish_paced(settings, sites, rate, seconds, published)
        expected = published.expected_ids(by_site)
        first, complete = await _wait_arrivals(
            arrivals, set(expected), timeout=20.0, alive=proc.alive, idle=5.0
        )
        cpu = kit.cpu_seconds(proc.pid) - cpu_start
        wall = time.monotonic() - t0
    finally:
        ctx.procs.stop(proc, grace=3.0)
    latencies, _, by_window = _arrival_latencies(first, expected, published)
    out: dict[str, Any] = {
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        f"p99_by_{WINDOW_S:g}s_ms": [_ms(q) for q in by_window],
        "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
    }
    if not complete:
        out["error"] = f"{len(expected) - len(first)} of {len(expected)} deliveries missing"
    return out


async def latency_half_load(ctx: Context) -> dict[str, Any]:
    """Publish at half the fan-out-1 rate; event timestamp -> receiver arrival. Then the same
    publishing, for as long, twice more: read by a raw aiokafka consumer with the worker's fetch
    wait (the broker's own latency at this load, the floor under the worker's), and by
    bench/raw_loop.py (the shortest loop to the receiver: the ceiling quoted against)."""
    rate = _half_rate(ctx)
    run = await paced(ctx, "latency_half_load", rate, ctx.sizes.paced_seconds)
    lat = run.latencies
    wait_ms = round(run.settings.kafka_fetch_max_wait * 1000)
    floor = await ceilings.kafka_latency_floor(
        ctx.bootstrap,
        f"{ctx.prefix('latency_half_load-floor')}.events",
        rate,
        ctx.sizes.paced_seconds,
        fetch_max_wait_ms=wait_ms,
    )
    raw = await raw_loop_latency(ctx, rate, ctx.sizes.paced_seconds)
    windows = f"p99_by_{WINDOW_S:g}s_ms"
    acks = run.acks
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    result = _result(
        ctx,
        "latency_half_load",
        run.healthy_rate,
        p50,
        p99,
        latency_kind="event timestamp -> receiver arrival (ms clocks, same machine)",
        **_offered(ctx, rate),
        arrival_window_s=_round(run.arrival_window_s),
        published=run.published,
        delivered=run.healthy_delivered,
        complete=run.complete,
        p90_ms=_ms(percentile(lat, 0.9)),
        broker_floor_p50_ms=ctx.latency_floor_ms,
        p50_vs_broker_floor=round(p50 * 1000 / ctx.latency_floor_ms, 2)
        if p50 is not None and ctx.latency_floor_ms
        else None,
        **{windows: [_ms(q) for q in run.p99_by_window]},
        publish_ack_p50_ms=_ms(percentile(acks, 0.5)),
        publish_ack_p99_ms=_ms(percentile(acks, 0.99)),
        same_load_floor_p50_ms=floor["p50_ms"],
        same_load_floor_p99_ms=floor["p99_ms"],
        **{f"same_load_floor_{windows}": floor[windows]},
        same_load_floor_fetch_wait_ms=wait_ms,
        raw_loop_p50_ms=raw.get("p50_ms"),
        raw_loop_p99_ms=raw.get("p99_ms"),
        **{f"raw_loop_{windows}": raw.get(windows)},
        raw_loop_cpu_pct=raw.get("cpu_pct"),
        p99_vs_raw_loop=round(p99 * 1000 / raw["p99_ms"], 2) if p99 and raw.get("p99_ms") else None,
        max_ms=_ms(max(lat) if lat else None),
        warmup_s=WARMUP_S,
        warmup_p50_ms=_ms(percentile(run.warmup_latencies, 0.5)),
        warmup_p99_ms=_ms(percentile(run.warmup_latencies, 0.99)),
        warmup_max_ms=_ms(max(run.warmup_latencies, default=None)),
        worker_cpu_pct=run.worker_cpu_pct,
        ready_s=round(run.ready_s, 2),
        loadavg_start=run.loadavg_start,
        loadavg_end=run.loadavg_end,
        **_stage_quantiles(run.metrics),
        **run.extras,
        **run.profiled,
    )
    problems = []
    if not run.complete:
        problems.append(f"{run.healthy_expected - run.healthy_delivered} not delivered")
    # The floor and the raw loop are what the worker's latency is quoted against: without them
    # the result is not measured.
    if floor.get("error"):
        problems.append(f"same-load floor: {floor['error']}")
    if raw.get("error"):
        result["raw_loop_error"] = raw["error"]
        problems.append(f"raw loop: {raw['error']}")
    if problems:
        result["error"] = "; ".join(problems)
    return result


def _stage_quantiles(metrics: dict[str, float]) -> dict[str, float | None]:
    """Where the latency goes, from the worker's histograms (whole run, warm-up included;
    interpolated within buckets): event timestamp -> record received by the pipeline ->
    matched after the freshness check."""
    out: dict[str, float | None] = {}
    stages = "webhook_bridge_event_stage_latency_seconds"
    for stage in ("received", "matched"):
        for q in (0.5, 0.99):
            value = kit.histogram_quantile(metrics, stages, q, stage=stage)
            out[f"{stage}_p{round(q * 100)}_ms"] = _ms(value)
    return out


async def _isolation(ctx: Context, name: str, mode: str, fault_seconds: float) -> dict[str, Any]:
    """10% of webhooks on a faulty endpoint (``hang``: answers after far longer than the 2 s
    timeout; ``slow``: answers 200 after ``fault_seconds``), the rest on the healthy receiver;
    paced at half the fan-out-1 rate; compared with a run of the same shape without the fault."""
    from .procs import free_port

    rate = _half_rate(ctx)
    port = free_port()
    proc, faulty_log = start_aiohttp(
        ctx.procs, ctx.workdir, f"{name}-receiver", [(port, mode, fault_seconds)]
    )
    faulty_url = f"http://127.0.0.1:{port}/hook"
    urls = ctx.urls()
    settings = {"http_timeout": 2.0, "breaker_threshold": 5}
    try:
        # Same shape, no fault: the faulty tenth points at the healthy receiver too.
        base = await paced(
            ctx,
            f"{name}_nofault",
            rate,
            ctx.sizes.paced_seconds,
            extra_settings=settings,
            measured=lambda s: s % 10 != 0,
        )
        fault = await paced(
            ctx,
            name,
            rate,
            ctx.sizes.paced_seconds,
            extra_settings=settings,
            hook_urls=lambda s: faulty_url if s % 10 == 0 else urls[s % len(urls)],
            measured=lambda s: s % 10 != 0,
        )
    finally:
        ctx.procs.stop(proc, grace=5.0)
    what = "hangs" if mode == "hang" else "answers after"
    lat, base_lat = fault.latencies, base.latencies
    p99, base_p99 = percentile(lat, 0.99), percentile(base_lat, 0.99)
    result = _result(
        ctx,
        name,
        fault.healthy_rate,
        percentile(lat, 0.5),
        p99,
        latency_kind="healthy webhooks: event timestamp -> receiver arrival",
        fault=f"10% of webhooks on an endpoint that {what} {fault_seconds:g}s; "
        "http_timeout 2s; breaker_threshold 5",
        **_offered(ctx, rate),
        arrival_window_s=_round(fault.arrival_window_s),
        no_fault_arrival_window_s=_round(base.arrival_window_s),
        healthy_delivered=fault.healthy_delivered,
        healthy_expected=fault.healthy_expected,
        no_fault_per_s=None if base.healthy_rate is None else round(base.healthy_rate, 1),
        no_fault_p50_ms=_ms(percentile(base_lat, 0.5)),
        no_fault_p99_ms=_ms(base_p99),
        rate_vs_no_fault=round(fault.healthy_rate / base.healthy_rate, 3)
        if fault.healthy_rate and base.healthy_rate
        else None,
        p99_vs_no_fault=round(p99 / base_p99, 2) if p99 and base_p99 else None,
        faulty_attempts_failed=fault.extras["attempts_failed"],
        retries_scheduled=fault.extras["retries_scheduled"],
        circuits_open=metric_sum(fault.metrics, "webhook_bridge_circuits_open"),
        worker_cpu_pct=fault.worker_cpu_pct,
        loadavg_start=base.loadavg_start,
        loadavg_end=fault.loadavg_end,
        # Where the time goes, all events alike (the faulty tenth's too).
        **_stage_quantiles(fault.metrics),
        **fault.profiled,
    )
    problems = []
    if not fault.complete:
        problems.append(
            f"{fault.healthy_expected - fault.healthy_delivered} healthy deliveries "
            "missing after the drain period"
        )
    refused = unverified(faulty_log)  # the receiver is stopped: its log is whole
    if refused:
        problems.append(f"the faulty endpoint refused {refused.total()} requests: {dict(refused)}")
    if problems:
        result["error"] = "; ".join(problems)
    return result


async def isolation(ctx: Context) -> dict[str, Any]:
    return await _isolation(ctx, "isolation", "hang", 600.0)


async def isolation_slow(ctx: Context) -> dict[str, Any]:
    return await _isolation(ctx, "isolation_slow", "slow", 1.0)


# -- subscriptions_100k ----------------------------------------------------------------------------


async def subscriptions_100k(ctx: Context) -> dict[str, Any]:
    """Write N subscriptions (one record per batch), then time a worker's start until ready."""
    count = ctx.sizes.subscriptions
    settings = ctx.settings("subscriptions")
    await kit.prepare_topics(settings)
    hooks, _, _ = kit.make_hooks(settings.group_id, count, 1, ctx.urls())
    # How fast can records be written one per batch? Sequential send_and_wait on a sample, then
    # the whole set with bounded concurrency (single-record batches).
    sample = ctx.settings("subscriptions-seq")
    await kit.prepare_topics(sample)
    seq_n = min(2000, count)
    seq_s = await kit.write_hooks(sample, hooks[:seq_n], sequential=True)
    write_s = await kit.write_hooks(settings, hooks, in_flight=256)
    load_start = _loadavg()
    worker = kit.start_worker(ctx.procs, settings, "subscriptions", ctx.python)
    profiler = None
    try:
        if ctx.profile == "subscriptions_100k":
            await asyncio.sleep(0.5)  # let the interpreter start before py-spy attaches
            profiler = _start_profiler(ctx, "subscriptions_100k", worker.pid)
        ready = await worker.wait_ready(600.0)
        profiled: dict[str, Any] = {}
        _finish_profiler(ctx, "subscriptions_100k", profiler, profiled)
        profiler = None
        rss = worker.rss_kib() or 0
        metrics = await asyncio.to_thread(worker.metrics)
        active = metric_sum(metrics, "webhook_bridge_subscriptions", state="active")
        result = _result(
            ctx,
            "subscriptions_100k",
            None,
            None,
            None,
            latency_kind=None,
            subscriptions=count,
            write_per_s=round(count / write_s, 1),
            write_s=round(write_s, 2),
            sequential_send_and_wait_per_s=round(seq_n / seq_s, 1),
            ready_s=round(ready, 2),
            worker_rss_mib=round(rss / 1024, 1),
            rss_per_subscription_bytes=round((rss - ctx.baseline_rss_kib) * 1024 / count)
            if ctx.baseline_rss_kib
            else None,
            active_gauge=active,
            count_verified=active == count,
            loadavg_start=load_start,
            loadavg_end=_loadavg(),
            **profiled,
        )
        if active != count:
            result["error"] = f"the worker recovered {active:g} of {count} subscriptions"
        return result
    finally:
        if profiler is not None:
            profiler.finish()
        _stop(ctx, worker)


# -- recovery_after_sigkill ------------------------------------------------------------------------


async def recovery_after_sigkill(ctx: Context) -> dict[str, Any]:
    """Steady stream; SIGKILL the worker; start another in the same group; time to the first
    delivery, to catching up, and whether every event still arrived."""
    rate = max(10.0, _half_rate(ctx) / 2)
    settings = ctx.settings("recovery")
    await kit.prepare_topics(settings)
    hooks, by_site, sites = kit.make_hooks(settings.group_id, 100, 1, ctx.urls())
    await kit.write_hooks(settings, hooks)
    first_worker, _ = await _start_ready(ctx, settings, "recovery-a")
    second: Worker | None = None
    arrivals = ctx.receiver.arrivals()
    published = Published()
    stop = asyncio.Event()
    producer = asyncio.create_task(
        kit.publish_paced(settings, sites, rate, ctx.sizes.recovery_seconds, published, stop)
    )
    try:
        await asyncio.sleep(3.0)
        arrivals.poll()
        before_kill = len(arrivals.ids)
        killed_at = time.time()
        ctx.procs.kill(first_worker.proc)
        second = kit.start_worker(ctx.procs, settings, "recovery-b", ctx.python)
        restarted = time.time()
        ready = await second.wait_ready(120.0)
        # First arrival after the restart (the killed worker can send nothing any more).
        deadline = time.monotonic() + 60
        first_after = None
        while first_after is None and time.monotonic() < deadline:
            arrivals.poll()
            after = [t for t in arrivals.times if t > restarted]
            if after:
                first_after = min(after)
            else:
                await asyncio.sleep(0.05)
        # Caught up: every event published before the restart has been delivered.
        expected_before = {
            d
            for d, (e, _) in published.expected_ids(by_site).items()
            if published.stamps[e] <= restarted
        }
        got, caught_up = await _wait_arrivals(
            arrivals, expected_before, timeout=60.0, alive=second.proc.alive, idle=15.0
        )
        caught_up_at = max(got.values()) if got else None
        if caught_up:
            # A few seconds of steady delivery after catching up, for the latency figures.
            await asyncio.sleep(4.0)
        stop.set()
        sent = await producer
        expected = published.expected_ids(by_site)
        got_all, complete = await _wait_arrivals(
            arrivals, set(expected), timeout=30.0, alive=second.proc.alive, idle=IDLE_TIMEOUT
        )
        counts = Counter(arrivals.ids)
        lat_after = sorted(
            got_all[d] - published.stamps[e]
            for d, (e, _) in expected.items()
            if d in got_all and published.stamps[e] > (caught_up_at or restarted) + 1
        )
        metrics = await asyncio.to_thread(second.metrics)
        result = _result(
            ctx,
            "recovery_after_sigkill",
            None,
            percentile(lat_after, 0.5),
            percentile(lat_after, 0.99),
            latency_kind="event timestamp -> arrival, for events published after catching up",
            **_offered(ctx, rate),
            delivered_before_kill=before_kill,
            restart_to_ready_s=round(ready, 2),
            restart_to_first_delivery_s=round(first_after - restarted, 2) if first_after else None,
            restart_to_caught_up_s=round(caught_up_at - restarted, 2) if caught_up_at else None,
            published=sent,
            deliveries_expected=len(expected),
            delivered=len(got_all),
            missing=len(expected) - len(got_all),
            redelivered=sum(c - 1 for d, c in counts.items() if d in expected and c > 1),
            session_timeout_s=settings.kafka_session_timeout,
            kill_to_restart_ms=round((restarted - killed_at) * 1000, 1),
            **_worker_extras(second, metrics),
        )
        if first_after is None:
            result["error"] = "no delivery within 60 s of the restart"
        elif not complete:
            result["error"] = f"{len(expected) - len(got_all)} deliveries never arrived"
        elif not caught_up:
            result["error"] = "did not catch up within 60 s"
        return result
    finally:
        stop.set()
        if not producer.done():
            try:
                await asyncio.wait_for(producer, 10.0)
            except (TimeoutError, Exception):
                producer.cancel()
        if first_worker.proc.alive():
            ctx.procs.kill(first_worker.proc)
        if second is not None:
            _stop(ctx, second)


# -- naive_baseline --------------------------------------------------------------------------------


async def naive_baseline(ctx: Context) -> dict[str, Any]:
    """bench/naive_app.py: a Faust agent awaiting one httpx POST per delivery."""
    settings = ctx.settings("naive")
    await kit.prepare_topics(settings)
    hooks, by_site, sites = kit.make_hooks(settings.group_id, 1000, 1, ctx.urls())
    hooks_file = _hooks_file(ctx, settings, by_site)
    published = Published()
    await kit.publish_backlog(settings, sites, ctx.sizes.naive_events, published)
    expected = set(published.expected_ids(by_site))
    arrivals = ctx.receiver.arrivals()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        NAIVE_BROKER=f"kafka://{ctx.bootstrap}",
        NAIVE_TOPIC=settings.events_topic,
        NAIVE_GROUP=settings.group_id,
        NAIVE_WEBHOOKS=str(hooks_file),
        NAIVE_DATADIR=str(ctx.workdir / "data" / settings.group_id),
        PYTHONUNBUFFERED="1",
    )
    Path(env["NAIVE_DATADIR"]).mkdir(parents=True, exist_ok=True)
    load_start = _loadavg()
    proc = ctx.procs.spawn("naive", [ctx.python, "-m", "bench.naive_app"], env=env)
    spawned = time.time()
    started = time.monotonic()
    cpu_start = kit.cpu_seconds(proc.pid)
    profiler: Profiler | None = None
    try:

        def attach() -> None:
            nonlocal profiler
            profiler = _start_profiler(ctx, "naive_baseline", proc.pid)

        # No readiness endpoint here: allow start-up time, then the same check as the bridge's.
        got, _ = await _wait_arrivals(
            arrivals, expected, 12.0 + SKIP_TIMEOUT, proc.alive, stop_at=1
        )
        skipped = not got and proc.alive()
        if skipped:
            ctx.log("naive_baseline: the pre-published backlog was skipped; publishing again")
            published = Published()
            await kit.publish_backlog(settings, sites, ctx.sizes.naive_events, published)
            expected = set(published.expected_ids(by_site))
        first, complete = await _wait_arrivals(
            arrivals,
            expected,
            timeout=max(90.0, len(expected) / 10),
            alive=proc.alive,
            on_first=attach,
            idle=15.0,
        )
        profiled: dict[str, Any] = {}
        _finish_profiler(ctx, "naive_baseline", profiler, profiled)
        profiler = None
        cpu = kit.cpu_seconds(proc.pid) - cpu_start
        rate, window = _window_rate(list(first.values()))
        ordered = sorted(first.values())
        gaps = sorted(b - a for a, b in zip(ordered, ordered[1:], strict=False))
        result = _result(
            ctx,
            "naive_baseline",
            rate,
            percentile(gaps, 0.5),
            percentile(gaps, 0.99),
            latency_kind="gap between consecutive arrivals (one request at a time)",
            events=ctx.sizes.naive_events,
            deliveries_expected=len(expected),
            deliveries_seen=len(first),
            complete=complete,
            window_s=None if window is None else round(window, 2),
            start_to_first_delivery_s=round(min(first.values()) - spawned, 2) if first else None,
            bridge_speedup=round(ctx.fanout_1_rate / rate, 2)
            if ctx.fanout_1_rate and rate
            else None,
            process_cpu_pct=round(100 * cpu / (time.monotonic() - started), 1),
            process_rss_mib=round((rss_kib(proc.pid) or 0) / 1024, 1),
            backlog_skipped_at_start=skipped,
            loadavg_start=load_start,
            loadavg_end=_loadavg(),
            **profiled,
        )
        if not complete:
            result["error"] = f"only {len(first)} of {len(expected)} deliveries arrived"
        if not proc.alive() and not complete:
            result["error"] += f"; naive app exited: {proc.tail(10)}"
        return result
    finally:
        if profiler is not None:
            profiler.finish()
        ctx.procs.stop(proc, grace=8.0)


SCENARIOS: dict[str, Callable[[Context], Any]] = {
    "fanout_1": fanout_1,
    "fanout_10": fanout_10,
    "latency_half_load": latency_half_load,
    "isolation": isolation,
    "isolation_slow": isolation_slow,
    "subscriptions_100k": subscriptions_100k,
    "recovery_after_sigkill": recovery_after_sigkill,
    "naive_baseline": naive_baseline,
}
#: Scenarios that pace their load from the fan-out-1 rate (it is measured first if not asked).
NEEDS_FANOUT_1 = {"latency_half_load", "isolation", "isolation_slow", "recovery_after_sigkill"}
