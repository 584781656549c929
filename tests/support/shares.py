"""A LoopShare on a clock a test moves, recording what each payment paid for."""

from __future__ import annotations

from bridge.admin.loop_share import LoopShare


class CountedShare(LoopShare):
    """A :class:`LoopShare` whose clock moves only when the test says (:meth:`work`: a unit of
    work, such as a record parsed) and when it sleeps; every payment's stretch is kept in
    :attr:`stretches`."""

    def __init__(self, share: float) -> None:
        self.now = 0.0
        #: What each payment paid for, in units of work.
        self.stretches: list[float] = []
        super().__init__(share, clock=lambda: self.now, sleep=self._sleep)

    def work(self, units: float = 1.0) -> None:
        self.now += units

    async def _sleep(self, seconds: float) -> None:
        self.now += seconds

    async def pay(self, began: float, *, turn: bool = True) -> float:
        self.stretches.append(self.now - began)
        return await super().pay(began, turn=turn)
