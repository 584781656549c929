"""bench/control_plane.py's synthetic attempts, query mix, token file and disk count."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jsonschema

from bench.control_plane import attempt_records, dir_bytes, query_paths, write_tokens
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


def test_the_query_mix_names_random_webhooks_with_each_kind_of_request() -> None:
    webhooks = [f"wh-{n}" for n in range(1000)]
    paths = query_paths(webhooks, 1000)
    assert len(paths) == 1000
    kinds = Counter(kind for kind, _ in paths)
    assert set(kinds) == {"page", "outcome", "status_class", "since", "cursor"}
    assert 500 < kinds["page"] < 700
    for _, path in paths:
        parts = urlsplit(path)
        assert parts.path.split("/")[3] in webhooks
        assert parts.path.endswith("/attempts")
        assert parse_qs(parts.query, strict_parsing=True)
    # 1,000 draws from 1,000 webhooks reach about 632 of them.
    assert len({urlsplit(path).path for _, path in paths}) > 580


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
