"""The pieces scenarios are built from: settings and worker processes, webhooks, events."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract.payload import delivery_id
from bridge.worker.embedded import GROUP_TIMEOUTS

from .procs import Proc, Procs, free_port, http_get, rss_kib
from .signatures import webhook_secret

#: Worker settings every scenario uses unless it says otherwise.
BASE_WORKER = {
    "log_level": "WARNING",
    "allow_http": True,
    "allow_networks": ("127.0.0.0/8",),
    # Failures are not the subject of most scenarios; the isolation scenario sets its own.
    "breaker_threshold": 100000,
    "drain_timeout": 3.0,
    "retry_jitter": 0.0,
    # The run's broker is Tansu: the group timeouts `webhook-bridge run` uses on its embedded
    # broker (a 1 s first join instead of 3 s; see bridge.worker.embedded.GROUP_TIMEOUTS).
    **GROUP_TIMEOUTS,
}


def make_settings(bootstrap: str, prefix: str, workdir: Path, **changes: Any) -> Settings:
    """Settings with the scenario's own topics and group, on the run's broker."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "group_id": f"{prefix}",
        "events_topic": f"{prefix}.events",
        "subscriptions_topic": f"{prefix}.webhooks",
        "deadletter_topic": f"{prefix}.deadletter",
        "attempts_topic": f"{prefix}.attempts",
        "status_topic": f"{prefix}.status",
        "recoveries_topic": f"{prefix}.recoveries",
        "retry_topic_prefix": f"{prefix}.retry",
        "web_port": free_port(),
        "data_dir": str(workdir / "data" / prefix),
    }
    values.update(BASE_WORKER)
    values.update(changes)
    return Settings.load(env={}, overrides=values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``python -m bridge.cli run`` load exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def prepare_topics(settings: Settings) -> None:
    await apply_topics(settings)


# -- worker processes ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (from /proc), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass
class Worker:
    """One ``webhook-bridge run`` process."""

    settings: Settings
    proc: Proc
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def ready(self) -> bool:
        return http_get(self.base_url + "/readyz", timeout=1.0)[0] == 200

    async def wait_ready(self, timeout: float) -> float:
        """Seconds from start until /readyz answered 200."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise RuntimeError(
                    f"worker exited with {self.proc.popen.returncode}:\n{self.proc.tail()}"
                )
            if await asyncio.to_thread(self.ready):
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready within {timeout}s:\n{self.proc.tail()}")
            await asyncio.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.base_url + "/metrics", timeout=5.0)
        out: dict[str, float] = {}
        if status != 200:
            return out
        for line in body.decode("utf-8", "replace").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


#: ``bench/run --worker-patch``: run workers through bench.patched_worker with these patches.
WORKER_PATCH: str | None = None


def start_worker(procs: Procs, settings: Settings, name: str, python: str) -> Worker:
    command = [python, "-m", "bridge.cli", "run"]
    if WORKER_PATCH:
        command = [python, "-m", "bench.patched_worker", WORKER_PATCH]
    proc = procs.spawn(name, command, env=settings_env(settings))
    return Worker(settings, proc)


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def histogram_quantile(
    metrics: dict[str, float], name: str, q: float, **labels: str
) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of a histogram, in its unit."""
    buckets: dict[float, float] = {}
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name + "_bucket":
            continue
        if not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        le = rest.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + value
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


# -- webhooks and events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    id: str
    url: str
    secret: str
    site_id: str
    user_id: str


def hook_record(hook: Hook, stamp: str) -> bytes:
    """The subscriptions-topic record of a webhook (built directly: validation costs time the
    100k scenario does not need; the worker validates every record when it loads it)."""
    return json.dumps(
        {
            "id": hook.id,
            "name": f"bench {hook.id}",
            "url": hook.url,
            "secret": hook.secret,
            "events": ["*"],
            "site_id": hook.site_id,
            "user_id": hook.user_id,
            "active": True,
            "created_at": stamp,
            "updated_at": stamp,
        },
        separators=(",", ":"),
    ).encode()


def now_stamp(moment: float | None = None) -> str:
    utc = datetime.fromtimestamp(time.time() if moment is None else moment, UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


async def write_hooks(
    settings: Settings, hooks: Sequence[Hook], *, in_flight: int = 64, sequential: bool = False
) -> float:
    """Write webhook records one record per batch; returns the seconds it took.

    ``max_batch_size`` smaller than two records makes aiokafka put each record in its own batch
    (it always accepts the first record of a batch); ``linger_ms=0`` sends at once. With
    ``in_flight`` sends outstanding, a produce request may carry one single-record batch per
    partition, which the embedded broker handles like single-record requests (the harness
    verifies the count the worker recovers).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        linger_ms=0,
        enable_idempotence=False,
        max_batch_size=300 if not sequential else 16384,
    )
    await producer.start()
    stamp = now_stamp()
    started = time.perf_counter()
    try:
        if sequential:
            for hook in hooks:
                await producer.send_and_wait(
                    settings.subscriptions_topic, hook_record(hook, stamp), key=hook.id.encode()
                )
        else:
            pending: set[asyncio.Future[Any]] = set()
            for hook in hooks:
                if len(pending) >= in_flight:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for future in done:
                        future.result()
                future = await producer.send(
                    settings.subscriptions_topic, hook_record(hook, stamp), key=hook.id.encode()
                )
                pending.add(future)
            for future in pending:
                await future
    finally:
        await producer.stop()
    return time.perf_counter() - started


#: Filler that brings the ceilings' body to about 600 bytes (598); the bridge's bodies of these
#: events come out longer (694-714 bytes at fan-out 1: its webhook names and the events' site and
#: user ids are longer than the ceilings' body's).
_TITLE = "Benchmark post " + "x" * 220


def event_bytes(event_id: str, site_id: str, user_id: str, stamp: str, n: int) -> bytes:
    """A valid ``post.published`` envelope (see ``_TITLE`` for the size of its bodies)."""
    return json.dumps(
        {
            "id": event_id,
            "type": "post.published",
            "data": {
                "id": f"p{n}",
                "title": _TITLE,
                "slug": f"benchmark-post-{n}",
                "status": "published",
                "url": f"https://example.com/posts/benchmark-post-{n}",
                "author_id": "author-1",
            },
            "timestamp": stamp,
            "site_id": site_id,
            "user_id": user_id,
        },
        separators=(",", ":"),
    ).encode()


@dataclass
class Published:
    """What was published: event id -> (event timestamp as unix seconds, site)."""

    stamps: dict[str, float] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)
    #: Seconds from each event's timestamp to the broker's acknowledgement of its write.
    acks: list[float] = field(default_factory=list)

    def expected_ids(self, hooks_by_site: dict[str, list[Hook]]) -> dict[str, tuple[str, str]]:
        """delivery id -> (event id, webhook id) of every delivery these events should produce."""
        out = {}
        for event_id, site in self.sites.items():
            for hook in hooks_by_site.get(site, ()):
                out[delivery_id(event_id, hook.id)] = (event_id, hook.id)
        return out


def _stamp_ms(moment: float) -> tuple[str, float]:
    """The event timestamp (millisecond precision, as the platform writes it) and its value."""
    ms = int(moment * 1000)
    return now_stamp(ms / 1000), ms / 1000


def new_producer(bootstrap: str, **kwargs: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **kwargs
    )


async def publish_backlog(
    settings: Settings, sites: Sequence[tuple[str, str]], count: int, published: Published
) -> float:
    """Publish ``count`` events round-robin over ``sites`` ((site, user) pairs), as fast as the
    broker takes them; returns seconds."""
    producer = new_producer(settings.kafka_bootstrap_servers or "", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        for n in range(count):
            site, user = sites[n % len(sites)]
            event_id = str(uuid.uuid4())
            stamp, value = _stamp_ms(time.time())
            futures.append(
                await producer.send(
                    settings.events_topic,
                    event_bytes(event_id, site, user, stamp, n),
                    key=site.encode(),
                )
            )
            published.stamps[event_id] = value
            published.sites[event_id] = site
        for future in futures:
            await future
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def publish_paced(
    settings: Settings,
    sites: Sequence[tuple[str, str]],
    rate: float,
    seconds: float,
    published: Published,
    stop: asyncio.Event | None = None,
) -> int:
    """Publish at ``rate`` events/s for ``seconds`` (or until ``stop``), each event stamped as it
    is sent; returns the number published. Ticks every 10 ms, catching up if late."""
    producer = new_producer(settings.kafka_bootstrap_servers or "", linger_ms=0)
    await producer.start()
    sent = 0
    started = time.monotonic()
    futures: list[asyncio.Future[Any]] = []
    try:
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds or (stop is not None and stop.is_set()):
                break
            due = int(elapsed * rate)
            while sent < due:
                site, user = sites[sent % len(sites)]
                event_id = str(uuid.uuid4())
                stamp, value = _stamp_ms(time.time())
                written = await producer.send(
                    settings.events_topic,
                    event_bytes(event_id, site, user, stamp, sent),
                    key=site.encode(),
                )
                written.add_done_callback(
                    lambda _, at=value: published.acks.append(time.time() - at)
                )
                futures.append(written)
                published.stamps[event_id] = value
                published.sites[event_id] = site
                sent += 1
            if len(futures) > 1000:
                await asyncio.gather(*futures)
                futures.clear()
            await asyncio.sleep(0.01)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


def make_hooks(
    prefix: str,
    nsites: int,
    per_site: int,
    urls: Sequence[str],
) -> tuple[list[Hook], dict[str, list[Hook]], list[tuple[str, str]]]:
    """``per_site`` webhooks (all events) on each of ``nsites`` sites, spread over ``urls``."""
    hooks: list[Hook] = []
    by_site: dict[str, list[Hook]] = {}
    sites = []
    n = 0
    for s in range(nsites):
        site, user = f"{prefix}-site-{s}", f"{prefix}-user-{s}"
        sites.append((site, user))
        for _ in range(per_site):
            hook_id = f"{prefix}-wh-{n}"
            hook = Hook(hook_id, urls[n % len(urls)], webhook_secret(hook_id), site, user)
            hooks.append(hook)
            by_site.setdefault(site, []).append(hook)
            n += 1
    return hooks, by_site, sites


# -- the signed ~600-byte body the ceilings post --------------------------------------------------


#: The webhook the ceilings' body names (its secret signs the body).
SAMPLE_WEBHOOK = "wh-bench-0"


def sample_body(n: int = 0) -> tuple[bytes, dict[str, str]]:
    """A delivery body of the bridge's shape and size, with the documented headers, for the
    webhook ``SAMPLE_WEBHOOK``."""
    event = json.loads(event_bytes(str(uuid.uuid4()), "site-0", "user-0", now_stamp(), n))
    event.pop("id")
    body = json.dumps(
        {
            "id": str(uuid.uuid4()),
            "event": event,
            "webhook": {"id": SAMPLE_WEBHOOK, "name": f"bench {SAMPLE_WEBHOOK}"},
        },
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": "",
        "X-Webhook-Event": "post.published",
        "X-Webhook-Delivery": str(uuid.uuid4()),
        "User-Agent": "Position-Webhooks/1.0",
    }
    return body, headers


def window_quantile(
    samples: Iterable[tuple[float, float]], start: float, width: float, q: float
) -> list[float | None]:
    """``q`` quantile of the values of ``(moment, value)`` samples in consecutive windows of
    ``width`` seconds from ``start`` (a quantile per window, in order)."""
    windows: dict[int, list[float]] = {}
    for moment, value in samples:
        windows.setdefault(int((moment - start) // width), []).append(value)
    return [percentile(windows.get(i, ()), q) for i in range(max(windows, default=-1) + 1)]


def percentile(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    k = max(0, min(len(data) - 1, int(round(q * (len(data) - 1)))))
    return data[k]


def python_of_venv() -> str:
    return sys.executable
