"""Prototype of the planned delivery log: a Faust table ``attempts-by-webhook``, measured again.

docs/api.md ("Design") says the delivery log was planned as a Faust table fed from the attempts
topic and built as a group-less aiokafka consumer, because Faust's changelog recovery dropped the
record where recovery ended, took 32.7 s where the consumer takes 7.3 s (100,000 attempts), and
a table keeps one value per key. This script rebuilds that prototype, with the key layout
``<webhook id>|<source offset, 12 digits>`` (many values per webhook), and measures:

* feed: a fresh worker (own group, own changelog, own data dir) whose agent copies every attempt
  record into the table, from the worker's spawn until the agent has set all N keys (then the
  producer is flushed and offsets committed; the worker is stopped with SIGTERM, a bounded wait,
  then SIGKILL);
* the changelog as written: records per partition, distinct keys, the end offsets the broker
  reports against the last offset + 1 actually fetched (the embedded broker reports the last
  *batch's* base offset + 1: docs/producers.md);
* recover: the same app id and data dir started again: seconds from spawn (and from the app's
  start) until the table's recovery is complete ("Worker ready"), how many of the N keys the
  recovered table holds, and which are missing (partition, changelog offset, whether past the
  reported end);
* for comparison: a raw aiokafka consume of the attempts topic, and the bridge's own
  ``DeliveryLogReader`` (memory and rocksdb stores) reading it, in a process of its own.

Each combination of store (``rocksdb://`` through rocksdict, ``memory://``) and the bridge's Faust
patches (on/off) runs ``--runs`` times, on a fresh embedded broker each. Every process is started
by this script, bound to it (killed if it dies) and stopped by PID with bounded waits.

    PYTHONPATH=. .venv/bin/python bench/proto_attempts_table.py --runs 3 --out /tmp/proto.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

APP_PREFIX = "proto"
TABLE = "attempts-by-webhook"
ATTEMPTS_TOPIC = "attempts"
PARTITIONS = 6


def loadavg() -> float:
    return os.getloadavg()[0]


def others_busy() -> list[str]:
    """Command lines of pytest or bench/run processes (read-only look at /proc)."""
    out = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "pytest" in cmd or "bench/run" in cmd:
            out.append(f"{entry} {cmd[:120]}")
    return out


NO_WAIT = False


def wait_quiet(what: str, limit: float = 0.8, max_wait: float = 900.0, poll: float = 20.0) -> float:
    """Wait until the 1-minute load is below ``limit`` and no pytest/bench run is running."""
    if NO_WAIT:
        return round(loadavg(), 2)
    started = time.monotonic()
    while True:
        load, busy = loadavg(), others_busy()
        if load < limit and not busy:
            return round(load, 2)
        waited = time.monotonic() - started
        if waited > max_wait:
            print(
                f"  [{what}] still busy after {waited:.0f}s (load {load:.2f}, {busy}); going on",
                flush=True,
            )
            return load
        print(f"  [{what}] waiting: load {load:.2f}, others {len(busy)}", flush=True)
        time.sleep(poll)


# -- the Faust worker (child process) ----------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    spawned = float(args.spawned)
    t_import0 = time.time()
    import faust

    if args.patches == "on":
        from bridge.worker.faust_patches import install, set_fetch_max_wait

        set_fetch_max_wait(0.05)  # the bridge's default kafka_fetch_max_wait
        install()
    t_imported = time.time()
    result: dict[str, Any] = {"mode": args.mode, "import_s": round(t_imported - t_import0, 3)}
    out_path = Path(args.result)

    def write(extra: dict[str, Any]) -> None:
        result.update(extra)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(out_path)

    app = faust.App(
        args.app_id,
        env={},
        broker=f"kafka://{args.broker}",
        store="rocksdb://" if args.store == "rocksdb" else "memory://",
        datadir=args.datadir,
        web_enabled=False,
        topic_partitions=PARTITIONS,
        topic_allow_declare=False,
        topic_disable_leader=False,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=3.0,
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.5,
        broker_commit_interval=1.0,
        producer_acks=-1,
        stream_wait_empty=False,
        recovery_consistency_check=args.consistency_check == "on",
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    topic = app.topic(ATTEMPTS_TOPIC, partitions=PARTITIONS, **raw)
    options = {"driver": "rocksdict"} if args.store == "rocksdb" else None
    table = app.Table(
        TABLE, partitions=PARTITIONS, options=options, key_type=bytes, value_type=bytes
    )
    n = int(args.n)
    state: dict[str, Any] = {"events": 0, "first_event": None, "all_set": None}

    @app.agent(topic)
    async def feed(stream: Any) -> None:
        async for event in stream.events():
            key = event.key + b"|" + b"%012d" % event.message.offset
            table[key] = event.value
            state["events"] += 1
            if state["first_event"] is None:
                state["first_event"] = time.time()
            if state["events"] == n and state["all_set"] is None:
                state["all_set"] = time.time()

    def table_keys() -> dict[int, list[str]]:
        store: Any = table.data  # Faust's store objects (their internals: a prototype)
        by_partition: dict[int, list[str]] = {}
        if args.store == "rocksdb":
            for partition, db in sorted(store._dbs.items()):  # faust: one rocksdict per partition
                by_partition[partition] = [k.decode() for k in store._visible_keys(db)]
        else:
            for key in store.data.keys():  # faust memory store: a dict
                k = key.decode() if isinstance(key, bytes) else str(key)
                by_partition.setdefault(-1, []).append(k)
        return by_partition

    # "Worker ready": the end of Recovery.on_recovery_completed (Faust's or the bridge's patch).
    from faust.tables.recovery import Recovery

    ready = asyncio.Event()
    marks: dict[str, float] = {}
    completed = Recovery.on_recovery_completed

    async def on_recovery_completed(self: Any, *a: Any, **kw: Any) -> None:
        marks.setdefault("recovery_completed_called", time.time())
        await completed(self, *a, **kw)
        marks.setdefault("worker_ready", time.time())
        ready.set()

    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]

    @app.task  # type: ignore[untyped-decorator]
    async def watch() -> None:
        await ready.wait()
        t_recovered = marks["worker_ready"]
        base = {
            "spawn_to_exec_s": round(marks["exec"] - spawned, 3),
            "spawn_to_recovered_s": round(t_recovered - spawned, 3),
            "exec_to_recovered_s": round(t_recovered - marks["exec"], 3),
            "recovery_completed_call_s": round(t_recovered - marks["recovery_completed_called"], 3),
        }
        if args.mode == "recover":
            recovery = app.tables.recovery  # type: ignore[attr-defined]
            keys = table_keys()
            t_counted = time.time()
            keys_path = Path(args.result).with_suffix(".keys")
            keys_path.write_text("\n".join(k for ks in keys.values() for k in ks))
            write(
                {
                    **base,
                    "count_s": round(t_counted - t_recovered, 3),
                    "keys": sum(len(v) for v in keys.values()),
                    "keys_by_db_partition": {str(p): len(v) for p, v in keys.items()},
                    "events_before_snapshot": state["events"],
                    "active_offsets": {
                        f"{tp.partition}": o for tp, o in recovery.active_offsets.items()
                    },
                    "active_highwaters": {
                        f"{tp.partition}": o for tp, o in recovery.active_highwaters.items()
                    },
                }
            )
            # A few seconds later: were records fetched past the reported ends applied since?
            await asyncio.sleep(3.0)
            keys = table_keys()
            later = Path(args.result).with_suffix(".keys3s")
            later.write_text("\n".join(k for ks in keys.values() for k in ks))
            write(
                {
                    "keys_3s_after": sum(len(v) for v in keys.values()),
                    "events_3s_after": state["events"],
                    "done": True,
                }
            )
            os._exit(0)
        write(base)
        deadline = time.time() + float(args.timeout)
        while state["all_set"] is None and time.time() < deadline:
            await asyncio.sleep(0.05)
        if state["all_set"] is None:
            write({"error": f"only {state['events']} events in {args.timeout}s", "done": True})
            return
        t_all = state["all_set"]
        await app.producer.flush()
        t_flushed = time.time()
        await app.consumer.commit()
        write(
            {
                "spawn_to_all_set_s": round(t_all - spawned, 3),
                "first_to_all_set_s": round(t_all - state["first_event"], 3),
                "ready_to_all_set_s": round(t_all - t_recovered, 3),
                "flush_s": round(t_flushed - t_all, 3),
                "events": state["events"],
                "memory_keys": len(table.data) if args.store == "memory" else None,
                "done": True,
            }
        )

    marks["exec"] = time.time()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


# -- the bridge's reader and a raw consume (child process) -------------------------------------


def reader_child(args: argparse.Namespace) -> None:
    spawned = float(args.spawned)
    from aiokafka import AIOKafkaConsumer

    from bridge.attempts.stores import MemoryStore, RocksStore
    from bridge.worker.delivery_log import DeliveryLogReader

    n = int(args.n)

    async def main() -> dict[str, Any]:
        t0 = time.time()
        max_age = 30 * 86400.0
        if args.store == "rocksdb":
            store: Any = RocksStore(
                Path(args.datadir) / "delivery-log", max_attempts=1000, max_age=max_age
            )
        else:
            store = MemoryStore(max_attempts=1000, max_age=max_age)
        reader = DeliveryLogReader(
            topic=ATTEMPTS_TOPIC,
            consumer_factory=lambda: AIOKafkaConsumer(
                bootstrap_servers=args.broker,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="none",
            ),
            store=store,
            max_age=max_age,
        )
        await reader.start()
        reader.assign(range(PARTITIONS))
        caught_up_at = None
        deadline = time.time() + float(args.timeout)
        while time.time() < deadline:
            read = sum(reader.read.values())
            if caught_up_at is None and reader.caught_up:
                caught_up_at = time.time()
            if read >= n:
                break
            await asyncio.sleep(0.01)
        t_all = time.time()
        summary = reader.summary()
        await reader.stop()
        return {
            "store": args.store,
            "records_read": sum(reader.read.values()),
            "spawn_to_all_read_s": round(t_all - spawned, 3),
            "start_to_all_read_s": round(t_all - t0, 3),
            "start_to_caught_up_s": None if caught_up_at is None else round(caught_up_at - t0, 3),
            "attempts": summary.get("attempts"),
            "webhooks": summary.get("webhooks"),
            "gaps": len(summary.get("gaps") or ()),
        }

    result = asyncio.run(main())
    Path(args.result).write_text(json.dumps(result))


async def raw_consume(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[str, Any]:
    """Every record of every partition from the start: counts, last offsets, reported ends."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reported = await consumer.end_offsets(tps)
        started = time.perf_counter()
        deadline = started + timeout
        counts = {p: 0 for p in range(PARTITIONS)}
        last = {p: -1 for p in range(PARTITIONS)}
        keys: dict[int, dict[bytes, int]] = {p: {} for p in range(PARTITIONS)}
        idle_since = None
        while time.perf_counter() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            got = 0
            for tp, messages in batch.items():
                got += len(messages)
                counts[tp.partition] += len(messages)
                if messages:
                    last[tp.partition] = messages[-1].offset
                for m in messages:
                    keys[tp.partition][m.key] = m.offset
            # read past the reported ends: stop after 1 s without records
            if got:
                idle_since = None
                t_last = time.perf_counter()
            elif idle_since is None:
                idle_since = time.perf_counter()
            elif time.perf_counter() - idle_since > 1.0:
                break
        elapsed = t_last - started if sum(counts.values()) else 0.0
    finally:
        await consumer.stop()
    return {
        "records": sum(counts.values()),
        "seconds_to_last_record": round(elapsed, 3),
        "per_s": round(sum(counts.values()) / elapsed, 1) if elapsed else None,
        "counts": counts,
        "last_offset": last,
        "reported_end": {tp.partition: off for tp, off in reported.items()},
        "keys": keys,
    }


# -- the orchestration ---------------------------------------------------------------------------


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    from bridge.worker.embedded import spawn_bound_to_parent

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    with open(log, "ab") as fh:
        return spawn_bound_to_parent(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], grace: float) -> dict[str, Any]:
    """SIGTERM, a bounded wait, then SIGKILL."""
    if proc.poll() is not None:
        return {"stopped": "exited", "rc": proc.returncode, "stop_s": 0.0}
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
        how = "sigterm"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        how = "sigkill"
    return {"stopped": how, "rc": proc.returncode, "stop_s": round(time.monotonic() - t0, 2)}


def wait_result(proc: subprocess.Popen[bytes], path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data: dict[str, Any] = json.loads(path.read_text())
            if data.get("done"):
                return data
        if proc.poll() is not None:
            time.sleep(0.2)
            if path.exists():
                data = json.loads(path.read_text())
                if data.get("done"):
                    return data
            return {"error": f"exited with {proc.returncode} before a result"}
        time.sleep(0.05)
    return {"error": f"no result within {timeout}s"}


async def setup_topics(bootstrap: str, app_id: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(ATTEMPTS_TOPIC, PARTITIONS, 1),
                NewTopic(
                    f"{app_id}-{TABLE}-changelog",
                    PARTITIONS,
                    1,
                    topic_configs={"cleanup.policy": "compact"},
                ),
            ]
        )
    finally:
        await admin.close()


async def produce(
    bootstrap: str, records: list[tuple[bytes, bytes, int]]
) -> tuple[float, list[Any]]:
    """As bench/control_plane.py writes attempts: batched (linger 20 ms, 256 KiB batches)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    metas = []
    try:
        pending: list[Any] = []
        for key, value, stamp in records:
            pending.append(await producer.send(ATTEMPTS_TOPIC, value, key=key, timestamp_ms=stamp))
            if len(pending) >= 20000:
                metas += await asyncio.gather(*pending)
                pending.clear()
        metas += await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started, [(m.partition, m.offset) for m in metas]


def one_run(
    args: argparse.Namespace,
    run: int,
    store: str,
    patches: str,
    records: list[tuple[bytes, bytes, int]],
    workdir: Path,
    with_readers: bool,
) -> dict[str, Any]:
    from bridge.worker.embedded import EmbeddedBroker, free_port

    tag = f"r{run}-{store}-{patches}"
    app_id = f"{APP_PREFIX}-{tag}"
    rundir = workdir / tag
    rundir.mkdir(parents=True)
    out: dict[str, Any] = {"run": run, "store": store, "patches": patches}
    broker = EmbeddedBroker(free_port(), log_path=str(rundir / "broker.log"))
    broker.start()
    bootstrap = broker.bootstrap_servers
    try:
        asyncio.run(setup_topics(bootstrap, app_id))
        produce_s, metas = asyncio.run(produce(bootstrap, records))
        out["produce_s"] = round(produce_s, 2)
        expected = {
            f"{records[i][0].decode()}|{off:012d}": (p, off) for i, (p, off) in enumerate(metas)
        }
        source = asyncio.run(raw_consume(bootstrap, ATTEMPTS_TOPIC))
        out["source"] = {k: source[k] for k in ("records", "counts", "last_offset", "reported_end")}
        out["load_before_feed"] = wait_quiet(f"{tag} feed")
        base = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            "faust",
            "--app-id",
            app_id,
            "--broker",
            bootstrap,
            "--store",
            store,
            "--patches",
            patches,
            "--datadir",
            str(rundir / "data"),
            "--n",
            str(args.attempts),
            "--consistency-check",
            args.consistency_check,
            "--timeout",
            str(args.feed_timeout),
        ]
        res = rundir / "feed.json"
        proc = spawn(
            [*base, "--mode", "feed", "--result", str(res), "--spawned", repr(time.time())],
            rundir / "feed.log",
        )
        out["feed"] = wait_result(proc, res, args.feed_timeout + 30)
        out["feed"]["load_end"] = round(loadavg(), 2)
        out["feed"].update(stop(proc, grace=15.0))
        # The changelog as written.
        cl = asyncio.run(raw_consume(bootstrap, f"{app_id}-{TABLE}-changelog"))
        cl_keys = {k.decode(): (p, off) for p, ks in cl["keys"].items() for k, off in ks.items()}
        out["changelog"] = {
            "records": cl["records"],
            "distinct_keys": len(cl_keys),
            "counts": cl["counts"],
            "last_offset": cl["last_offset"],
            "reported_end": cl["reported_end"],
            "unread_by_reported_end": sum(
                max(0, cl["last_offset"][p] + 1 - cl["reported_end"][p]) for p in range(PARTITIONS)
            ),
            "expected_keys_missing": len(set(expected) - set(cl_keys)),
        }
        print(
            f"  {tag}: feed {out['feed'].get('spawn_to_all_set_s')}s "
            f"({out['feed'].get('stopped')}), changelog {cl['records']} records, "
            f"ends reported {cl['reported_end']} vs last+1 "
            f"{ {p: o + 1 for p, o in cl['last_offset'].items()} }",
            flush=True,
        )
        out["load_before_recover"] = wait_quiet(f"{tag} recover")
        res = rundir / "recover.json"
        proc = spawn(
            [*base, "--mode", "recover", "--result", str(res), "--spawned", repr(time.time())],
            rundir / "recover.log",
        )
        rec = wait_result(proc, res, args.recover_timeout)
        rec["load_end"] = round(loadavg(), 2)
        rec.update(stop(proc, grace=10.0))
        keys_path = res.with_suffix(".keys")
        if keys_path.exists():
            got = set(filter(None, keys_path.read_text().split("\n")))
            missing = sorted(set(expected) - got)
            extra = len(got - set(expected))
            details = []
            for key in missing[:50]:
                p, src_off = expected[key]
                where = cl_keys.get(key)
                details.append(
                    {
                        "key": key,
                        "partition": p,
                        "source_offset": src_off,
                        "changelog_offset": None if where is None else where[1],
                        "changelog_last_offset": cl["last_offset"][p],
                        "changelog_reported_end": cl["reported_end"][p],
                        "last_of_partition": where is not None and where[1] == cl["last_offset"][p],
                        "past_reported_end": where is not None
                        and where[1] >= cl["reported_end"][p],
                    }
                )
            rec["recovered_keys"] = len(got & set(expected))
            rec["missing"] = len(missing)
            rec["missing_detail"] = details
            rec["unexpected_keys"] = extra
        later = res.with_suffix(".keys3s")
        if later.exists():
            got3 = set(filter(None, later.read_text().split("\n")))
            rec["missing_3s_after"] = sorted(set(expected) - got3)[:50]
        out["recover"] = rec
        print(
            f"  {tag}: recovered {rec.get('recovered_keys')}/{args.attempts} keys in "
            f"{rec.get('spawn_to_recovered_s')}s from spawn "
            f"({rec.get('exec_to_recovered_s')}s from worker exec); "
            f"missing {rec.get('missing')} ({len(rec.get('missing_3s_after') or [])} 3 s later) "
            f"{rec.get('error') or ''}",
            flush=True,
        )
        if with_readers:
            out["readers"] = readers(args, bootstrap, rundir, tag)
    finally:
        broker.stop()
    return out


def readers(args: argparse.Namespace, bootstrap: str, rundir: Path, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    load = wait_quiet(f"{tag} raw consume")
    raw = asyncio.run(raw_consume(bootstrap, ATTEMPTS_TOPIC))
    out["raw_consume"] = {
        "records": raw["records"],
        "seconds": raw["seconds_to_last_record"],
        "per_s": raw["per_s"],
        "load_before": load,
    }
    for store in ("memory", "rocksdb"):
        load = wait_quiet(f"{tag} reader {store}")
        res = rundir / f"reader-{store}.json"
        proc = spawn(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                "reader",
                "--broker",
                bootstrap,
                "--store",
                store,
                "--n",
                str(args.attempts),
                "--datadir",
                str(rundir / f"reader-{store}"),
                "--timeout",
                "120",
                "--result",
                str(res),
                "--spawned",
                repr(time.time()),
            ],
            rundir / f"reader-{store}.log",
        )
        try:
            proc.wait(150)
        except subprocess.TimeoutExpired:
            pass
        stopped = stop(proc, grace=5.0)
        r = json.loads(res.read_text()) if res.exists() else {"error": "no result"}
        r.update(stopped)
        r["load_before"] = load
        out[f"reader_{store}"] = r
        print(
            f"  {tag}: reader {store}: {r.get('records_read')} read in "
            f"{r.get('start_to_all_read_s')}s ({r.get('spawn_to_all_read_s')}s from spawn)",
            flush=True,
        )
    return out


def orchestrate(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.control_plane import attempt_records

    webhook_ids = [f"wh_{n:06d}" for n in range(args.webhooks)]
    records = attempt_records(webhook_ids, args.attempts, days=5.0)
    workdir = Path(tempfile.mkdtemp(prefix="proto-attempts-", dir=args.workdir))
    print(
        f"workdir {workdir}; {len(records)} records, mean value "
        f"{sum(len(v) for _, v, _ in records) / len(records):.0f} bytes",
        flush=True,
    )
    combos = [(s, p) for s in args.stores.split(",") for p in args.patches.split(",")]
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for run in range(args.runs):
        shift = run % len(combos)
        for i, (store, patches) in enumerate(combos[shift:] + combos[:shift]):
            if time.monotonic() - t0 > args.budget:
                print("time budget spent; stopping", flush=True)
                break
            try:
                results.append(
                    one_run(
                        args,
                        run,
                        store,
                        patches,
                        records,
                        workdir,
                        with_readers=(i == 0 and not args.no_readers),
                    )
                )
            except Exception as exc:  # keep going with the others
                results.append({"run": run, "store": store, "patches": patches, "error": repr(exc)})
                print(f"  run {run} {store} {patches}: {exc!r}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"results in {args.out}", flush=True)
    return 0


def summarize(paths: list[str]) -> None:
    """One line per run of result files written by this script."""
    print(
        "run store   patch feed_s  stop    rec_spawn rec_exec keys   miss  crash_if_check "
        "source_reprocessed  load(feed,recover)->end  changelog_unread_by_end"
    )
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            if "recover" not in r:
                print(r)
                continue
            f, rec, cl = r["feed"], r["recover"], r["changelog"]
            ao, hw = rec.get("active_offsets") or {}, rec.get("active_highwaters") or {}
            crash = any(p in hw and ao[p] > hw[p] for p in ao) if r["store"] == "rocksdb" else "-"
            print(
                f"{r['run']:>3} {r['store']:7} {r['patches']:4} "
                f"{f.get('spawn_to_all_set_s')!s:>7} {f.get('stopped')!s:7} "
                f"{rec.get('spawn_to_recovered_s')!s:>8} {rec.get('exec_to_recovered_s')!s:>8} "
                f"{rec.get('recovered_keys')!s:>6} {rec.get('missing')!s:>4}  {crash!s:>6} "
                f"{rec.get('events_3s_after')!s:>8}  ({r.get('load_before_feed')},"
                f"{r.get('load_before_recover')})->{rec.get('load_end')}  "
                f"{cl['unread_by_reported_end']} {rec.get('error') or ''}"
            )
            for m in rec.get("missing_detail") or []:
                print(
                    f"      missing {m['key']} partition {m['partition']} changelog offset "
                    f"{m['changelog_offset']} (last {m['changelog_last_offset']}, reported end "
                    f"{m['changelog_reported_end']})"
                )
            for name, v in (r.get("readers") or {}).items():
                print(f"      {name}: {v}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=["faust", "reader"])
    parser.add_argument("--mode", choices=["feed", "recover"])
    parser.add_argument("--app-id")
    parser.add_argument("--broker")
    parser.add_argument("--store", default="memory")
    parser.add_argument("--patches", default="off")
    parser.add_argument("--datadir")
    parser.add_argument("--n", default="100000")
    parser.add_argument("--result")
    parser.add_argument("--spawned")
    parser.add_argument("--timeout", default="240")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--webhooks", type=int, default=10_000)
    parser.add_argument("--stores", default="rocksdb,memory")
    parser.add_argument("--patches-list", dest="patches_list", default="on,off")
    parser.add_argument("--feed-timeout", type=float, default=240.0)
    parser.add_argument("--recover-timeout", type=float, default=240.0)
    parser.add_argument(
        "--budget", type=float, default=3000.0, help="seconds after which no further run starts"
    )
    parser.add_argument(
        "--consistency-check",
        default="off",
        help="Faust's recovery_consistency_check (on: a persisted offset past "
        "the reported end stops the worker)",
    )
    parser.add_argument("--no-readers", action="store_true")
    parser.add_argument(
        "--summarize", nargs="+", metavar="RESULTS", help="print the runs of result files and exit"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="do not wait for a quiet machine (trial runs only)"
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default="proto_attempts_table.json")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return 0
    if args.child == "faust":
        child(args)
        return 0
    if args.child == "reader":
        reader_child(args)
        return 0
    args.patches = args.patches_list
    global NO_WAIT
    NO_WAIT = args.no_wait
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
