"""Recoveries with a journal: recorded at start, while running and at the end; released (not
cancelled) when the process stops; resumed with this process as the runner."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.admin.recovery import Operation, RecoveryRequest
from bridge.api.problems import Problem
from bridge.api.recoveries import RETRY_AFTER, Recoveries, per_owner
from bridge.contract.events import format_timestamp
from bridge.subscriptions.serial import KeyedLocks, NotWritable
from bridge.subscriptions.webhook import webhook_from_record
from bridge.worker.recovery_view import ended
from tests.support.builders import webhook_record
from tests.support.journals import Journal
from tests.support.waiting import PROMPT, eventually

SINCE = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
WEBHOOK = webhook_from_record(webhook_record(id="wh"))
URL = "http://10.0.0.1:6066"


class Held:
    """A runner that enqueues one delivery, then waits until stopped (or ``finish`` is set)."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()

    async def __call__(self, operation: Operation) -> Operation:
        operation.enqueued += 1
        operation.positions = {"t:0": 4}
        await self.finish.wait()
        operation.state = "done"
        return operation


_windows = itertools.count()


def request() -> RecoveryRequest:
    """A recovery of ``WEBHOOK``, each over an hour of its own (two over one moment would not
    both start)."""
    since = SINCE + timedelta(hours=next(_windows))
    return RecoveryRequest(WEBHOOK, since, since + timedelta(hours=1))


async def test_an_operation_is_recorded_at_start_while_running_and_at_the_end() -> None:
    journal, runner = Journal(), Held()
    recoveries = Recoveries(runner, journal=journal, url=URL, heartbeat=0.01)
    operation = await recoveries.start(request())
    # Recorded before start() returned: any worker reads it at once.
    assert journal.records[0]["state"] == "running" and journal.records[0]["runner"] == URL
    await eventually(lambda: any(r["enqueued"] == 1 for r in journal.records), timeout=5)
    runner.finish.set()
    await eventually(lambda: journal.records[-1]["state"] == "done", timeout=5)
    assert await recoveries.record_of(operation.id) == journal.records[-1]
    assert journal.records[-1]["finished_at"] is not None
    # Ended: read from the journal, as every process reads it, so once it is forgotten there
    # (its retention passed) no process shows it.
    await eventually(lambda: not recoveries.running_here(operation.id), timeout=5)
    assert recoveries.get(operation.id) is None
    await journal.forget(operation.id)
    assert await recoveries.record_of(operation.id) is None


class EndsSlowly:
    """A runner that marks its operation done, then stops its clients (as ``recover`` does),
    which takes several heartbeats."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()

    async def __call__(self, operation: Operation) -> Operation:
        operation.enqueued += 1
        operation.state = "done"
        self.stopping.set()
        await self.stopped.wait()
        return operation


async def test_an_operation_ending_while_its_clients_stop_is_recorded_ended_once() -> None:
    """Found by the control-plane chaos test (a worker woken from a pause, its heartbeat
    overdue): a heartbeat between the runner marking the operation done and returning recorded
    the end too, so the journal held two ends of one operation, which reads as two runners."""
    journal, runner = Journal(), EndsSlowly()
    recoveries = Recoveries(runner, journal=journal, url=URL, heartbeat=0.01)
    operation = await recoveries.start(request())
    await asyncio.wait_for(runner.stopping.wait(), PROMPT)
    await asyncio.sleep(0.1)  # ten heartbeats while the clients stop
    runner.stopped.set()

    def ends() -> list[str]:
        return [r["state"] for r in journal.records if r["state"] != "running"]

    await eventually(lambda: bool(ends()), timeout=5)  # the end, recorded last
    assert ends() == ["done"] and journal.records[-1]["id"] == operation.id


class ReadSlowly(Journal):
    """A journal whose reads wait until ``answer`` is set (``reading`` once one began)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.answer = asyncio.Event()

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        self.reading.set()
        await self.answer.wait()
        return await super().read(operation_id)


async def test_a_redelivery_ending_while_a_heartbeat_reads_the_journal_is_recorded_once() -> None:
    """It ends (``failed``: nothing enqueued) while a heartbeat looks whether another worker
    ended it: the beat records nothing after that look, and the end is recorded once, by the
    run (until 2026-12-07 the beat recorded it too)."""
    journal = ReadSlowly()

    async def runner(operation: Operation) -> Operation:
        await journal.reading.wait()  # a heartbeat is reading the journal
        operation.finish()
        journal.answer.set()
        await asyncio.sleep(0.05)  # its clients stopping
        return operation

    recoveries = Recoveries(runner, journal=journal, url=URL, heartbeat=0.01)
    operation = await recoveries.start(dataclasses.replace(request(), delivery_id="d1"))
    await asyncio.wait_for(recoveries._tasks[operation.id], 5)  # run, and its end recorded
    ends = [(r["state"], r["error"]) for r in journal.records if r["state"] != "running"]
    assert ends == [("failed", "event_not_retained")]


async def test_without_a_journal_an_ended_operation_is_kept_in_the_process() -> None:
    runner = Held()
    recoveries = Recoveries(runner)
    operation = await recoveries.start(request())
    runner.finish.set()
    await eventually(lambda: not recoveries.running_here(operation.id), timeout=5)
    kept = recoveries.get(operation.id)
    assert kept is not None and kept.state == "done"


async def test_a_stopping_process_releases_its_recoveries_for_another_to_resume() -> None:
    journal = Journal()
    recoveries = Recoveries(Held(), journal=journal, url=URL, heartbeat=0.01)
    operation = await recoveries.start(request())
    await eventually(lambda: any(r["positions"] for r in journal.records), timeout=5)
    await recoveries.close()
    last = journal.records[-1]
    assert (last["state"], last["runner"], last["finished_at"]) == ("running", None, None)
    assert last["positions"] == {"t:0": 4} and last["enqueued"] == 1

    # Another process resumes it from the record: same id, counts carried on.
    elsewhere, runner = Journal(), Held()
    other = Recoveries(runner, journal=elsewhere, url="http://10.0.0.2:6066")
    resumed = await other.resume(Operation.from_record(last, WEBHOOK))
    assert resumed.id == operation.id and other.running_here(operation.id)
    assert elsewhere.records[0]["runner"] == "http://10.0.0.2:6066"
    assert elsewhere.records[0]["resumed"] == 1
    runner.finish.set()
    await eventually(lambda: elsewhere.records[-1]["state"] == "done", timeout=5)
    assert elsewhere.records[-1]["enqueued"] == 2


async def test_a_cancel_is_recorded_and_never_resumed() -> None:
    journal = Journal()
    recoveries = Recoveries(Held(), journal=journal, url=URL, heartbeat=0.01)
    operation = await recoveries.start(request())
    await recoveries.cancel(operation.id)
    await eventually(lambda: journal.records[-1]["state"] == "cancelled", timeout=5)


async def test_a_recovery_no_one_runs_is_recorded_cancelled() -> None:
    journal = Journal()
    recoveries = Recoveries(Held(), journal=journal, url=URL)
    orphan = Operation(request(), runner=None)
    cancelled = await recoveries.cancel_recorded(orphan)
    assert cancelled.state == "cancelled" and journal.records[-1]["state"] == "cancelled"


async def test_a_recovery_another_process_runs_now_is_not_recorded_cancelled() -> None:
    """Between a caller's look (no runner known) and the cancel, another process began
    running it (a start seen late, a take-over): not recorded cancelled, which that process
    would overwrite with its next record while the caller was told cancelled (until
    2026-12-06), but ``503``, so that the client tries again and is sent to the runner.
    Released (no runner) or stale (the runner gone), it is recorded cancelled."""
    from bridge.worker.recovery_view import live_runner

    journal = Journal()
    other = Recoveries(Held(), journal=journal, url="http://10.0.0.2:6066", heartbeat=60)
    running = await other.start(request())
    here = Recoveries(
        Held(),
        journal=journal,
        url=URL,
        live_runner=lambda record, now: live_runner(record, now, 15.0),
    )
    seen = Operation.from_record(journal.records[-1], WEBHOOK)
    with pytest.raises(Problem) as refused:
        await here.cancel_recorded(seen)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    assert [r["state"] for r in journal.records] == ["running"]
    await other.close()  # released: written running, without a runner
    assert journal.records[-1]["runner"] is None
    cancelled = await here.cancel_recorded(Operation.from_record(journal.records[-1], WEBHOOK))
    assert cancelled.state == "cancelled" and journal.records[-1]["state"] == "cancelled"
    assert running.id == cancelled.id


async def test_a_window_a_stopped_worker_left_running_is_not_recovered_twice() -> None:
    """A recovery the journal records running, its worker gone and no worker running it yet,
    holds its window: another over a moment of it is ``409`` (until 2026-12-06 it was
    accepted, and both ran once the first was taken over). Not one that ended, one outside
    the window, or one begun before the webhook (of the same id) was created."""
    journal = Journal()
    created = SINCE + timedelta(days=30)
    webhook = webhook_from_record(webhook_record(id="wh_c", created_at=format_timestamp(created)))
    window = RecoveryRequest(webhook, created, created + timedelta(hours=1))
    left = Operation(window, runner="http://10.0.0.9:6066", started_at=created.timestamp() + 60)
    await journal.write(left.to_record(updated_at=created.timestamp() + 61))
    recoveries = Recoveries(Held(), journal=journal, url=URL)
    with pytest.raises(Problem) as refused:
        await recoveries.start(
            RecoveryRequest(webhook, created + timedelta(minutes=30), created + timedelta(hours=2))
        )
    assert refused.value.status == 409 and left.id in refused.value.detail
    outside = await recoveries.start(
        RecoveryRequest(webhook, created + timedelta(hours=1), created + timedelta(hours=2))
    )
    assert outside.state == "running"
    # Ended, or begun before this webhook was created (a deleted one's of the same id): none.
    left.state = "cancelled"
    await journal.write(left.to_record(updated_at=created.timestamp() + 62))
    older = Operation(window, runner="http://10.0.0.9:6066", started_at=created.timestamp() - 60)
    await journal.write(older.to_record(updated_at=created.timestamp() - 59))
    again = await recoveries.start(window)
    assert again.state == "running"
    await recoveries.close()


async def test_where_nobody_takes_recoveries_over_a_stop_cancels_and_only_live_ones_hold() -> None:
    """Workers without ``delivery_log`` record their recoveries but resume none another
    stopped: a stop cancels (until 2026-12-06 it released them, running for ever), and a
    recovery another process left running holds its window only while that process runs it
    (a stopped one's never ends: it held every later window of its webhook, 409 for ever)."""
    from bridge.worker.recovery_view import live_runner

    journal = Journal()

    def make(url: str) -> Recoveries:
        return Recoveries(
            Held(),
            journal=journal,
            url=url,
            live_runner=lambda record, now: live_runner(record, now, 15.0),
            taken_over=False,
        )

    first = make("http://10.0.0.2:6066")
    window = request()
    stopped = await first.start(window)
    await first.close()
    assert journal.records[-1]["state"] == "cancelled" and stopped.state == "cancelled"
    # A runner that died (no record for a minute), its record still running: no hold.
    dead = Operation(window, runner="http://10.0.0.3:6066", started_at=SINCE.timestamp())
    await journal.write(dead.to_record(updated_at=time.time() - 60))
    second = make(URL)
    again = await second.start(window)
    assert again.state == "running"
    await second.close()
    assert journal.records[-1]["state"] == "cancelled"
    # A live one elsewhere holds it.
    live = Operation(window, runner="http://10.0.0.4:6066", started_at=SINCE.timestamp())
    await journal.write(live.to_record(updated_at=time.time()))
    third = make("http://10.0.0.5:6066")
    with pytest.raises(Problem) as refused:
        await third.start(window)
    assert refused.value.status == 409 and live.id in refused.value.detail


class EndsAreFinal(Journal):
    """Reads as the workers' view of the topic does: an end is final, a running record after
    it skipped."""

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        newest = None
        for record in self.records:
            if record["id"] != operation_id:
                continue
            if not (ended(newest) and record["state"] == "running"):
                newest = record
        return newest


async def test_a_runner_stops_at_its_next_heartbeat_once_another_worker_ended_it() -> None:
    """Another worker recorded it cancelled (no live runner was known: this one was taking it
    over): this runner stops at its next heartbeat, its record cancelled; until 2026-12-06
    its heartbeats recorded it running again and it ran on."""
    journal = EndsAreFinal()
    recoveries = Recoveries(Held(), journal=journal, url=URL, heartbeat=0.01)
    operation = await recoveries.start(request())
    cancelled = {**journal.records[-1], "state": "cancelled", "runner": None}
    await journal.write(cancelled)
    await eventually(lambda: not recoveries.running_here(operation.id), timeout=5)
    assert operation.state == "cancelled"
    newest = await journal.read(operation.id)
    assert newest is not None and newest["state"] == "cancelled"


async def test_without_a_journal_a_stop_cancels() -> None:
    recoveries = Recoveries(Held())
    operation = await recoveries.start(request())
    await asyncio.sleep(0)
    await recoveries.close()
    assert operation.state == "cancelled"


async def test_a_cancel_and_a_release_are_each_recorded_once() -> None:
    journal = Journal()
    recoveries = Recoveries(Held(), journal=journal, url=URL, heartbeat=3600)
    cancelled = await recoveries.start(request())
    released = await recoveries.start(request())
    await eventually(lambda: released.enqueued == 1 and cancelled.enqueued == 1, timeout=5)
    await recoveries.cancel(cancelled.id)
    await recoveries.close()

    def states(operation: Operation) -> list[tuple[str, str | None]]:
        return [(r["state"], r["runner"]) for r in journal.records if r["id"] == operation.id]

    assert states(cancelled) == [("running", URL), ("cancelled", URL)]
    assert states(released) == [("running", URL), ("running", None)]


async def test_a_task_stopped_before_its_first_step_is_still_recorded() -> None:
    journal = Journal()
    recoveries = Recoveries(Held(), journal=journal, url=URL, heartbeat=3600)
    operation = await recoveries.start(request())
    await recoveries.cancel(operation.id)  # before the task ever ran
    assert [r["state"] for r in journal.records] == ["running", "cancelled"]
    assert operation.state == "cancelled" and journal.records[-1]["finished_at"] is not None


async def test_no_more_recoveries_than_the_limit_run_at_once() -> None:
    """Each recovery reads the events topic: a token holder starting them by the hundred would
    have the worker read it a hundred times at once. The one over the limit gets a 429."""
    held = Held()
    recoveries = Recoveries(held, max_running=2)
    first = await recoveries.start(request())
    await recoveries.start(request())
    with pytest.raises(Problem) as refused:
        await recoveries.start(request())
    assert refused.value.status == 429 and refused.value.slug == "too_many_requests"
    assert refused.value.headers["Retry-After"] == str(RETRY_AFTER)
    assert recoveries.running == 2
    # A recovery taken over from a stopped process was accepted already: it runs.
    orphan = Operation(request(), runner=None)
    await recoveries.resume(orphan)
    assert recoveries.running == 3
    await recoveries.cancel(first.id)
    await recoveries.cancel(orphan.id)
    await recoveries.start(request())  # room again
    held.finish.set()
    await eventually(lambda: recoveries.running == 0, timeout=5)
    await recoveries.close()


async def test_one_sites_webhooks_take_at_most_their_places() -> None:
    """A site's own tools (a site-restricted token) starting recoveries of its webhooks get
    ``per_owner`` places of a worker, not every one: the next of that site is 429 naming the
    site while another site, and an account's account-wide webhooks, still start theirs."""
    held = Held()
    recoveries = Recoveries(held, max_running=8, max_per_owner=per_owner(8))
    assert per_owner(8) == 4 and per_owner(1) == 1

    def of(webhook_id: str, **scope: Any) -> RecoveryRequest:
        webhook = webhook_from_record(webhook_record(id=webhook_id, **scope))
        return RecoveryRequest(webhook, SINCE, SINCE + timedelta(hours=1))

    started = [await recoveries.start(of(f"s1_{n}", site_id="s1")) for n in range(4)]
    with pytest.raises(Problem) as refused:
        await recoveries.start(of("s1_again", site_id="s1"))
    assert refused.value.status == 429 and "site's webhooks" in refused.value.detail
    assert refused.value.headers["Retry-After"] == str(RETRY_AFTER)
    # A redelivery of the site's counts too (it reads the events topic as a recovery does).
    one = dataclasses.replace(of("s1_0", site_id="s1"), delivery_id="d_1")
    with pytest.raises(Problem):
        await recoveries.start(one)
    await recoveries.start(of("s2_0", site_id="s2"))
    for n in range(3):
        await recoveries.start(of(f"u1_{n}", site_id=None, user_id="u1"))
    assert recoveries.running == 8  # 4 of s1, 1 of s2, 3 of u1: the worker's limit
    with pytest.raises(Problem) as full:
        await recoveries.start(of("s3_0", site_id="s3"))
    # Not how many: the count is of every site's recoveries.
    assert full.value.detail == "this worker runs as many recoveries as it may at once"
    await recoveries.cancel(started[0].id)
    await recoveries.start(of("s1_again", site_id="s1"))  # room for the site again
    held.finish.set()
    await eventually(lambda: recoveries.running == 0, timeout=5)
    await recoveries.close()


async def test_a_webhooks_operations_are_read_from_the_journal_but_those_running_here() -> None:
    """Recorded ones as recorded (another process's included); one running here as it is now,
    ahead of its last record; records that are not operations of the webhook left out."""
    journal, runner = Journal(), Held()
    recoveries = Recoveries(runner, journal=journal, url=URL, heartbeat=60.0)
    here = await recoveries.start(request())
    here.enqueued = 7  # not recorded yet
    elsewhere = Operation(request(), state="done", runner="http://10.0.0.2:6066")
    await journal.write(elsewhere.to_record(updated_at=SINCE.timestamp()))
    other = webhook_from_record(webhook_record(id="other"))
    await journal.write(
        Operation(RecoveryRequest(other, SINCE, SINCE + timedelta(hours=1))).to_record(
            updated_at=0.0
        )
    )
    await journal.write({"id": "odd", "webhook_id": "wh", "state": "lost"})
    found = {o.id: o for o in await recoveries.of_webhook(WEBHOOK)}
    assert set(found) == {here.id, elsewhere.id}
    assert found[here.id] is here and found[here.id].enqueued == 7
    assert found[elsewhere.id].state == "done"
    runner.finish.set()
    # Ended: as its last record says, once written.
    await eventually(lambda: journal.records[-1]["state"] == "done", timeout=5)
    await eventually(lambda: not recoveries.running_here(here.id), timeout=5)
    found = {o.id: o for o in await recoveries.of_webhook(WEBHOOK)}
    assert found[here.id] is not here and found[here.id].state == "done"


class _GatedJournal(Journal):
    """A journal whose writes wait until ``go`` is set (the broker's acknowledgement)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.go.set()

    async def write(self, record: dict[str, Any]) -> None:
        await self.go.wait()
        await super().write(record)


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "no journal"])
async def test_nothing_runs_past_close(journaled: bool) -> None:
    """A stopping worker starts nothing more: a start or resume after close is 503; one that
    close overtook while it was being recorded is released (with a journal: the next owner
    resumes it) or cancelled, and never runs once close has returned."""
    journal = _GatedJournal() if journaled else None
    ran: list[str] = []

    async def runner(operation: Operation) -> Operation:
        ran.append(operation.id)
        await asyncio.Event().wait()
        return operation

    recoveries = Recoveries(runner, journal=journal, url=URL)
    if journal is not None:
        journal.go.clear()
    starting = asyncio.ensure_future(recoveries.start(request()))
    await asyncio.sleep(0)
    await recoveries.close()
    if journal is not None:
        journal.go.set()
    overtaken = await starting
    for _ in range(10):
        await asyncio.sleep(0)
    assert ran == [] and recoveries.running == 0
    if journal is not None:
        assert [(r["state"], r["runner"]) for r in journal.records] == [
            ("running", URL),
            ("running", None),
        ]
    else:
        assert overtaken.state == "cancelled"
    late: list[Callable[[], Awaitable[Operation]]] = [
        lambda: recoveries.start(request()),
        lambda: recoveries.resume(Operation(request())),
    ]
    for attempt in late:
        with pytest.raises(Problem) as refused:
            await attempt()
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    assert ran == []


class SlowJournal(Journal):
    """Records as the topic does, each write waiting until ``acknowledge`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.acknowledge = asyncio.Event()
        self.writing = asyncio.Event()

    async def write(self, record: dict[str, Any]) -> None:
        self.writing.set()
        await self.acknowledge.wait()
        await super().write(record)


async def test_an_operation_starts_only_through_the_worker_s_fence() -> None:
    """Started or resumed only while the fence lets it (the worker owns the webhook): refused,
    nothing is recorded or run; let through, the fence counts it until its first record is
    stored, so a worker giving its webhooks up waits for it."""
    owned = {"wh"}
    locks = KeyedLocks(may_write=lambda webhook_id: webhook_id in owned)
    journal = SlowJournal()
    recoveries = Recoveries(Held(), journal=journal, url=URL, writing=locks.writing)
    starting = asyncio.create_task(recoveries.start(request()))
    await asyncio.wait_for(journal.writing.wait(), PROMPT)
    assert not await locks.drained(0.01)  # its record is being written
    journal.acknowledge.set()
    operation = await asyncio.wait_for(starting, PROMPT)
    assert await locks.drained(0.0) and recoveries.running_here(operation.id)

    owned.clear()  # a rebalance began
    with pytest.raises(NotWritable):
        await recoveries.start(request())
    released = Operation.from_record({**journal.records[0], "runner": None}, WEBHOOK)
    await recoveries.cancel(operation.id)
    with pytest.raises(NotWritable):
        await recoveries.resume(released)
    assert recoveries.running == 0
    assert [r["state"] for r in journal.records] == ["running", "cancelled"]
    await recoveries.close()


async def test_concurrent_starts_take_no_more_than_the_places() -> None:
    """Starts arriving together while their first records are written (a site's tools sending
    a hundred requests at once) are counted from the moment they pass the check, not when
    their record is stored: exactly the places are taken, the site's half included, and the
    rest are 429. (Until 2026-12-05 every one of them passed: the count was of started tasks,
    and a start's task begins only after its record is acknowledged.)"""
    journal = _GatedJournal()
    held = Held()
    recoveries = Recoveries(held, journal=journal, url=URL, max_running=4, max_per_owner=2)

    def of(webhook_id: str, site_id: str) -> RecoveryRequest:
        webhook = webhook_from_record(webhook_record(id=webhook_id, site_id=site_id))
        return RecoveryRequest(webhook, SINCE, SINCE + timedelta(hours=1))

    journal.go.clear()
    starts = [
        asyncio.ensure_future(recoveries.start(of(f"{site}_{n}", site)))
        for site in ("s1", "s2", "s3")
        for n in range(10)
    ]
    for _ in range(10):
        await asyncio.sleep(0)
    journal.go.set()
    outcomes = await asyncio.gather(*starts, return_exceptions=True)
    started = [o for o in outcomes if isinstance(o, Operation)]
    refused = [o for o in outcomes if isinstance(o, Problem)]
    assert len(started) == 4 and len(refused) == 26, outcomes
    assert all(p.status == 429 for p in refused)
    sites = [o.request.webhook.site_id for o in started]
    assert max(sites.count(site) for site in ("s1", "s2", "s3")) == 2
    assert recoveries.running == 4
    held.finish.set()
    await eventually(lambda: recoveries.running == 0, timeout=5)
    await recoveries.close()


async def test_a_window_overlapping_a_running_recovery_of_the_webhook_is_refused() -> None:
    """Two recoveries of one webhook over one stretch of time would send its receiver every
    delivery of that stretch twice (and a site could run as many as its places at once): a
    recovery whose window overlaps one running of the same webhook is ``409`` naming it.
    Windows that only touch, another webhook's, redeliveries, and one after the first ended
    start."""
    held = Held()
    recoveries = Recoveries(held, journal=Journal(), url=URL, max_running=8)
    hour = timedelta(hours=1)

    def window(since: datetime, until: datetime, webhook: str = "wh") -> RecoveryRequest:
        return RecoveryRequest(webhook_from_record(webhook_record(id=webhook)), since, until)

    first = await recoveries.start(window(SINCE, SINCE + hour))
    for since, until in [
        (SINCE, SINCE + hour),
        (SINCE - hour, SINCE + timedelta(milliseconds=1)),
        (SINCE + hour - timedelta(milliseconds=1), SINCE + 2 * hour),
        (SINCE + timedelta(minutes=10), SINCE + timedelta(minutes=20)),
        (SINCE - hour, SINCE + 2 * hour),
    ]:
        with pytest.raises(Problem) as refused:
            await recoveries.start(window(since, until))
        assert refused.value.status == 409 and refused.value.slug == "conflict"
        assert first.id in refused.value.detail
    before = await recoveries.start(window(SINCE - hour, SINCE))
    after = await recoveries.start(window(SINCE + hour, SINCE + 2 * hour))
    await recoveries.start(window(SINCE, SINCE + hour, webhook="other"))
    await recoveries.start(dataclasses.replace(window(SINCE, SINCE + hour), delivery_id="d_1"))
    await recoveries.cancel(first.id)
    again = await recoveries.start(window(SINCE, SINCE + hour))
    assert len({first.id, before.id, after.id, again.id}) == 4
    held.finish.set()
    await eventually(lambda: recoveries.running == 0, timeout=5)
    await recoveries.close()
