"""bench/harness.py: which runs rewrite BENCHMARKS.md, and the exit status of a run."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import harness

MEASURED = {"name": "fanout_1", "deliveries_per_s": 9000.0, "ceiling_per_s": 12000.0}
FAILED = {"name": "attempts_query", "deliveries_per_s": None, "error": "worker exited"}


def _args(*argv: str) -> argparse.Namespace:
    return harness._parser().parse_args(list(argv))


def test_only_a_full_run_with_every_result_measured_rewrites_the_file() -> None:
    assert harness._writes_benchmarks(_args(), 0, [MEASURED])
    assert not harness._writes_benchmarks(_args(), 0, [MEASURED, FAILED])
    assert not harness._writes_benchmarks(_args(), 130, [MEASURED])
    assert not harness._writes_benchmarks(_args(), 0, [])
    for argv in (
        ["--quick"],
        ["--no-write"],
        ["--only", "fanout_1"],
        ["--worker-patch", "no_freshness"],
        ["--paced-rate", "4000"],
    ):
        assert not harness._writes_benchmarks(_args(*argv), 0, [MEASURED]), argv


class _Broker:
    bootstrap_servers = "127.0.0.1:1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.mark.parametrize(
    ("argv", "results", "status", "rewritten"),
    [
        ([], [MEASURED], 0, True),
        ([], [MEASURED, FAILED], 1, False),
        (["--quick"], [MEASURED], 0, False),
        (["--quick"], [MEASURED, FAILED], 1, False),
    ],
)
def test_a_run_rewrites_the_file_and_exits_as_its_results_say(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    results: list[dict[str, Any]],
    status: int,
    rewritten: bool,
) -> None:
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("as it was\n")

    async def run(*args: Any) -> None:
        for result in results:
            harness._emit(dict(result), args[-1])

    monkeypatch.setattr(harness, "REPO", tmp_path)
    monkeypatch.setattr(harness, "OUT", tmp_path / "out")
    monkeypatch.setattr(harness, "EmbeddedBroker", _Broker)
    monkeypatch.setattr(harness, "_run", run)
    monkeypatch.setattr(harness, "_install_sigterm", lambda: None)
    assert harness.main(argv) == status
    assert (benchmarks.read_text() != "as it was\n") == rewritten
    assert len(list((tmp_path / "out").glob("results-*.json"))) == 1


async def test_requests_the_receiver_refused_make_the_result_an_error() -> None:
    class Receiver:
        refused = Counter({"bad_signature": 2})

        def unverified(self) -> Counter[str]:
            return self.refused

    receiver = Receiver()
    result: dict[str, Any] = dict(MEASURED)
    before = await harness._refusals(result, receiver, Counter())  # type: ignore[arg-type]
    assert result["error"] == "the receiver refused 2 requests: {'bad_signature': 2}"
    receiver.refused = before + Counter({"not_json": 1})
    later: dict[str, Any] = dict(FAILED)
    await harness._refusals(later, receiver, before)  # type: ignore[arg-type]
    assert later["error"] == "worker exited; the receiver refused 1 requests: {'not_json': 1}"
    clean: dict[str, Any] = dict(MEASURED)
    await harness._refusals(clean, receiver, receiver.refused)  # type: ignore[arg-type]
    assert "error" not in clean
