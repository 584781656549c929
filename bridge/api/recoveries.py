"""Recoveries and redeliveries the API runs: background tasks of this process, tracked by id.

Each runs :func:`bridge.admin.recovery.recover` (or whatever :class:`RecoveryRunner` the API
was given: tests pass an in-memory one) as an :class:`asyncio.Task`, and is kept in an
:class:`~bridge.admin.recovery.Operations` registry, so ``GET /v1/recoveries/{id}`` shows its
progress and ``DELETE`` cancels it.

Without a :class:`RecoveryJournal` (``python -m bridge.api serve``), operations live in this
process only: a restart forgets them (what they enqueued stays enqueued), and
:meth:`Recoveries.close` cancels the running ones. With one (the workers: the recoveries topic),
each operation is written when it starts, every ``heartbeat`` seconds while it runs (with where
it has read each source partition to) and when it ends, so any process can show it; at shutdown
the running ones are *released* (written ``running`` without a runner) and the webhook's owner
resumes them from their positions (:meth:`Recoveries.resume`), where owners take recoveries over
(workers with ``delivery_log``; else they are cancelled). A worker passes its fence
(``writing``, :meth:`bridge.subscriptions.serial.KeyedLocks.writing`): an operation is started or
resumed only while the worker owns its webhook, and a worker giving its webhooks up waits for
the starts being recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Protocol

from bridge.admin.recovery import Operation, Operations, RecoveryRequest
from bridge.api.problems import Problem
from bridge.subscriptions.webhook import Webhook, before_created
from bridge.worker.recovery_view import ended

__all__ = [
    "DEFAULT_HEARTBEAT",
    "RETRY_AFTER",
    "per_owner",
    "RecoveryJournal",
    "RecoveryRunner",
    "Recoveries",
]

#: Seconds between two records of a running operation.
DEFAULT_HEARTBEAT = 2.0
#: Seconds a request refused for too many running recoveries is told to wait.
RETRY_AFTER = 5

log = logging.getLogger(__name__)


def per_owner(max_running: int) -> int:
    """Operations of one site's webhooks (or one account's account-wide ones) a worker runs at
    once: half of what it runs in all, at least one, so that one site's tools cannot take
    every place."""
    return max(1, max_running // 2)


def _overlapping(request: RecoveryRequest, placed: Iterable[Operation]) -> Operation | None:
    """A recovery of ``request``'s webhook running over a window that shares a moment with
    ``request``'s (redeliveries, of one delivery, are not windows: ``None`` for them). The
    webhook, not its id: one of a deleted webhook whose id was taken again (by another site)
    is another webhook's, whose deliveries the new one never gets (until 2026-12-06 it
    refused the new webhook's recoveries, naming a recovery its owner could not see)."""
    if request.delivery_id is not None:
        return None
    for other in placed:
        theirs = other.request
        if (
            theirs.webhook.id == request.webhook.id
            and theirs.webhook.created_at == request.webhook.created_at
            and theirs.delivery_id is None
            and theirs.since < request.until
            and request.since < theirs.until
        ):
            return other
    return None


class RecoveryRunner(Protocol):
    """Runs one operation to its end (as :func:`bridge.admin.recovery.recover` with the
    settings bound), updating its counts and progress as it goes."""

    def __call__(self, operation: Operation) -> Awaitable[Operation]: ...


class RecoveryJournal(Protocol):
    """Where operations are recorded, for every process to read (the recoveries topic)."""

    async def write(self, record: dict[str, Any]) -> None:
        """Record an operation (:meth:`Operation.to_record`); returns once it is stored."""
        ...

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        """The newest record of an operation, as of this call (a write that returned before it
        is seen), or ``None``."""
        ...

    async def forget(self, operation_id: str) -> None:
        """Forget an operation that ended (its records go; ``read`` then gives ``None``)."""
        ...

    async def of_webhook(self, webhook_id: str) -> list[dict[str, Any]]:
        """The newest records of one webhook's operations, as of this call (as ``read``)."""
        ...


class Recoveries:
    """The operations this process runs, as tasks (see the module docstring).

    ``clock`` gives the wall time (seconds since the epoch) an operation finished at, when the
    runner did not record it; ``url`` is this process's address, recorded as the runner.
    ``writing(webhook_id)`` is entered around each start's or resume's first record: it raises
    :class:`~bridge.subscriptions.serial.NotWritable` (nothing started, nothing recorded) once
    this process may not act for that webhook (by default it never does). ``live_runner``
    reads a journal record's runner, if it recorded it lately (the address of the process
    running it); without it, no record is taken to have one. ``taken_over``: another process
    resumes what this one releases (workers with ``delivery_log``); without that, a stop
    cancels them, as without a journal (until 2026-12-06 they were released, and stayed
    running for ever, nobody resuming them).
    """

    def __init__(
        self,
        runner: RecoveryRunner,
        *,
        keep: int = 100,
        clock: Callable[[], float] = time.time,
        journal: RecoveryJournal | None = None,
        url: str | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_running: int | None = None,
        max_per_owner: int | None = None,
        writing: Callable[[str], AbstractAsyncContextManager[object]] = nullcontext,
        live_runner: Callable[[dict[str, Any], float], str | None] | None = None,
        taken_over: bool = True,
    ) -> None:
        self._runner = runner
        self._live_runner = live_runner
        self._taken_over = taken_over
        self._writing = writing
        self._max_running = max_running
        self._max_per_owner = max_per_owner
        self._clock = clock
        self._operations = Operations(keep)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Operations past the checks of :meth:`start` (or resumed) whose task has not begun:
        #: their first record is being written. They hold their place meanwhile.
        self._launching: dict[str, Operation] = {}
        self._journal = journal
        self._url = url
        self._heartbeat = heartbeat
        #: Operations being released (this process stops): written running, without a runner.
        self._releasing: set[str] = set()
        #: Operations whose stopped task settled and recorded them itself (``_stopped`` then
        #: has nothing to add).
        self._settled_on_stop: set[str] = set()
        #: :meth:`close` began: nothing more is started here.
        self._closed = False

    def __repr__(self) -> str:
        return f"Recoveries({len(self._tasks)} running)"

    @property
    def journal(self) -> RecoveryJournal | None:
        return self._journal

    async def start(
        self,
        request: RecoveryRequest,
        *,
        operation_id: str | None = None,
        request_digest: str | None = None,
    ) -> Operation:
        """Start recovering ``request`` in the background; its operation, ``running`` (and
        recorded, with a journal, before this returns). With ``max_running`` operations running
        here already, or ``max_per_owner`` of webhooks of the request's site (account), a
        ``429`` (resumed operations, taken over from a stopped process, are run whatever their
        number: they were accepted)."""
        self._refuse_when_closed()
        # First the journal's (an await), then this process's and the place, with no await
        # between them: a start checked meanwhile counts this one.
        recorded = await self._recorded_running(request)
        self._refuse_when_closed()
        overlapping = _overlapping(request, [*self._placed(), *recorded])
        if overlapping is not None:
            raise Problem(
                "conflict",
                f"recovery {overlapping.id} of this webhook is running over an overlapping "
                "window; cancel it, or ask for a window outside it",
            )
        if self._max_running is not None and self.running >= self._max_running:
            raise Problem(
                "too_many_requests",
                # Not how many: the count is of every site's recoveries.
                "this worker runs as many recoveries as it may at once",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        owner = request.webhook.owner
        mine = sum(other.request.webhook.owner == owner for other in self._placed())
        if self._max_per_owner is not None and mine >= self._max_per_owner:
            whose = "site's" if owner[0] == "site_id" else "account's"
            raise Problem(
                "too_many_requests",
                f"{mine} recoveries of this {whose} webhooks are running on this worker, the "
                "most one may run at once",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        operation = Operation(request, started_at=self._clock(), request_digest=request_digest)
        if operation_id is not None:
            operation.id = operation_id
        # Placed before the first await: a start checked meanwhile counts this one.
        self._launching[operation.id] = operation
        return await self._launch(operation)

    async def _recorded_running(self, request: RecoveryRequest) -> list[Operation]:
        """The operations of ``request``'s webhook the journal records running that this
        process does not run: another worker's, or one whose worker stopped and that no worker
        has taken over yet (until 2026-12-06 a recovery started then over the same moments was
        accepted, and both ran once one was taken over: every event sent twice more). Those
        begun before the webhook was created are another webhook's of the same id. None for a
        redelivery (not a window) or without a journal. Where nobody takes recoveries over,
        only those a live process runs."""
        if self._journal is None or request.delivery_id is not None:
            return []
        now = self._clock()
        out = []
        for record in await self._journal.of_webhook(request.webhook.id):
            if record.get("state") != "running" or record.get("id") in self._tasks:
                continue
            if not self._taken_over and (
                self._live_runner is None or self._live_runner(record, now) is None
            ):
                continue  # nobody resumes it: its runner stopped, and it with it
            try:
                operation = Operation.from_record(record, request.webhook)
            except ValueError:
                continue
            if not before_created(operation.started_at, request.webhook.created_at):
                out.append(operation)
        return out

    async def resume(self, operation: Operation) -> Operation:
        """Run on an operation another process released or left (it reads on from its
        recorded positions); recorded with this process as its runner before this returns."""
        self._refuse_when_closed()
        operation.resumed += 1
        self._launching[operation.id] = operation
        return await self._launch(operation)

    def running_here(self, operation_id: str) -> bool:
        return operation_id in self._tasks

    def _refuse_when_closed(self) -> None:
        if self._closed:
            raise Problem(
                "unavailable",
                "this worker is stopping; another one takes the request",
                headers={"Retry-After": "1"},  # as soon as the group has moved its webhooks
            )

    def _placed(self) -> list[Operation]:
        """The operations holding a place: running, or past the checks and being recorded."""
        running = [op for op in map(self._operations.get, self._tasks) if op is not None]
        return running + list(self._launching.values())

    async def _launch(self, operation: Operation) -> Operation:
        try:
            async with self._writing(operation.request.webhook.id):
                operation.runner = self._url
                self._operations.add(operation)
                await self._record(operation)
            if self._closed:
                # close() began while it was recorded: stopped as close() stops those running,
                # never run here.
                self._give_up(operation.id, operation)
                await self._stopped(operation)
                return operation
            self._tasks[operation.id] = asyncio.create_task(
                self._run(operation), name=f"recovery-{operation.id}"
            )
            return operation
        finally:
            self._launching.pop(operation.id, None)

    async def _record(self, operation: Operation) -> None:
        if self._journal is not None:
            await self._journal.write(operation.to_record(updated_at=self._clock()))

    async def _beat(self, operation: Operation) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            if operation.state != "running":
                # Ended, its clients still stopping: the end is :meth:`_run`'s to record, once
                # (until 2026-12-05 a beat then recorded it too, and it ended twice).
                return
            try:
                if await self._ended_elsewhere(operation):
                    # Another worker recorded it cancelled (it found no live runner: a
                    # take-over was resuming it): stopped here too, and recorded so.
                    operation.cancel()
                    task = self._tasks.get(operation.id)
                    if task is not None:
                        task.cancel()
                    return
                if operation.state != "running":
                    # It ended while the journal was read: likewise :meth:`_run`'s to record
                    # (until 2026-12-07 this beat recorded the end too).
                    return
                await self._record(operation)
            except Exception as exc:  # the next beat tries again; the run goes on
                log.warning("recovery %s not recorded: %s", operation.id, type(exc).__name__)

    async def _ended_elsewhere(self, operation: Operation) -> bool:
        """Whether the journal's newest record of ``operation``, which runs here, is an end
        (only another process writes one while it runs here)."""
        if self._journal is None:
            return False
        return ended(await self._journal.read(operation.id))

    async def _run(self, operation: Operation) -> None:
        beat = asyncio.create_task(self._beat(operation)) if self._journal is not None else None
        try:
            await self._runner(operation)
        except asyncio.CancelledError:
            self._settled_on_stop.add(operation.id)  # and recorded below, once
            if operation.id in self._releasing:
                operation.runner = None
            else:
                operation.state = "cancelled"
            raise
        except Exception as exc:
            # recover() marks the operation failed; a runner may not have.
            log.warning("recovery %s failed: %s", operation.id, type(exc).__name__)
            operation.state = "failed"
            operation.error = operation.error or type(exc).__name__
        else:
            if operation.state == "running":  # a runner that left its end to be decided here
                operation.finish()
        finally:
            if beat is not None:
                beat.cancel()
            if operation.id in self._releasing:
                operation.state = "running"
                operation.finished_at = None
            elif operation.finished_at is None:
                operation.finished_at = self._clock()
            self._tasks.pop(operation.id, None)
            try:
                await asyncio.shield(self._record(operation))
            except Exception as exc:
                log.warning("recovery %s not recorded: %s", operation.id, type(exc).__name__)

    def get(self, operation_id: str) -> Operation | None:
        """An operation this process runs; without a journal, also one it ran (its latest
        ones). With a journal, one that ended is read from the journal as every process reads
        it (``record_of``): it is forgotten there after its retention, and so everywhere."""
        if self._journal is not None and operation_id not in self._tasks:
            return None
        return self._operations.get(operation_id)

    async def of_webhook(self, webhook: Webhook) -> list[Operation]:
        """The operations of ``webhook`` every process shows (with a journal: as recorded, but
        those running here as they are now), or this process runs and ran (without one); in no
        order. A record that is not an operation of ``webhook`` is left out."""
        live = {
            operation.id: operation
            for operation in self._operations.all()
            if operation.request.webhook.id == webhook.id
        }
        if self._journal is None:
            return list(live.values())
        out = []
        for record in await self._journal.of_webhook(webhook.id):
            operation_id = record.get("id")
            if isinstance(operation_id, str) and operation_id in self._tasks:
                out.append(live[operation_id])
                continue
            try:
                out.append(Operation.from_record(record, webhook))
            except ValueError:
                continue
        return out

    async def record_of(self, operation_id: str) -> dict[str, Any] | None:
        """The journal's newest record of an operation (``None`` without a journal)."""
        return None if self._journal is None else await self._journal.read(operation_id)

    async def cancel_recorded(self, operation: Operation) -> Operation:
        """Cancel an operation no process runs (released, or its runner stopped answering):
        record it ``cancelled`` so no process resumes it. One that another process records
        running now (it began, or took it over, since the caller looked) is not: that process
        would run on, its next record running again, while this one answered cancelled
        (until 2026-12-06); ``503``, and the client's next try is sent to it."""
        if self._journal is not None and self._live_runner is not None:
            record = await self._journal.read(operation.id)
            runner = None if record is None else self._live_runner(record, self._clock())
            if runner is not None and runner != self._url:
                raise Problem(
                    "unavailable",
                    "the recovery is running on another worker now; try again",
                    headers={"Retry-After": "1"},
                )
        if operation.state == "running":
            operation.state = "cancelled"
            operation.finished_at = self._clock()
            await self._record(operation)
        return operation

    @property
    def running(self) -> int:
        """How many operations are running, or past the checks and being recorded."""
        return len(self._tasks) + len(self._launching)

    async def cancel(self, operation_id: str) -> Operation | None:
        """Stop a running operation and wait until it stopped (what it enqueued stays
        enqueued); a finished one is returned as it is; ``None`` for an unknown id."""
        operation = self._operations.get(operation_id)
        task = self._tasks.get(operation_id)
        if operation is not None and task is not None:
            operation.cancel()
            task.cancel()
            await asyncio.wait([task])
            await self._stopped(operation)
        return operation

    async def _stopped(self, operation: Operation) -> None:
        """Settle and record an operation whose task was stopped, when its task did not: a
        task cancelled before its first step never ran ``_run``."""
        self._tasks.pop(operation.id, None)
        if operation.id in self._settled_on_stop:
            self._settled_on_stop.discard(operation.id)
            return
        if operation.id in self._releasing:
            operation.runner = None
        else:
            if operation.state == "running":
                operation.state = "cancelled"
            if operation.finished_at is None:
                operation.finished_at = self._clock()
        await self._record(operation)

    def _give_up(self, operation_id: str, operation: Operation | None) -> None:
        """Mark an operation this process stops running as it shuts down: released for another
        process to resume, with a journal and another process to take it over; else
        cancelled."""
        if self._journal is not None and self._taken_over:
            self._releasing.add(operation_id)
        elif operation is not None:
            operation.cancel()

    async def close(self) -> None:
        """Stop every running operation and wait for them to stop (application shutdown):
        released for another process to resume with a journal and ``taken_over``, else
        cancelled. Nothing is started after it begins (``503``)."""
        self._closed = True
        tasks = list(self._tasks.items())
        for operation_id, task in tasks:
            self._give_up(operation_id, self._operations.get(operation_id))
            task.cancel()
        if tasks:
            await asyncio.wait([task for _, task in tasks])
        for operation_id, _ in tasks:
            operation = self._operations.get(operation_id)
            if operation is not None:
                await self._stopped(operation)
