"""The control plane's scenarios: fan-out 1 with the delivery log fed, and the attempts query.

``fanout_1_log`` runs the fan-out 1 backlog without the delivery log, with the worker in role
``all`` holding it (``delivery_log`` and ``api_tokens``), and with a ``--role deliver`` worker
beside a ``--role api`` one holding it (the Helm chart's layout with ``api.enabled``), in rounds
that rotate the order, and reports each against the raw aiohttp ceiling of the run and the log's
cost. ``attempts_query`` fills the attempts topic
with synthetic attempt records of many webhooks, starts an API-role worker holding the log, and
measures its time to ready, its ingest rate against a raw consume of the same topic, its RSS and
disk, and ``GET /v1/webhooks/{id}/attempts`` latency against ``/healthz`` on the same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bridge.api.auth import hash_token, new_token
from bridge.config import Settings

from . import kit
from .ceilings import aiohttp_ceiling, end_offsets_rtt, raw_consume
from .kit import percentile
from .procs import free_port
from .scenarios import Beside, Context, _loadavg, _ms, _result, backlog

__all__ = [
    "LOG_VARIANTS",
    "AttemptsSizes",
    "attempt_records",
    "attempts_query",
    "dir_bytes",
    "fanout_1_log",
    "log_stores",
    "log_summary",
    "query_paths",
    "variant_order",
    "write_tokens",
]


@dataclass(frozen=True)
class AttemptsSizes:
    """How much the control plane scenarios do (``--quick`` shrinks them)."""

    #: Rounds of the fan-out 1 variants (one run of each per round, the order rotated).
    log_pairs: int
    #: Webhook records written to the subscriptions topic for ``attempts_query``.
    webhooks: int
    #: Synthetic attempt records written to the attempts topic.
    attempts: int
    #: Requests of the query phase, and how many are in flight at once.
    queries: int
    concurrency: int = 8
    #: Seconds the query phase may take (it stops with what it has).
    query_seconds: float = 180.0

    @classmethod
    def for_mode(cls, quick: bool) -> AttemptsSizes:
        if quick:
            return cls(log_pairs=1, webhooks=2000, attempts=20000, queries=500, query_seconds=30)
        return cls(log_pairs=3, webhooks=100000, attempts=1000000, queries=5000, query_seconds=300)


def write_tokens(workdir: Path) -> tuple[Path, str]:
    """A token file with one read token (its hash only, as ``python -m bridge.api token``
    writes it); returns the file and the token."""
    token = new_token()
    path = workdir / "api-tokens.json"
    entry = {"name": "bench", "sha256": hash_token(token), "scopes": ["read"]}
    path.write_text(json.dumps({"tokens": [entry]}))
    return path, token


def log_stores() -> list[str | None]:
    """The delivery log's stores to measure: each of ``delivery_log_store``'s choices once that
    setting exists, else the one (in memory) the worker has."""
    names = {f.name for f in dataclasses.fields(Settings)}
    if "delivery_log_store" in names:
        return ["memory", "rocksdb"]
    return [None]


def dir_bytes(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, apparent size) of every file under ``path``."""
    allocated = apparent = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


# -- fanout_1_log --------------------------------------------------------------------------------


#: The fan-out 1 variants: no delivery log; one worker in role ``all`` holding it; and the Helm
#: chart's layout with ``api.enabled``, a ``--role deliver`` worker beside a ``--role api`` one
#: holding the log of the attempts the other writes.
LOG_VARIANTS = ("off", "all", "split")


def variant_order(round_: int) -> list[str]:
    """The variants of one round, rotated by the round: over three rounds each runs once first,
    once second and once last (off-all-split, all-split-off, split-off-all, ...)."""
    shift = round_ % len(LOG_VARIANTS)
    return [*LOG_VARIANTS[shift:], *LOG_VARIANTS[:shift]]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def log_summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each variant's runs and medians, and the costs of ``all`` and ``split`` against ``off``
    as medians of the differences within each round (the runs that ran side by side)."""
    cpu_key = "worker_cpu_ms_per_delivery"
    out: dict[str, Any] = {}

    def column(variant: str, key: str) -> list[float]:
        return [r[variant][key] for r in rounds if r.get(variant, {}).get(key) is not None]

    def diffs(variant: str, key: str) -> list[float]:
        return [
            r[variant][key] - r["off"][key]
            for r in rounds
            if r.get(variant, {}).get(key) and r.get("off", {}).get(key)
        ]

    # ``with_log``/``without_log`` keep the names of the first runs' (role ``all``) figures.
    names = {"off": "without_log", "all": "with_log", "split": "split"}
    for variant, suffix in names.items():
        out[f"ratio_{suffix}"] = column(variant, "ratio")
        out[f"ratio_median_{suffix}"] = _median(column(variant, "ratio"))
        out[f"ratio_adjacent_{suffix}"] = column(variant, "ratio_adjacent")
        out[f"ratio_adjacent_median_{suffix}"] = _median(column(variant, "ratio_adjacent"))
        out[f"cpu_ms_per_delivery_{suffix}"] = column(variant, cpu_key)
        out[f"cpu_ms_per_delivery_median_{suffix}"] = _median(column(variant, cpu_key))
        out[f"deliveries_per_s_{suffix}"] = _median(column(variant, "deliveries_per_s"))
        out[f"worker_rss_mib_{suffix}"] = _median(column(variant, "worker_rss_mib"))
    for variant, suffix in (("all", ""), ("split", "_split")):
        out[f"ratio_adjacent_cost_median{suffix}"] = _median(diffs(variant, "ratio_adjacent"))
        ratio_diffs = diffs(variant, "ratio")
        cpu_diffs = diffs(variant, cpu_key)
        out[f"ratio_cost_median{suffix}"] = _median(ratio_diffs)
        out[f"cpu_ms_cost_median{suffix}"] = _median(cpu_diffs)
        label = "log" if variant == "all" else "split"
        out[f"paired_{label}_lower_ratio"] = sum(d < 0 for d in ratio_diffs)
        out[f"paired_{label}_more_cpu"] = sum(d > 0 for d in cpu_diffs)
    # The API worker of ``split``: its CPU per attempt record read into the log, and the
    # layout's CPU per delivery (both workers) against one worker without the log.
    out["api_cpu_ms_per_attempt"] = column("split", "api_cpu_ms_per_record")
    out["api_cpu_ms_per_attempt_median"] = _median(out["api_cpu_ms_per_attempt"])
    both = [
        r["split"][cpu_key] + r["split"]["api_cpu_ms_per_delivery"]
        for r in rounds
        if r.get("split", {}).get(cpu_key) and r["split"].get("api_cpu_ms_per_delivery")
    ]
    out["split_both_cpu_ms_per_delivery"] = [round(x, 4) for x in both]
    out["split_both_cpu_ms_per_delivery_median"] = _median(both)
    out["api_caught_up_after_last_delivery_s_median"] = _median(
        column("split", "api_caught_up_after_last_delivery_s")
    )
    out["api_rss_mib_median"] = _median(column("split", "api_rss_mib"))
    out["rounds"] = [
        {variant: {k: run.get(k) for k in _ROUND_KEYS if k in run} for variant, run in r.items()}
        for r in rounds
    ]
    return out


#: Each run's figures kept in the result's ``rounds`` (in the order the runs went).
_ROUND_KEYS = (
    "ratio",
    "ratio_adjacent",
    "adjacent_ceiling_per_s",
    "deliveries_per_s",
    "worker_cpu_ms_per_delivery",
    "worker_cpu_pct",
    "ready_s",
    "complete",
    "backlog_skipped_at_start",
    "loadavg_start",
    "api_cpu_ms_per_record",
    "api_cpu_ms_per_delivery",
    "api_records",
    "api_caught_up_after_last_delivery_s",
    "api_rss_mib",
    "error",
    "api_error",
    "adjacent_error",
)
#: What makes a run of ``fanout_1_log`` fail: its own error, its API worker's, its ceiling's.
_ERROR_KEYS = ("error", "api_error", "adjacent_error")


async def adjacent_ceiling(ctx: Context) -> tuple[float | None, str | None]:
    """The raw aiohttp ceiling again, right before one run (a third of the run-start ceiling's
    requests, median of 3): this machine's speed drifts by a fifth within minutes (the same
    worker's CPU per delivery went from 0.124 to 0.165 ms between rounds of one run), which a
    ceiling measured once at the start of the run cannot follow. (rate, None), or (None, why
    there is no rate) when a request failed."""
    count = max(2000, ctx.sizes.aiohttp_requests // 3)
    result = await aiohttp_ceiling(ctx.urls(), count, 32, loop=Settings().event_loop)
    if result.get("error"):
        return None, f"adjacent ceiling: {result['error']}"
    rate = result.get("deliveries_per_s")
    return (float(rate), None) if rate else (None, "adjacent ceiling: no rate")


async def _records_read(token: str, worker: kit.Worker) -> int | None:
    summary = await _summary(worker.base_url, token)
    return None if summary is None else int(summary["records_read"])


async def fanout_1_log(ctx: Context) -> dict[str, Any]:
    """The fan-out 1 backlog without the delivery log, with it in the worker (role ``all``),
    and with it in an API-role worker beside a deliver-role one, in rounds rotating the order,
    each against the raw aiohttp ceiling of the run; the costs as differences within rounds."""
    sizes = AttemptsSizes.for_mode(ctx.sizes.quick)
    tokens, token = write_tokens(ctx.workdir)
    log_on = {"delivery_log": True, "api_tokens": str(tokens)}
    settings: dict[str, dict[str, Any] | None] = {
        "off": None,
        "all": {"role": "all", **log_on},
        "split": {"role": "deliver"},
    }
    # The API worker in the deliver worker's group, as the chart deploys them (one group id).
    # It joins first, so its join's rebalance is over before the deliveries start; the deliver
    # worker's join then leaves it every attempts partition (only API workers hold the log).
    api = Beside(
        "api",
        {"role": "api", **log_on},
        lambda worker: _records_read(token, worker),
    )
    rounds: list[dict[str, dict[str, Any]]] = []
    load_start = _loadavg()
    for round_ in range(sizes.log_pairs):
        runs: dict[str, dict[str, Any]] = {}
        for variant in variant_order(round_):
            ctx.log(f"fanout_1_log: round {round_ + 1}, {variant}")
            adjacent, adjacent_error = await adjacent_ceiling(ctx)
            run = await backlog(
                ctx,
                f"fanout_1_log_{variant}",
                1000,
                1,
                ctx.sizes.fanout_1_events,
                extra_settings=settings[variant],
                beside=api if variant == "split" else None,
            )
            run["adjacent_ceiling_per_s"] = adjacent
            if adjacent_error:
                run["adjacent_error"] = adjacent_error
            rate = run.get("deliveries_per_s")
            run["ratio_adjacent"] = round(rate / adjacent, 4) if rate and adjacent else None
            runs[variant] = run
        rounds.append(runs)
    summary = log_summary(rounds)
    result = _result(
        ctx,
        "fanout_1_log",
        summary["deliveries_per_s_with_log"],
        None,
        None,
        latency_kind=None,
        pairs=len(rounds),
        order="rounds of off, all, split rotated: off-all-split, all-split-off, split-off-all",
        **summary,
        loadavg_start=load_start,
        loadavg_end=_loadavg(),
    )
    # The median run's ratio stands in the table's ratio column (the median, not the mean).
    result["ratio"] = result["ratio_median_with_log"]
    errors = [
        f"{r['name']}: {'; '.join(r[key] for key in _ERROR_KEYS if r.get(key))}"
        for runs in rounds
        for r in runs.values()
        if any(r.get(key) for key in _ERROR_KEYS)
    ]
    if errors:
        result["error"] = "; ".join(errors)[:1500]
    return result


# -- attempts_query ------------------------------------------------------------------------------

_EVENT_TYPES = ("post.published", "post.updated", "post.deleted", "comment.created")
#: How the synthetic attempts end: (outcome, status, error, next), with weights.
_ENDINGS: list[tuple[tuple[str, int | None, str | None, str | None], int]] = [
    (("success", 200, None, None), 90),
    (("failure", 500, "http_status", "retry"), 4),
    (("failure", 503, "http_status", "retry"), 2),
    (("failure", None, "timeout", "retry"), 2),
    (("failure", None, "connect_error", "dead_letter"), 1),
    (("skipped", None, "circuit_open", "retry"), 1),
]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def attempt_records(
    webhook_ids: list[str], count: int, *, days: float, seed: int = 7
) -> list[tuple[bytes, bytes, int]]:
    """``count`` attempt records (``topics/schemas/attempt.json``, the deliverer's field order
    and sizes: UUID delivery and event ids, six-decimal durations, and since 2026-12-07 the
    request's endpoint, one host per webhook) of random webhooks, their ``at`` times rising
    evenly over the ``days`` before now: (key, value, timestamp in ms)."""
    rng = random.Random(seed)
    now = datetime.now(UTC) - timedelta(seconds=30)
    start = now - timedelta(days=days)
    step = (now - start) / max(1, count)
    endings = [e for e, _ in _ENDINGS]
    weights = [w for _, w in _ENDINGS]
    chosen = rng.choices(endings, weights, k=count)
    out = []
    for n in range(count):
        index = rng.randrange(len(webhook_ids))
        webhook_id = webhook_ids[index]
        at = start + step * n
        outcome, status, error, next_step = chosen[n]
        attempt = 1 if outcome == "success" and rng.random() < 0.9 else rng.randint(1, 4)
        record: dict[str, Any] = {
            "delivery_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "webhook_id": webhook_id,
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": _EVENT_TYPES[n % len(_EVENT_TYPES)],
            "event_at": _stamp(at - timedelta(milliseconds=rng.randint(1, 900))),
            "attempt": attempt,
            "outcome": outcome,
            "status": status,
            "error": error,
            "duration_seconds": round(rng.uniform(0.02, 2.0), 6),
            "at": _stamp(at),
            "next": next_step,
        }
        if next_step == "retry":
            record["next_at"] = _stamp(at + timedelta(seconds=30 * 2**attempt))
        if outcome != "skipped":
            record["endpoint"] = f"https://hooks-{index}.example.com:443"
        value = json.dumps(record, separators=(",", ":")).encode()
        out.append((webhook_id.encode(), value, int(at.timestamp() * 1000)))
    return out


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]) -> float:
    """Write ``records`` in batches (the delivery log's reader is not misled by the embedded
    broker's end offsets of batched partitions: it reads on past them); returns seconds."""
    producer = kit.new_producer(bootstrap, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value, stamp in records:
            pending.append(await producer.send(topic, value, key=key, timestamp_ms=stamp))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _raw_consume(bootstrap: str, topic: str, count: int, timeout: float) -> dict[str, Any]:
    """A raw aiokafka consume of every partition from the start, until ``count`` records or the
    deadline: the ceiling of the log's ingest (no parsing, no book)."""
    got, elapsed, partitions = await raw_consume(bootstrap, topic, count, timeout)
    return {
        "records": got,
        "seconds": round(elapsed, 2),
        "per_s": round(got / elapsed, 1) if elapsed > 0 else None,
        "partitions": partitions,
    }


def query_paths(
    webhook_ids: list[str], count: int, delivery_ids: list[str], *, seed: int = 11
) -> list[tuple[str, str]]:
    """``count`` (kind, path) requests: most over random webhooks, a plain page of 50 or
    filtered (outcome, status class and event type, since a day ago); ``cursor`` kinds are
    resolved when sent (a first page of 3, then the page its cursor names); a tenth
    ``delivery``, one delivery of ``delivery_ids`` (``GET /v1/deliveries/{id}``, which asks
    every owner of a log partition)."""
    rng = random.Random(seed)
    since = _stamp(datetime.now(UTC) - timedelta(days=1))
    kinds = [
        ("page", "limit=50", 50),
        ("outcome", "outcome=failure", 10),
        ("status_class", "status_class=2xx&event_type=post.published", 10),
        ("since", f"since={since}", 10),
        ("cursor", "limit=3", 10),
        ("delivery", "", 10),
    ]
    picks = rng.choices(kinds, [k[2] for k in kinds], k=count)
    out = []
    for kind, query, _ in picks:
        if kind == "delivery":
            out.append((kind, f"/v1/deliveries/{delivery_ids[rng.randrange(len(delivery_ids))]}"))
        else:
            webhook_id = webhook_ids[rng.randrange(len(webhook_ids))]
            out.append((kind, f"/v1/webhooks/{webhook_id}/attempts?{query}"))
    return out


def sample_delivery_ids(records: list[tuple[bytes, bytes, int]], count: int) -> list[str]:
    """The delivery ids of ``count`` records spread evenly over ``records``."""
    step = max(1, len(records) // max(1, count))
    return [json.loads(value)["delivery_id"] for _, value, _ in records[::step][:count]]


@dataclass
class _Timed:
    latencies: list[float] = dataclasses.field(default_factory=list)
    by_kind: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    statuses: Counter[int] = dataclasses.field(default_factory=Counter)
    items: int = 0
    seconds: float = 0.0
    #: Requests of the list not sent before the budget ran out.
    unsent: int = 0


async def _run_requests(
    base: str,
    requests: list[tuple[str, str]],
    token: str,
    concurrency: int,
    budget: float,
) -> _Timed:
    """Send ``requests`` with ``concurrency`` in flight, each timed from send to body read; ends
    at ``budget`` seconds with what was answered."""
    timed = _Timed()
    headers = {"Authorization": f"Bearer {token}"}
    queue = list(reversed(requests))
    started = time.perf_counter()
    deadline = started + budget
    timeout = aiohttp.ClientTimeout(total=60)

    async def one(session: aiohttp.ClientSession, kind: str, path: str) -> dict[str, Any] | None:
        sent = time.perf_counter()
        async with session.get(base + path, headers=headers) as response:
            body = await response.read()
        elapsed = time.perf_counter() - sent
        timed.latencies.append(elapsed)
        timed.by_kind.setdefault(kind, []).append(elapsed)
        timed.statuses[response.status] += 1
        if response.status != 200 or not body.startswith(b"{"):
            return None
        page: dict[str, Any] = json.loads(body)
        timed.items += len(page.get("items", ()))
        return page

    async def loop(session: aiohttp.ClientSession) -> None:
        while queue and time.perf_counter() < deadline:
            kind, path = queue.pop()
            page = await one(session, kind if kind != "cursor" else "cursor_first", path)
            if kind == "cursor" and page and page.get("next_cursor"):
                await one(session, "cursor", f"{path}&cursor={page['next_cursor']}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(loop(session) for _ in range(concurrency)))
    timed.seconds = time.perf_counter() - started
    timed.unsent = len(queue)
    return timed


async def _summary(base: str, token: str) -> dict[str, Any] | None:
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(
                base + "/internal/v1/delivery-log", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status != 200:
                    return None
                body: dict[str, Any] = await response.json()
                return body
    except (aiohttp.ClientError, TimeoutError):
        return None


def _quantiles(values: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": _ms(percentile(values, 0.5)),
        "p99_ms": _ms(percentile(values, 0.99)),
        "max_ms": _ms(max(values, default=None)),
    }


async def attempts_query(ctx: Context) -> dict[str, Any]:
    """Attempts of many webhooks in the attempts topic, an API-role worker holding their log:
    ready time, ingest vs a raw consume, RSS, disk, and the latency of the attempts route and
    of the one-delivery route."""
    sizes = AttemptsSizes.for_mode(ctx.sizes.quick)
    tokens, token = write_tokens(ctx.workdir)
    base_settings = ctx.settings("attempts_query")
    await kit.prepare_topics(base_settings)
    hooks, _, _ = kit.make_hooks(base_settings.group_id, sizes.webhooks, 1, ctx.urls())
    ctx.log(f"attempts_query: writing {len(hooks)} webhooks (one record per batch)")
    hooks_s = await kit.write_hooks(base_settings, hooks, in_flight=256)
    webhook_ids = [h.id for h in hooks]
    started = time.perf_counter()
    records = await asyncio.to_thread(attempt_records, webhook_ids, sizes.attempts, days=5.0)
    build_s = time.perf_counter() - started
    value_bytes = sum(len(v) for _, v, _ in records)
    ctx.log(f"attempts_query: producing {len(records)} attempt records")
    produce_s = await _produce(ctx.bootstrap, base_settings.attempts_topic, records)
    delivery_ids = sample_delivery_ids(records, 5000)
    del records
    raw = await _raw_consume(ctx.bootstrap, base_settings.attempts_topic, sizes.attempts, 120.0)
    # the request of each freshness round the API's webhook check waits for
    offsets_ms = await end_offsets_rtt(ctx.bootstrap, base_settings.subscriptions_topic, rounds=20)
    paths = query_paths(webhook_ids, sizes.queries, delivery_ids)
    stores = {}
    for store in log_stores():
        changes: dict[str, Any] = {
            "role": "api",
            "delivery_log": True,
            "api_tokens": str(tokens),
            # The query load is one token's, as fast as the worker answers: measured unlimited.
            "api_rate_limit": 0.0,
            "web_port": free_port(),
            "data_dir": str(ctx.workdir / "data" / f"{base_settings.group_id}-{store or 'log'}"),
        }
        if store is not None:
            changes["delivery_log_store"] = store
        settings = base_settings.replace(**changes)
        measured = await _api_worker(ctx, settings, token, sizes, paths, raw)
        p50 = measured["p50_ms"]
        measured["p50_vs_end_offsets"] = round(p50 / offsets_ms, 2) if p50 and offsets_ms else None
        # Each store's worker is counted against the same store's worker over no attempts.
        empty = await _empty_log_worker(ctx, settings, store or "memory")
        measured.update(_against_empty(measured, empty))
        stores[store or "memory"] = measured
    first_store, first = next(iter(stores.items()))
    result = _result(
        ctx,
        "attempts_query",
        None,
        None if first.get("p50_ms") is None else first["p50_ms"] / 1000,
        None if first.get("p99_ms") is None else first["p99_ms"] / 1000,
        latency_kind=(
            "GET /v1/webhooks/{id}/attempts and /v1/deliveries/{id}, client send -> body read"
        ),
        webhooks=sizes.webhooks,
        attempts=sizes.attempts,
        attempt_value_bytes_mean=round(value_bytes / max(1, sizes.attempts), 1),
        webhooks_write_s=round(hooks_s, 2),
        records_build_s=round(build_s, 2),
        produce_s=round(produce_s, 2),
        produce_per_s=round(sizes.attempts / produce_s, 1) if produce_s > 0 else None,
        raw_consume_per_s=raw["per_s"],
        raw_consume_records=raw["records"],
        attempts_partitions=raw["partitions"],
        subscriptions_end_offsets_ms=offsets_ms,
        queries=sizes.queries,
        concurrency=sizes.concurrency,
        store=first_store,
        stores=stores,
        **{k: v for k, v in first.items() if k not in ("p50_ms", "p99_ms")},
    )
    errors = [f"{name}: {r['error']}" for name, r in stores.items() if r.get("error")]
    if errors:
        result["error"] = "; ".join(errors)[:1500]
    return result


async def _watch_ingest(
    worker: kit.Worker, token: str, count: int, timeout: float
) -> dict[str, Any]:
    """Poll the worker from its start: seconds to ``/readyz`` 200, to its delivery log having
    read ``count`` records (the reader's ``caught_up`` rests on the broker's end offsets, which
    the embedded broker reports low for batched partitions), and the ingest rate between the
    first poll that saw records and the one that saw them all (polls every 0.2 s)."""
    ready_s = None
    first: tuple[float, int] | None = None
    read, summary = 0, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.proc.alive():
            raise RuntimeError(f"worker exited:\n{worker.proc.tail()}")
        if ready_s is None and await asyncio.to_thread(worker.ready):
            ready_s = time.monotonic() - worker.started_at
        if read < count:
            current = await _summary(worker.base_url, token)
            if current is not None:
                summary, read = current, int(current["records_read"])
                if read and first is None:
                    first = (time.monotonic(), read)
        if ready_s is not None and read >= count:
            break
        await asyncio.sleep(0.2)
    all_read_at = time.monotonic()
    rate = None
    if first is not None and read > first[1] and all_read_at > first[0]:
        rate = (read - first[1]) / (all_read_at - first[0])
    return {
        "ready_s": None if ready_s is None else round(ready_s, 2),
        "all_read_s": round(all_read_at - worker.started_at, 2) if read >= count else None,
        "records_read": read,
        "ingest_per_s": None if rate is None else round(rate, 1),
        "summary": summary or {},
    }


async def _api_worker(
    ctx: Context,
    settings: Settings,
    token: str,
    sizes: AttemptsSizes,
    paths: list[tuple[str, str]],
    raw: dict[str, Any],
) -> dict[str, Any]:
    """One API-role worker over the filled topics: ready, ingest, RSS, disk, queries."""
    load_start = _loadavg()
    label = f"attempts_query_{getattr(settings, 'delivery_log_store', 'memory')}"
    worker = kit.start_worker(ctx.procs, settings, label, ctx.python)
    try:
        watched = await _watch_ingest(worker, token, sizes.attempts, 600.0)
        summary = watched["summary"]
        cpu_ready = worker.cpu_seconds()
        rss_ready = worker.rss_kib() or 0
        disk, apparent = dir_bytes(Path(settings.data_dir or ""))
        healthz = await _run_requests(
            worker.base_url,
            [("healthz", "/healthz")] * sizes.queries,
            token,
            sizes.concurrency,
            sizes.query_seconds / 3,
        )
        timed = await _run_requests(
            worker.base_url, paths, token, sizes.concurrency, sizes.query_seconds
        )
        rss_end = worker.rss_kib() or 0
        lat = timed.latencies
        h99 = percentile(healthz.latencies, 0.99)
        p99 = percentile(lat, 0.99)
        ingest = watched["ingest_per_s"]
        read = watched["records_read"]
        out: dict[str, Any] = {
            **_quantiles(lat),
            "ready_s": watched["ready_s"],
            "all_read_s": watched["all_read_s"],
            "records_read": read,
            "log_attempts": summary.get("attempts"),
            "log_webhooks": summary.get("webhooks"),
            "invalid": summary.get("invalid"),
            "gaps": len(summary.get("gaps") or ()),
            "ingest_per_s": ingest,
            "ingest_vs_raw_consume": round(ingest / raw["per_s"], 4)
            if ingest and raw["per_s"]
            else None,
            "worker_cpu_s_to_all_read": round(cpu_ready, 2),
            "worker_rss_mib": round(rss_ready / 1024, 1),
            "worker_rss_mib_after_queries": round(rss_end / 1024, 1),
            "data_dir_bytes": disk,
            "data_dir_apparent_bytes": apparent,
            "answered": len(lat),
            "unsent": timed.unsent,
            "statuses": {str(k): v for k, v in sorted(timed.statuses.items())},
            "items_returned": timed.items,
            "queries_per_s": round(len(lat) / timed.seconds, 1) if timed.seconds > 0 else None,
            "by_kind": {k: _quantiles(v) | {"n": len(v)} for k, v in sorted(timed.by_kind.items())},
            "over_100ms": sum(x > 0.1 for x in lat),
            "healthz_p50_ms": _ms(percentile(healthz.latencies, 0.5)),
            "healthz_p99_ms": _ms(h99),
            "p99_vs_healthz": round(p99 / h99, 2) if p99 and h99 else None,
            "loadavg_start": load_start,
            "loadavg_end": _loadavg(),
        }
        problems = []
        if read < sizes.attempts:
            problems.append(f"the log read {read} of {sizes.attempts} records")
        if watched["ready_s"] is None:
            problems.append("the worker was not ready within 600 s")
        bad = sum(v for k, v in timed.statuses.items() if k != 200)
        if bad:
            problems.append(f"{bad} answers not 200: {dict(timed.statuses)}")
        if timed.unsent:
            problems.append(
                f"{timed.unsent} of {len(paths)} requests not sent within {sizes.query_seconds:g} s"
            )
        if problems:
            out["error"] = "; ".join(problems)
        return out
    finally:
        ctx.procs.stop(worker.proc, grace=10.0)


def _against_empty(measured: dict[str, Any], empty: dict[str, Any]) -> dict[str, Any]:
    """A store's worker against the same worker over no attempts (``empty``: its VmRSS in KiB,
    seconds to ready and CPU seconds at ready): RSS per attempt kept, CPU per record read."""
    out: dict[str, Any] = {
        "empty_log_rss_mib": round((empty["rss_kib"] or 0) / 1024, 1),
        "empty_log_ready_s": empty["ready_s"],
        "empty_log_cpu_s": empty["cpu_s"],
    }
    read = measured["records_read"]
    if empty["rss_kib"] and read:
        kept = measured["log_attempts"] or read
        rss_kib = measured["worker_rss_mib"] * 1024
        out["rss_per_attempt_bytes"] = round((rss_kib - empty["rss_kib"]) * 1024 / kept)
    if read:
        cpu = measured["worker_cpu_s_to_all_read"] - empty["cpu_s"]
        out["ingest_cpu_us_per_record"] = round(cpu * 1e6 / read, 1)
    return out


async def _empty_log_worker(ctx: Context, settings: Settings, label: str) -> dict[str, Any]:
    """The same API-role worker (same webhooks, same store) over an empty attempts topic of its
    own, in a group of its own, at ready: its VmRSS, seconds to ready and CPU seconds, which the
    kept attempts are counted against."""
    empty = settings.replace(
        attempts_topic=f"{settings.attempts_topic}-empty-{label}",
        group_id=f"{settings.group_id}-empty-{label}",
        web_port=free_port(),
        data_dir=f"{settings.data_dir}-empty",
    )
    await kit.prepare_topics(empty)
    worker = kit.start_worker(ctx.procs, empty, f"attempts_query_empty_{label}", ctx.python)
    try:
        ready = await worker.wait_ready(600.0)
        return {
            "rss_kib": worker.rss_kib(),
            "ready_s": round(ready, 2),
            "cpu_s": round(worker.cpu_seconds(), 2),
        }
    finally:
        ctx.procs.stop(worker.proc, grace=10.0)
