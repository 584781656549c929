"""``recoveries_beside``: the fan-out 1 backlog delivered while eight recoveries scan the events
topic, against the same backlog without them.

Each variant is a fresh worker in role ``all`` with ``/v1`` (a token file with the write scope,
no rate limit), on its own topics: 1000 sites with one webhook each, as ``fanout_1``, and one
more webhook for each recovery, each of a site of its own no event is published for. Before the
backlog, ``filler`` events of another site no webhook wants are published and the worker's group
is committed past them, so that the worker does not consume them but every recovery reads them:
once the worker is ready, eight recoveries since an hour before (``api_max_recoveries``, its
default), one of each of those webhooks, are started through ``/v1``; they match nothing, so
what they cost is reading and matching alone. One webhook (or one site) each: a worker runs at
most half its places for one site's webhooks, and one recovery of a webhook over one window
(until 2026-12-05 the eight were of one webhook, and from ``cb118bc`` on four of them were
refused: a run that starts fewer than eight now fails).
Variants: ``none`` (no recoveries), ``share_1`` (``api_scan_share`` 1: the recoveries take what
they get, as before 2026-12-05) and ``share_default`` (``api_scan_share`` as configured by
default, 0.25). Rounds rotate the order; each run's delivery rate is against the raw aiohttp
ceiling measured right before it, and the recoveries' progress (records read) is taken when the
deliveries are in (``scanned``, summed over the eight, and each one's ``progress``).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.api.auth import hash_token, new_token
from bridge.config import Settings

from . import kit
from .control_plane import adjacent_ceiling
from .scenarios import Context, _loadavg, _result, backlog
from .signatures import webhook_secret

__all__ = [
    "RECOVERIES",
    "RECOVERY_VARIANTS",
    "START_TRIES",
    "Recovering",
    "commit_to_end",
    "recoveries_beside",
]

#: The variants: no recoveries; eight with ``api_scan_share`` 1; eight with the default share.
RECOVERY_VARIANTS = ("none", "share_1", "share_default")
#: Recoveries started in each run with recoveries (the default ``api_max_recoveries``).
RECOVERIES = 8
#: Tries of each recovery's start (a ``503`` sent again after its ``Retry-After``).
START_TRIES = 10


def _write_token(workdir: Path) -> tuple[Path, str]:
    token = new_token()
    path = workdir / "recovery-tokens.json"
    entry = {"name": "bench", "sha256": hash_token(token), "scopes": ["read", "write"]}
    path.write_text(json.dumps({"tokens": [entry]}))
    return path, token


async def commit_to_end(settings: Settings) -> None:
    """Commit the worker's group (its Faust app id) at the end of the events topic: a worker
    of that group starts reading after what the topic holds now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.events_topic)
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(settings.events_topic) or set()
        tps = [TopicPartition(settings.events_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: end for tp, end in ends.items() if end > 0})
    finally:
        await consumer.stop()


class Recovering:
    """The :class:`~bench.scenarios.Alongside` of a run with recoveries: the scan webhook and the
    filler written before the backlog, the recoveries started once the worker is ready."""

    def __init__(self, token: str, filler: int, count: int = RECOVERIES) -> None:
        self._token = token
        self._filler = filler
        self._count = count
        self._hooks: list[kit.Hook] = []
        self._ids: list[str] = []
        self.started: list[int] = []

    async def prepare(self, settings: Settings) -> None:
        prefix = settings.group_id
        self._hooks = [
            kit.Hook(
                f"{prefix}-scan-{n}",
                "http://127.0.0.1:9/none",
                webhook_secret(f"{prefix}-scan-{n}"),
                f"{prefix}-scan-site-{n}",
                "u",
            )
            for n in range(self._count)
        ]
        await kit.write_hooks(settings, self._hooks)
        filler_site = (f"{prefix}-filler-site", f"{prefix}-filler-user")
        await kit.publish_backlog(settings, [filler_site], self._filler, kit.Published())
        await commit_to_end(settings)

    async def start(self, worker: kit.Worker) -> None:
        assert len(self._hooks) == self._count
        since = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="milliseconds")
        headers = {"Authorization": f"Bearer {self._token}"}
        async with aiohttp.ClientSession() as session:
            for hook in self._hooks:
                url = f"{worker.base_url}/v1/webhooks/{hook.id}/recoveries"
                # A 503 (the worker settling its assignment) is sent again after its
                # Retry-After, with the same key, as the CLI does: a run at 39b831d stopped on
                # one (7 of 8 started).
                keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}
                for _ in range(START_TRIES):
                    async with session.post(url, json={"since": since}, headers=keyed) as answer:
                        self.started.append(answer.status)
                        if answer.status == 202:
                            self._ids.append((await answer.json())["id"])
                        if answer.status != 503:
                            break
                        wait = answer.headers.get("Retry-After", "1")
                    await asyncio.sleep(min(5.0, float(wait) if wait.isdigit() else 1.0))
        if len(self._ids) != self._count:
            raise RuntimeError(
                f"recoveries_beside: {len(self._ids)} of {self._count} recoveries started "
                f"(statuses {self.started}): the run would measure fewer than it says"
            )

    async def figures(self, worker: kit.Worker) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}"}
        scanned, progress, states = 0, [], []
        async with aiohttp.ClientSession() as session:
            for operation_id in self._ids:
                url = f"{worker.base_url}/v1/recoveries/{operation_id}"
                async with session.get(url, headers=headers) as answer:
                    if answer.status != 200:
                        states.append(str(answer.status))
                        continue
                    body = await answer.json()
                    scanned += int(body.get("scanned") or 0)
                    progress.append(body.get("progress"))
                    states.append(str(body.get("state")))
        return {
            "recoveries_started": self.started,
            "recoveries_states": states,
            "recoveries_records_read": scanned,
            "recoveries_progress": progress,
        }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


async def recoveries_beside(ctx: Context) -> dict[str, Any]:
    """The fan-out 1 backlog with no recoveries, with eight at share 1 and at the default
    share, in rounds rotating the order (see the module docstring)."""
    quick = ctx.sizes.quick
    rounds_count = 1 if quick else 3
    filler = 20_000 if quick else 100_000
    tokens, token = _write_token(ctx.workdir)
    api = {"api_tokens": str(tokens), "api_rate_limit": 0.0}
    changes: dict[str, dict[str, Any]] = {
        "none": api,
        "share_1": {**api, "api_scan_share": 1.0},
        "share_default": api,
    }
    rounds: list[dict[str, dict[str, Any]]] = []
    load_start = _loadavg()
    for round_ in range(rounds_count):
        shift = round_ % len(RECOVERY_VARIANTS)
        order = [*RECOVERY_VARIANTS[shift:], *RECOVERY_VARIANTS[:shift]]
        runs: dict[str, dict[str, Any]] = {}
        for variant in order:
            ctx.log(f"recoveries_beside: round {round_ + 1}, {variant}")
            adjacent, adjacent_error = await adjacent_ceiling(ctx)
            alongside = None if variant == "none" else Recovering(token, filler)
            run = await backlog(
                ctx,
                f"recoveries_beside_{variant}",
                1000,
                1,
                ctx.sizes.fanout_1_events,
                extra_settings=changes[variant],
                alongside=alongside,
            )
            rate = run.get("deliveries_per_s")
            run["adjacent_ceiling_per_s"] = adjacent
            if adjacent_error:
                run["error"] = "; ".join(filter(None, (run.get("error"), adjacent_error)))
            run["ratio_adjacent"] = round(rate / adjacent, 4) if rate and adjacent else None
            runs[variant] = run
        rounds.append(runs)

    def column(variant: str, key: str) -> list[float]:
        return [r[variant][key] for r in rounds if r.get(variant, {}).get(key) is not None]

    summary: dict[str, Any] = {}
    for variant in RECOVERY_VARIANTS:
        summary[f"ratio_adjacent_{variant}"] = column(variant, "ratio_adjacent")
        summary[f"ratio_adjacent_median_{variant}"] = _median(column(variant, "ratio_adjacent"))
        summary[f"deliveries_per_s_median_{variant}"] = _median(column(variant, "deliveries_per_s"))
        summary[f"cpu_ms_per_delivery_median_{variant}"] = _median(
            column(variant, "worker_cpu_ms_per_delivery")
        )
        if variant != "none":
            summary[f"records_read_{variant}"] = column(variant, "recoveries_records_read")
            summary[f"progress_{variant}"] = [
                r[variant].get("recoveries_progress") for r in rounds if variant in r
            ]
            summary[f"recoveries_started_{variant}"] = [
                r[variant].get("recoveries_started") for r in rounds if variant in r
            ]
    for variant in ("share_1", "share_default"):
        kept = [
            r[variant]["ratio_adjacent"] / r["none"]["ratio_adjacent"]
            for r in rounds
            if r.get(variant, {}).get("ratio_adjacent") and r.get("none", {}).get("ratio_adjacent")
        ]
        summary[f"rate_kept_{variant}"] = [round(k, 3) for k in kept]
        summary[f"rate_kept_median_{variant}"] = _median(kept)
    result = _result(
        ctx,
        "recoveries_beside",
        summary["deliveries_per_s_median_share_default"],
        None,
        None,
        latency_kind=None,
        rounds=len(rounds),
        filler_events=filler,
        recoveries=RECOVERIES,
        **summary,
        loadavg_start=load_start,
        loadavg_end=_loadavg(),
    )
    errors = [
        f"{r['name']}: {r['error']}" for runs in rounds for r in runs.values() if r.get("error")
    ]
    if errors:
        result["error"] = "; ".join(errors)[:1500]
    return result
