"""Ceilings measured in the same run, against the same receiver and broker as the scenarios."""

from __future__ import annotations

import asyncio
import functools
import importlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict, TypeVar

import aiohttp
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from .kit import (
    SAMPLE_WEBHOOK,
    event_bytes,
    new_producer,
    now_stamp,
    percentile,
    sample_body,
    window_quantile,
)
from .signatures import sign, webhook_secret

if TYPE_CHECKING:
    from bridge.http.base import DeliverySender
    from bridge.http.ssrf import AddressPolicy

T = TypeVar("T")

#: The secret of the webhook the ceilings' body names, which the receiver checks it with.
SECRET = webhook_secret(SAMPLE_WEBHOOK)
#: Width of the windows whose latency quantiles are reported in order (``p99_by_5s_ms``): on the
#: embedded broker latency grows as a topic grows within one run (BENCHMARKS.md).
WINDOW_S = 5.0

#: Seconds a ceiling's client waits for one answer: a receiver that stopped answering ends the
#: ceiling with an error rather than holding its thread for aiohttp's default five minutes.
CLIENT_TIMEOUT_S = 10.0

#: Sends one signed POST (url, body, headers); True when the receiver acknowledged it.
Post = Callable[[str, bytes, dict[str, str]], Awaitable[bool]]


class PostRun(NamedTuple):
    """One :func:`_post_loop` run."""

    #: Wall seconds of the whole run.
    elapsed: float
    #: Seconds per request, in completion order.
    latencies: list[float]
    #: Requests not acknowledged.
    failures: int


async def _post_loop(
    post: Post,
    urls: list[str],
    count: int,
    concurrency: int,
    stop: threading.Event | None = None,
) -> PostRun:
    """``concurrency`` tasks POSTing signed bodies until ``count`` requests are done, or until
    ``stop`` is set (each task ends after the request it is sending)."""
    body, base_headers = sample_body()
    latencies: list[float] = []
    failures = 0
    next_n = 0

    async def task() -> None:
        nonlocal next_n, failures
        while next_n < count and not (stop is not None and stop.is_set()):
            n = next_n
            next_n += 1
            headers = dict(base_headers)
            headers["X-Webhook-Delivery"] = str(uuid.uuid4())
            headers["X-Webhook-Signature"] = sign(SECRET, body)
            started = time.perf_counter()
            ok = await post(urls[n % len(urls)], body, headers)
            latencies.append(time.perf_counter() - started)
            if not ok:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(concurrency)))
    return PostRun(time.perf_counter() - started, latencies, failures)


def _result(
    name: str,
    elapsed: float,
    latencies: list[float],
    failures: int,
    count: int,
    *,
    requests: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ceiling's result: ``count`` requests in ``elapsed`` seconds. A ceiling any request of
    which failed (``failures`` of ``requests``, all its runs' when it made several) measured a
    receiver that did not take the load, not the client: it has no rate and says why."""
    requests = count if requests is None else requests
    rate = round(count / elapsed, 1) if elapsed > 0 and not failures else None
    result: dict[str, Any] = {
        "name": name,
        "deliveries_per_s": rate,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "ceiling_per_s": rate,
        "ratio": 1.0 if rate else None,
        "latency_kind": "client request duration",
        "requests": requests,
        "failures": failures,
        "seconds": round(elapsed, 2),
        **extra,
    }
    if failures:
        result["error"] = f"{failures} of {requests} requests not answered 200"
    return result


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


async def _aiohttp_runs(
    urls: list[str], count: int, concurrency: int, runs: int, stop: threading.Event
) -> list[PostRun]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> bool:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status == 200

        await _post_loop(post, urls, min(500, count), concurrency, stop)  # warm the pool
        return [await _post_loop(post, urls, count, concurrency, stop) for _ in range(runs)]


def _run_on(loop_kind: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop of ``loop_kind`` (in this thread)."""
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


async def _in_thread(
    loop_kind: str, make: Callable[[threading.Event], Coroutine[Any, Any, T]]
) -> T:
    """Run ``make(stop)`` on a new event loop of ``loop_kind`` in a thread of its own, and await
    its result. When this await is cancelled (the run's deadline, a signal), ``stop`` is set:
    the client sends nothing more, and ends once its requests in flight are answered, fail when
    the run stops the receiver, or time out (``CLIENT_TIMEOUT_S``). The thread is a daemon
    nobody waits for, so the harness stops its processes at once (``asyncio.run`` would wait
    for a thread of its default executor before returning)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    stop = threading.Event()

    def finish(settle: Callable[[], None]) -> None:
        try:
            loop.call_soon_threadsafe(lambda: None if done.done() else settle())
        except RuntimeError:  # the awaiting loop is closed: nobody wants the outcome
            pass

    def target() -> None:
        try:
            result = _run_on(loop_kind, make(stop))
        except BaseException as exc:  # handed to the awaiting loop
            finish(functools.partial(done.set_exception, exc))
        else:
            finish(functools.partial(done.set_result, result))

    threading.Thread(target=target, name="bench-ceiling-client", daemon=True).start()
    try:
        return await done
    finally:
        stop.set()


async def aiohttp_ceiling(
    urls: list[str], count: int, concurrency: int = 32, *, runs: int = 3, loop: str = "uvloop"
) -> dict[str, Any]:
    """(a) A raw aiohttp client loop: the fastest a Python process signs and POSTs here.

    On the worker's event loop (uvloop unless the worker is set to asyncio), in a thread of its
    own while the harness waits; ``runs`` back-to-back runs, the median one reported (one run
    of a few seconds on a shared machine can be off by a third)."""
    results = await _in_thread(
        loop, lambda stop: _aiohttp_runs(urls, count, concurrency, runs, stop)
    )
    ordered = sorted(results, key=lambda r: r.elapsed)
    elapsed, latencies, _ = ordered[len(ordered) // 2]
    return _result(
        "ceiling_aiohttp",
        elapsed,
        latencies,
        sum(r.failures for r in results),
        count,
        requests=count * len(results),
        concurrency=concurrency,
        event_loop=loop,
        runs_per_s=[round(count / r.elapsed, 1) for r in results],
        body_bytes=len(sample_body()[0]),
        what=f"raw aiohttp client, N tasks POSTing a signed {len(sample_body()[0])}-byte body "
        f"with the documented headers, on {loop} like the worker; median of {runs} runs",
    )


async def httpx_ceiling(urls: list[str], count: int, concurrency: int = 8) -> dict[str, Any]:
    """(c) httpx with its default transport, for context (the bridge sends with httpx)."""
    async with httpx.AsyncClient() as client:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> bool:
            response = await client.post(url, content=body, headers=headers)
            await response.aread()
            return response.status_code == 200

        await _post_loop(post, urls, min(200, count), concurrency)
        elapsed, latencies, failures = await _post_loop(post, urls, count, concurrency)
    return _result(
        f"ceiling_httpx_{concurrency}",
        elapsed,
        latencies,
        failures,
        count,
        concurrency=concurrency,
        what=f"httpx.AsyncClient() default transport, {concurrency} in flight",
    )


class _SenderOptions(TypedDict):
    """What the sender classes are built with here (the worker's defaults, plain http allowed,
    a timeout of ``CLIENT_TIMEOUT_S``)."""

    timeout: float
    max_connections: int
    max_connections_per_endpoint: int
    policy: AddressPolicy
    allow_http: bool


def _hot_path_sender(
    policy: AddressPolicy, kind: str = "http1"
) -> tuple[DeliverySender, Callable[[], Awaitable[None]], str]:
    """The worker's sender for the ``http_client`` setting ``kind`` (``http1``, ``aiohttp`` or
    ``httpx``; older checkouts fall back to what they have): (sender, closer, class name)."""
    from bridge.http.httpx_sender import HttpxSender, new_client

    options: _SenderOptions = {
        "timeout": CLIENT_TIMEOUT_S,
        "max_connections": 256,
        "max_connections_per_endpoint": 16,
        "policy": policy,
        "allow_http": True,
    }
    if kind == "http1":
        try:
            from bridge.http.http1_sender import Http1Sender
        except ImportError:
            kind = "aiohttp"
        else:
            http1 = Http1Sender(**options)
            return http1, http1.aclose, "Http1Sender"
    if kind == "aiohttp":
        try:
            # Gone from the bridge; only a checkout from before its removal has it.
            aiohttp_sender = importlib.import_module("bridge.aiohttp_sender")
        except ImportError:
            kind = "httpx"
        else:
            legacy = aiohttp_sender.AiohttpSender(**options)
            return legacy, legacy.aclose, "AiohttpSender"
    client = new_client(CLIENT_TIMEOUT_S, 256, policy=policy)
    sender = HttpxSender(client, timeout=CLIENT_TIMEOUT_S, allow_http=True, policy=policy)
    return sender, client.aclose, "HttpxSender (httpx)"


async def bridge_sender_ceiling(
    urls: list[str],
    count: int,
    concurrency: int = 32,
    *,
    loop: str = "uvloop",
    kind: str = "http1",
) -> dict[str, Any]:
    """The bridge's own HTTP sending (the worker's sender class with the SSRF guard,
    ``build_headers``, the documented success rule), no Kafka: what the worker could reach if
    everything around the HTTP request were free. On the worker's event loop, in a thread."""
    result: dict[str, Any] = await _in_thread(
        loop, lambda stop: _bridge_sender_run(urls, count, concurrency, kind, stop)
    )
    result["event_loop"] = loop
    return result


async def _bridge_sender_run(
    urls: list[str], count: int, concurrency: int, kind: str, stop: threading.Event
) -> dict[str, Any]:
    from bridge.contract.events import parse_event
    from bridge.contract.payload import EncodedEvent
    from bridge.delivery.job import Job, SourceRef
    from bridge.http.ssrf import AddressPolicy
    from bridge.subscriptions.webhook import Webhook

    policy = AddressPolicy.from_setting("127.0.0.0/8", enabled=True)
    sender, close, kind = _hot_path_sender(policy, kind)
    body, _ = sample_body()
    webhooks = {
        url: Webhook(
            id=f"wh-{i}",
            name=f"wh-{i}",
            url=url,
            secret=SECRET,  # the body it sends names the ceilings' webhook
            events=frozenset({"*"}),
            site_id="site-0",
            user_id="user-0",
        )
        for i, url in enumerate(urls)
    }

    source = SourceRef("bench", 0, 0)
    # A job per request, as the worker makes one per delivery; the events (a fresh id each, so
    # every delivery id differs) are made before the clock starts.
    events = iter(
        [
            EncodedEvent.of(parse_event(event_bytes(str(uuid.uuid4()), "s", "u", now_stamp(), 1)))
            for _ in range(count + min(300, count) + len(urls))
        ]
    )

    async def post(url: str, body_: bytes, headers: dict[str, str]) -> bool:
        result = await sender.send(Job(next(events), webhooks[url], 1, source), body)
        return bool(result.success)

    try:
        await _post_loop(post, urls, min(300, count), concurrency, stop)
        elapsed, latencies, failures = await _post_loop(post, urls, count, concurrency, stop)
    finally:
        await close()
    return _result(
        "ceiling_bridge_sender",
        elapsed,
        latencies,
        failures,
        count,
        concurrency=concurrency,
        sender=kind,
        what=f"the worker's sender class ({kind}) with the SSRF guard, {concurrency} in flight, "
        "no Kafka",
    )


async def _create_topic(bootstrap: str, topic: str) -> None:
    """A 6-partition topic for a Kafka ceiling."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
    finally:
        await admin.close()


async def raw_consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float,
    *,
    partitions: Iterable[int] | None = None,
) -> tuple[int, float, int]:
    """A raw aiokafka consume of ``partitions`` (every partition the metadata names, when not
    given) from the start, until ``count`` records or ``timeout`` seconds: the records read,
    the seconds it took, and how many partitions were read."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        numbers = partitions if partitions is not None else consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(numbers or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        started = time.perf_counter()
        deadline = started + timeout
        while got < count and time.perf_counter() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for messages in batch.values():
                got += len(messages)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return got, elapsed, len(tps)


async def kafka_ceiling(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """(b) Raw aiokafka consume rate of a pre-filled topic (6 partitions, event-sized records)."""
    await _create_topic(bootstrap, topic)
    producer = new_producer(bootstrap, linger_ms=5)
    await producer.start()
    stamp = now_stamp()
    try:
        futures = [
            await producer.send(
                topic,
                event_bytes(str(uuid.uuid4()), f"site-{n % 1000}", "u", stamp, n),
                key=f"site-{n % 1000}".encode(),
            )
            for n in range(count)
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()
    got, elapsed, _ = await raw_consume(bootstrap, topic, count, 60.0, partitions=range(6))
    rate = got / elapsed if elapsed > 0 else 0.0
    return {
        "name": "ceiling_kafka_consume",
        "deliveries_per_s": round(rate, 1),
        "p50_ms": None,
        "p99_ms": None,
        "ceiling_per_s": round(rate, 1),
        "ratio": 1.0,
        "latency_kind": None,
        "records": got,
        "seconds": round(elapsed, 2),
        "what": "AIOKafkaConsumer.getmany over a pre-filled 6-partition topic (records/s)",
    }


def cpu_costs(samples: int = 2000) -> dict[str, float]:
    """Microseconds per call of the bridge's per-event and per-delivery pure-Python steps."""
    from bridge.contract.events import parse_event
    from bridge.contract.payload import EncodedEvent, build_body
    from bridge.delivery.job import Job, SourceRef
    from bridge.http.base import build_headers
    from bridge.subscriptions.webhook import Webhook

    raw = event_bytes(str(uuid.uuid4()), "site-0", "user-0", now_stamp(), 1)
    webhook = Webhook(
        id="wh-0",
        name="wh-0",
        url="http://127.0.0.1:1/hook",
        secret="s" * 64,
        events=frozenset({"*"}),
        site_id="site-0",
        user_id="user-0",
    )

    def timed(fn: Callable[[], object]) -> float:
        fn()
        started = time.perf_counter()
        for _ in range(samples):
            fn()
        return round((time.perf_counter() - started) / samples * 1e6, 1)

    event = parse_event(raw)
    encoded = EncodedEvent.of(event)
    body = build_body(encoded, webhook)
    job = Job(encoded, webhook, 1, SourceRef("bench", 0, 0))
    return {
        "parse_event_us": timed(lambda: parse_event(raw)),
        "encode_event_us": timed(lambda: EncodedEvent.of(event)),
        "build_body_us": timed(lambda: build_body(encoded, webhook)),
        "build_headers_us": timed(lambda: build_headers(job, body)),
        "keep_attempt_us": keep_attempt_us(job, 10 * samples),
    }


def keep_attempt_us(job: object, records: int) -> float:
    """Microseconds per attempt record the delivery log's reader takes into the ``memory``
    store (decoded, checked, kept in its webhook's log and counted in its stats), as
    :class:`~bridge.worker.delivery_log.DeliveryLogReader` is given them: attempts of 100
    webhooks, 100 records a fetch, none read before."""
    from bridge.attempts.stores import MemoryStore
    from bridge.contract import jsoncanon
    from bridge.delivery.attempt_record import attempt_record
    from bridge.delivery.job import Job
    from bridge.http.base import AttemptResult
    from bridge.worker.delivery_log import DeliveryLogReader

    assert isinstance(job, Job)
    values = []
    for n in range(records):
        result = AttemptResult(
            success=True, status=200, error=None, duration=0.0023, at=now_stamp(), response_bytes=2
        )
        record = attempt_record(job, result, "success", None)
        record["delivery_id"] = f"dlv_{uuid.uuid4()}"
        record["webhook_id"] = f"wh-{n % 100}"
        values.append(jsoncanon.dumps_flat(record))
    store = MemoryStore(max_attempts=1000, max_age=7 * 86400.0)
    reader = DeliveryLogReader(
        topic="attempts", consumer_factory=lambda: None, store=store, max_age=7 * 86400.0
    )
    reader.hold(0)
    fetches = [
        [(offset, values[offset], -1) for offset in range(start, min(start + 100, records))]
        for start in range(0, records, 100)
    ]
    started = time.perf_counter()
    for fetch in fetches:
        reader.add_many(0, fetch)
    elapsed = time.perf_counter() - started
    assert sum(reader.read.values()) == records and not reader.invalid
    return round(elapsed / records * 1e6, 1)


async def end_offsets_rtt(bootstrap: str, topic: str, rounds: int = 300) -> float:
    """Milliseconds per ``end_offsets`` call for every partition of ``topic`` (the request the
    bridge's subscription-freshness check makes) on an idle loop: the broker round trip
    without any queueing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        await consumer.end_offsets(tps)
        started = time.perf_counter()
        for _ in range(rounds):
            await consumer.end_offsets(tps)
        return round((time.perf_counter() - started) / rounds * 1000, 3)
    finally:
        await consumer.stop()


async def kafka_latency_floor(
    bootstrap: str, topic: str, rate: float, seconds: float, fetch_max_wait_ms: int = 10
) -> dict[str, Any]:
    """Produce at ``rate`` and consume with a raw aiokafka consumer polling with a short fetch
    wait: the publish -> consume latency of this broker, below which no worker can deliver.

    The embedded broker (Tansu) answers a fetch late when it had nothing at the start: with
    aiokafka's default 500 ms wait a raw consumer sees about 130 ms at p50, with 10 ms about
    2 ms (measured while writing this harness); Faust's consumer uses 1500 ms."""
    import json as _json

    from bridge.contract.events import parse_time

    await _create_topic(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=fetch_max_wait_ms
    )
    await consumer.start()
    #: (event timestamp, latency) of each record consumed.
    samples: list[tuple[float, float]] = []

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            now = time.time()
            for messages in batch.values():
                for message in messages:
                    stamp = _json.loads(message.value)["timestamp"]
                    at = parse_time(stamp).timestamp()
                    samples.append((at, now - at))

    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        task = asyncio.create_task(consume())
        producer = new_producer(bootstrap, linger_ms=0)
        await producer.start()
        sent = 0
        begun = time.time()
        try:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                while sent < int(elapsed * rate):
                    n = sent
                    value = event_bytes(str(uuid.uuid4()), f"s{n % 100}", "u", now_stamp(), n)
                    await producer.send(topic, value, key=f"s{n % 100}".encode())
                    sent += 1
                await asyncio.sleep(0.01)
            await producer.flush()
        finally:
            await producer.stop()
        deadline = time.monotonic() + fetch_max_wait_ms / 1000 + 3
        while len(samples) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await consumer.stop()
    latencies = [latency for _, latency in samples]
    result = {
        "name": "ceiling_kafka_latency",
        "deliveries_per_s": round(rate, 1),
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "ceiling_per_s": None,
        "ratio": None,
        "latency_kind": "event timestamp -> raw consumer getmany (ms timestamps)",
        "records": sent,
        "consumed": len(latencies),
        "fetch_max_wait_ms": fetch_max_wait_ms,
        f"p99_by_{WINDOW_S:g}s_ms": [
            _ms(q) for q in window_quantile(samples, begun, WINDOW_S, 0.99)
        ],
        "what": f"paced producer + raw AIOKafkaConsumer (fetch_max_wait_ms={fetch_max_wait_ms})"
        ": the broker's publish -> consume latency",
    }
    if len(latencies) < sent:
        # The quantiles of the records that came are not the broker's latency at this load.
        result["error"] = f"consumed {len(latencies)} of {sent} records"
    return result
