"""A webhook's delivery log, stats and one delivery, read back from the attempts topic by the
management commands, and one delivery sent again, on the real broker with a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.admin.publish import publish_events
from bridge.api.auth import hash_token
from bridge.config import Settings
from bridge.contract.events import build_event, parse_time
from bridge.contract.payload import delivery_id
from tests.support.processes import settings_env
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll

pytestmark = pytest.mark.integration


def cli(settings: Settings, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


TOKEN = "wbt_cli-through-the-api-0123456789abcdef0123456789"


@pytest.mark.parametrize("source", ["kafka", "api"])
async def test_the_log_shows_two_failures_then_the_success_and_the_stats_count_them(
    settings: Settings, receiver: Receiver, workers, tmp_path: Path, source: str
) -> None:
    """The commands read the attempts topic themselves, or (``--api-url``) ask a worker's /v1,
    which holds the log in memory: the same answers either way."""
    receiver.scripts["/wh"] = [500, 503]
    await subscribe(settings, receiver, {"wh": "s1"}, ("post.created",))
    worker_settings = settings
    if source == "api":
        tokens = tmp_path / "tokens.json"
        entry = {"name": "cli", "sha256": hash_token(TOKEN), "scopes": ["read", "write"]}
        tokens.write_text(json.dumps({"tokens": [entry]}))
        worker_settings = settings.replace(delivery_log=True, api_tokens=str(tokens))
        settings = settings.replace(
            api_url=f"http://127.0.0.1:{settings.web_port}", api_token=TOKEN
        )
    worker = workers(worker_settings)
    await worker.wait_ready()
    event = build_event("post.created", {"id": "p1", "title": "t"}, site_id="s1", user_id="u1")
    await publish_events(settings, [event])
    target = delivery_id(event.id, "wh")
    await receiver.wait_for(lambda got: [r.status for r in got] == [500, 503, 200])

    logged = await poll(
        lambda: lines(cli(settings, "webhooks", "attempts", "wh", "--json")),
        until=lambda got: len(got) == 3,
        timeout=30,
        interval=0.5,
    )
    assert [(a["attempt"], a["status"], a["outcome"]) for a in logged] == [
        (3, 200, "success"),
        (2, 503, "failure"),
        (1, 500, "failure"),
    ]
    assert {a["delivery_id"] for a in logged} == {target}
    assert [a["next"] for a in logged] == [None, "retry", "retry"]

    # A retry's due time: after its attempt, no later than the next attempt started.
    def moment(text: str) -> float:
        return parse_time(text).timestamp()

    for retried, following in ((logged[2], logged[1]), (logged[1], logged[0])):
        due = moment(retried["next_at"])
        assert moment(retried["at"]) < due <= moment(following["at"]) + 0.001
    failures = lines(cli(settings, "webhooks", "attempts", "wh", "--json", "--outcome", "failure"))
    assert [a["status"] for a in failures] == [503, 500]
    assert (
        lines(cli(settings, "webhooks", "attempts", "wh", "--json", "--status-class", "2xx"))[0][
            "status"
        ]
        == 200
    )

    shown = lines(cli(settings, "deliveries", "show", target, "--json"))
    assert [a["attempt"] for a in shown] == [1, 2, 3]
    assert shown == lines(cli(settings, "deliveries", "show", target, "--webhook", "wh", "--json"))

    [stats] = lines(cli(settings, "webhooks", "stats", "wh", "--json"))
    for window in ("1h", "24h", "7d"):
        counted = stats["windows"][window]
        assert (counted["attempts"], counted["successes"], counted["failures"]) == (3, 1, 2)
        assert counted["failure_ratio"] == pytest.approx(2 / 3)
        # Estimated, but never outside the latencies the log shows.
        durations = [a["duration_seconds"] for a in logged]
        for quantile in (counted["latency_p50_seconds"], counted["latency_p99_seconds"]):
            assert min(durations) - 1e-9 <= quantile <= max(durations) + 1e-9
    assert stats["last_success_at"] == logged[0]["at"]
    assert stats["last_failure_at"] == logged[1]["at"]
    assert "last success:" in cli(settings, "webhooks", "stats", "wh")

    assert f"redelivering {target}" in cli(settings, "deliveries", "redeliver", target)
    await receiver.wait_for(lambda got: len(got) == 4)
    assert receiver.received[-1].delivery_id == target and receiver.received[-1].status == 200
    assert receiver.verified(receiver.received[-1])

    # The redelivery's attempt is the operator's, named by its recovery, and filtered by both.
    [manual] = await poll(
        lambda: lines(cli(settings, "webhooks", "attempts", "wh", "--json", "--trigger", "manual")),
        until=lambda got: len(got) == 1,
        timeout=30,
        interval=0.5,
    )
    assert (manual["attempt"], manual["status"], manual["trigger"]) == (1, 200, "manual")
    assert manual["recovery_id"]
    scheduled = lines(
        cli(settings, "webhooks", "attempts", "wh", "--json", "--trigger", "scheduled")
    )
    assert scheduled == logged
    recovered = "--recovery-id", manual["recovery_id"]
    assert lines(cli(settings, "webhooks", "attempts", "wh", "--json", *recovered)) == [manual]
    text = cli(settings, "webhooks", "attempts", "wh", *recovered)
    assert f"manual attempt 1 ({manual['recovery_id']})" in text
