"""bench/control_plane.py: synthetic attempts, query mix, tokens, disk, the fan-out 1 variants."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

from bench.control_plane import (
    LOG_VARIANTS,
    _against_empty,
    attempt_records,
    dir_bytes,
    log_summary,
    query_paths,
    sample_delivery_ids,
    variant_order,
    write_tokens,
)
from bridge.api.auth import TokenSet
from bridge.attempts.record import Attempt

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "topics" / "schemas" / "attempt.json").read_text()
)


def test_synthetic_attempts_are_valid_records_of_their_key_spread_over_the_days() -> None:
    webhooks = [f"wh-{n}" for n in range(50)]
    records = attempt_records(webhooks, 2000, days=5.0)
    assert len(records) == 2000
    validator = jsonschema.Draft202012Validator(SCHEMA)
    moments = []
    for key, value, stamp in records:
        record = json.loads(value)
        validator.validate(record)
        attempt = Attempt.parse(value)
        assert key == attempt.webhook_id.encode()
        assert stamp == int(attempt.at_seconds * 1000)
        assert ("next_at" in record) == (record["next"] == "retry")
        assert 200 < len(value) < 450
        moments.append(attempt.at_seconds)
    assert moments == sorted(moments)
    now = datetime.now(UTC)
    assert now - timedelta(days=5, minutes=1) < datetime.fromtimestamp(moments[0], UTC)
    assert datetime.fromtimestamp(moments[-1], UTC) < now
    assert moments[-1] - moments[0] > 4.9 * 86400
    outcomes = Counter(json.loads(v)["outcome"] for _, v, _ in records)
    assert set(outcomes) == {"success", "failure", "skipped"}
    assert len({k for k, _, _ in records}) == 50


def test_the_query_mix_names_random_webhooks_and_deliveries_with_each_kind_of_request() -> None:
    webhooks = [f"wh-{n}" for n in range(1000)]
    records = attempt_records(webhooks, 3000, days=1.0)
    deliveries = sample_delivery_ids(records, 500)
    assert len(deliveries) == len(set(deliveries)) == 500
    assert set(deliveries) <= {json.loads(value)["delivery_id"] for _, value, _ in records}
    paths = query_paths(webhooks, 1000, deliveries)
    assert len(paths) == 1000
    kinds = Counter(kind for kind, _ in paths)
    assert set(kinds) == {"page", "outcome", "status_class", "since", "cursor", "delivery"}
    assert 400 < kinds["page"] < 600
    assert 50 < kinds["delivery"] < 150
    for kind, path in paths:
        parts = urlsplit(path)
        if kind == "delivery":
            assert parts.path.split("/")[:3] == ["", "v1", "deliveries"] and not parts.query
            assert parts.path.split("/")[3] in deliveries
            continue
        assert parts.path.split("/")[3] in webhooks
        assert parts.path.endswith("/attempts")
        assert parse_qs(parts.query, strict_parsing=True)
    # 900 draws from 1,000 webhooks reach about 593 of them.
    webhook_paths = {urlsplit(path).path for kind, path in paths if kind != "delivery"}
    assert len(webhook_paths) > 530


def test_the_token_file_lets_the_token_read(tmp_path: Path) -> None:
    path, token = write_tokens(tmp_path)
    principal = TokenSet.from_file(path).authenticate(f"Bearer {token}")
    principal.require("read")
    assert token not in path.read_text()


def test_disk_use_counts_every_file_below(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_bytes(b"x" * 10000)
    (tmp_path / "two").write_bytes(b"y" * 10)
    allocated, apparent = dir_bytes(tmp_path)
    assert apparent == 10010
    assert allocated >= 10000
    assert dir_bytes(tmp_path / "missing") == (0, 0)


def test_three_rounds_run_each_variant_once_in_each_place() -> None:
    orders = [variant_order(n) for n in range(3)]
    assert orders[0] == ["off", "all", "split"]
    for order in orders:
        assert sorted(order) == sorted(LOG_VARIANTS)
    for place in range(3):
        assert {order[place] for order in orders} == set(LOG_VARIANTS)
    assert variant_order(3) == orders[0]


def _run(ratio: float, cpu: float) -> dict[str, Any]:
    return {"ratio": ratio, "worker_cpu_ms_per_delivery": cpu, "deliveries_per_s": 1000 * ratio}


def test_the_costs_are_medians_of_the_differences_within_each_round() -> None:
    rounds = [
        {
            "off": _run(0.70, 0.14),
            "all": _run(0.50, 0.19),
            "split": _run(0.68, 0.13)
            | {"api_cpu_ms_per_record": 0.03, "api_cpu_ms_per_delivery": 0.04},
        },
        {
            "off": _run(0.60, 0.15),
            "all": _run(0.55, 0.20),
            "split": _run(0.64, 0.14)
            | {"api_cpu_ms_per_record": 0.05, "api_cpu_ms_per_delivery": 0.06},
        },
        {
            "off": _run(0.80, 0.12),
            "all": _run(0.40, 0.22),
            "split": _run(0.70, 0.15)
            | {"api_cpu_ms_per_record": 0.04, "api_cpu_ms_per_delivery": 0.05},
        },
    ]
    summary = log_summary(rounds)
    assert summary["ratio_without_log"] == [0.70, 0.60, 0.80]
    assert summary["ratio_median_without_log"] == 0.70
    assert summary["ratio_median_with_log"] == 0.50
    assert summary["ratio_median_split"] == 0.68
    # all - off: -0.20, -0.05, -0.40; split - off: -0.02, +0.04, -0.10.
    assert summary["ratio_cost_median"] == -0.2
    assert summary["ratio_cost_median_split"] == -0.02
    assert summary["paired_log_lower_ratio"] == 3
    assert summary["paired_split_lower_ratio"] == 2
    assert summary["cpu_ms_cost_median"] == 0.05
    assert summary["cpu_ms_cost_median_split"] == -0.01
    assert summary["paired_split_more_cpu"] == 1
    assert summary["api_cpu_ms_per_attempt_median"] == 0.04
    assert summary["split_both_cpu_ms_per_delivery"] == [0.17, 0.2, 0.2]
    assert summary["split_both_cpu_ms_per_delivery_median"] == 0.2
    assert [list(r) for r in summary["rounds"]] == [["off", "all", "split"]] * 3
    assert summary["rounds"][2]["split"] == {
        "ratio": 0.70,
        "deliveries_per_s": 700.0,
        "worker_cpu_ms_per_delivery": 0.15,
        "api_cpu_ms_per_record": 0.04,
        "api_cpu_ms_per_delivery": 0.05,
    }


def test_a_round_without_a_figure_is_left_out_of_its_medians() -> None:
    rounds = [
        {"off": _run(0.7, 0.14), "all": _run(0.5, 0.19), "split": _run(0.6, 0.15)},
        {"off": _run(0.6, 0.15), "all": {"ratio": None}, "split": {}},
    ]
    summary = log_summary(rounds)
    assert summary["ratio_with_log"] == [0.5]
    assert summary["ratio_cost_median"] == -0.2
    assert summary["ratio_median_split"] == 0.6
    assert summary["api_cpu_ms_per_attempt"] == []
    assert summary["api_cpu_ms_per_attempt_median"] is None
    assert summary["split_both_cpu_ms_per_delivery_median"] is None


def test_ratios_against_the_ceiling_measured_beside_each_run_have_their_own_medians() -> None:
    def run(adjacent: float | None) -> dict[str, Any]:
        return {**_run(0.6, 0.15), "ratio_adjacent": adjacent, "adjacent_ceiling_per_s": 1000}

    rounds = [
        {"off": run(0.70), "all": run(0.66), "split": run(0.71)},
        {"off": run(0.80), "all": run(0.70), "split": run(0.78)},
        {"off": run(0.60), "all": run(None), "split": run(0.62)},
    ]
    summary = log_summary(rounds)
    assert summary["ratio_adjacent_without_log"] == [0.70, 0.80, 0.60]
    assert summary["ratio_adjacent_median_split"] == 0.71
    assert summary["ratio_adjacent_median_with_log"] == 0.68
    # paired within rounds, the round without a figure left out
    assert summary["ratio_adjacent_cost_median"] == -0.07
    assert summary["ratio_adjacent_cost_median_split"] == 0.01
    assert summary["rounds"][0]["off"]["ratio_adjacent"] == 0.70


def test_a_stores_worker_is_counted_against_the_same_worker_over_no_attempts() -> None:
    measured = {
        "records_read": 20000,
        "log_attempts": 10000,
        "worker_rss_mib": 150.0,
        "worker_cpu_s_to_all_read": 3.0,
    }
    empty = {"rss_kib": 100 * 1024, "ready_s": 2.0, "cpu_s": 1.0}
    figures = _against_empty(measured, empty)
    assert figures == {
        "empty_log_rss_mib": 100.0,
        "empty_log_ready_s": 2.0,
        "empty_log_cpu_s": 1.0,
        # 50 MiB over the 10,000 attempts kept; 2 s of CPU over the 20,000 records read.
        "rss_per_attempt_bytes": 5243,
        "ingest_cpu_us_per_record": 100.0,
    }
