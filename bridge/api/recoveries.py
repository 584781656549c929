"""Recoveries and redeliveries the API started: background tasks of this process, tracked by id.

Each runs :func:`bridge.admin.recovery.recover` (or whatever :class:`RecoveryRunner` the API
was given: tests pass an in-memory one) as an :class:`asyncio.Task`, and is kept in an
:class:`~bridge.admin.recovery.Operations` registry, so ``GET /v1/recoveries/{id}`` shows its
progress and ``DELETE`` cancels it. Operations live in this process only: a restart forgets them
(what they enqueued stays enqueued), and :meth:`Recoveries.close` cancels the running ones when
the application shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from bridge.admin.recovery import Operation, Operations, RecoveryRequest

__all__ = ["RecoveryRunner", "Recoveries"]

log = logging.getLogger(__name__)


class RecoveryRunner(Protocol):
    """Runs one operation to its end (as :func:`bridge.admin.recovery.recover` with the
    settings bound), updating its counts and progress as it goes."""

    def __call__(self, operation: Operation) -> Awaitable[Operation]: ...


class Recoveries:
    """The operations this process started, running as tasks (see the module docstring).

    ``clock`` gives the wall time (seconds since the epoch) an operation finished at, when the
    runner did not record it.
    """

    def __init__(
        self,
        runner: RecoveryRunner,
        *,
        keep: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runner = runner
        self._clock = clock
        self._operations = Operations(keep)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return f"Recoveries({len(self._tasks)} running)"

    def start(self, request: RecoveryRequest) -> Operation:
        """Start recovering ``request`` in the background; its operation, ``running``."""
        operation = Operation(request, started_at=self._clock())
        self._operations.add(operation)
        self._tasks[operation.id] = asyncio.create_task(
            self._run(operation), name=f"recovery-{operation.id}"
        )
        return operation

    async def _run(self, operation: Operation) -> None:
        try:
            await self._runner(operation)
        except asyncio.CancelledError:
            operation.state = "cancelled"
            raise
        except Exception as exc:
            # recover() marks the operation failed; a runner may not have.
            log.warning("recovery %s failed: %s", operation.id, type(exc).__name__)
            operation.state = "failed"
            operation.error = operation.error or type(exc).__name__
        else:
            if operation.state == "running":
                operation.state = "cancelled" if operation.cancelled else "done"
            if (
                operation.request.delivery_id is not None
                and operation.state == "done"
                and operation.enqueued == 0
            ):
                operation.state = "failed"
                operation.error = "event_not_retained"
        finally:
            if operation.finished_at is None:
                operation.finished_at = self._clock()
            self._tasks.pop(operation.id, None)

    def get(self, operation_id: str) -> Operation | None:
        return self._operations.get(operation_id)

    @property
    def running(self) -> int:
        """How many operations are running."""
        return len(self._tasks)

    async def cancel(self, operation_id: str) -> Operation | None:
        """Stop a running operation and wait until it stopped (what it enqueued stays
        enqueued); a finished one is returned as it is; ``None`` for an unknown id."""
        operation = self._operations.get(operation_id)
        task = self._tasks.get(operation_id)
        if operation is not None and task is not None:
            operation.cancel()
            task.cancel()
            await asyncio.wait([task])
            self._stopped(operation)
        return operation

    def _stopped(self, operation: Operation) -> None:
        # A task cancelled before its first step never ran _run's finally.
        if operation.state == "running":
            operation.state = "cancelled"
        if operation.finished_at is None:
            operation.finished_at = self._clock()
        self._tasks.pop(operation.id, None)

    async def close(self) -> None:
        """Cancel every running operation and wait for them to stop (application shutdown)."""
        tasks = list(self._tasks.items())
        for operation_id, task in tasks:
            operation = self._operations.get(operation_id)
            if operation is not None:
                operation.cancel()
            task.cancel()
        if tasks:
            await asyncio.wait([task for _, task in tasks])
        for operation_id, _ in tasks:
            operation = self._operations.get(operation_id)
            if operation is not None:
                self._stopped(operation)
