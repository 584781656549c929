"""A recovery journal in memory (``bridge.api.recoveries.RecoveryJournal``) for unit tests."""

from __future__ import annotations

from typing import Any

from bridge.worker.recovery_view import RecoveryView


class Journal:
    """Every record written, in order; ``read`` gives an operation's newest one."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.forgotten: list[str] = []

    async def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        found = [r for r in self.records if r["id"] == operation_id]
        return found[-1] if found else None

    async def forget(self, operation_id: str) -> None:
        self.forgotten.append(operation_id)
        self.records = [r for r in self.records if r["id"] != operation_id]

    async def of_webhook(self, webhook_id: str) -> list[dict[str, Any]]:
        newest: dict[str, dict[str, Any]] = {}
        for record in self.records:
            newest[record["id"]] = record
        return [r for r in newest.values() if r.get("webhook_id") == webhook_id]


class ViewJournal(Journal):
    """A journal over a worker's view of the recoveries topic, as the workers' is: ``read``
    gives the newest record written here, else the view's."""

    def __init__(self, view: RecoveryView) -> None:
        super().__init__()
        self.view = view

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        written = await super().read(operation_id)
        return written if written is not None else self.view.get(operation_id)
