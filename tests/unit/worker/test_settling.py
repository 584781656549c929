"""bridge.worker.settling: a request held while owners settle wakes at the next change, never
polls, never waits past its bound, and does not wait at all when it need not."""

from __future__ import annotations

import asyncio
import gc

import pytest

from bridge.worker.delivery_log import OwnerUnavailable
from bridge.worker.settling import (
    MAX_HOLD,
    Changes,
    hold_bound,
    hold_left,
    hold_until,
    settle,
    settle_async,
    wait_for_change,
)
from tests.support.waiting import PROMPT


class Owner:
    """A check that fails until :attr:`ready`, counting how often it was asked."""

    def __init__(self, *, settles: bool = True) -> None:
        self.ready = False
        self.asked = 0
        self.settles = settles

    def __call__(self) -> str:
        self.asked += 1
        if not self.ready:
            raise OwnerUnavailable("the webhook has no owner now", settles=self.settles)
        return "answer"


def test_the_hold_is_half_the_request_timeout_and_at_most_a_few_seconds() -> None:
    assert hold_bound(10.0) == MAX_HOLD == 5.0
    assert hold_bound(4.0) == 2.0
    assert hold_bound(60.0) == MAX_HOLD
    assert hold_bound(0.0) == 0.0


@pytest.mark.parametrize(
    ("header", "until"),
    [
        (None, 105.0),  # a client's request: the whole bound
        ("2.5", 102.5),  # a peer's, with 2.5 s left
        ("0", 100.0),  # nothing left: looked at once
        ("-3", 100.0),
        ("60", 105.0),  # never longer than this worker's own bound
        ("inf", 105.0),
        ("nan", 105.0),  # not a number: as if absent
        ("soon", 105.0),
    ],
)
def test_a_hold_header_can_only_shorten_the_hold(header: str | None, until: float) -> None:
    assert hold_until(header, 5.0, 100.0) == until


def test_what_is_left_of_a_hold_is_sent_on() -> None:
    assert hold_left(103.25, 100.0) == "3.250"
    assert hold_left(99.0, 100.0) == "0.000"
    assert hold_left(None, 100.0) == "0"  # not held: neither is the request sent on


async def test_a_ready_owner_is_answered_without_waiting() -> None:
    owner = Owner()
    owner.ready = True
    loop = asyncio.get_running_loop()
    # Nothing ever changes: had it waited, it would wait for the whole (long) hold.
    answer = await asyncio.wait_for(settle(owner, Changes(), loop.time() + 60), PROMPT)
    assert (answer, owner.asked) == ("answer", 1)


async def test_a_change_wakes_the_held_requests_which_look_again_once() -> None:
    changes = Changes()
    owner = Owner()
    loop = asyncio.get_running_loop()
    held = [asyncio.ensure_future(settle(owner, changes, loop.time() + 60)) for _ in range(3)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(task.done() for task in held)
    assert owner.asked == 3  # each looked once, then waited: no polling
    changes.notify()  # a change that does not settle it: each looks once more
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(task.done() for task in held) and owner.asked == 6
    owner.ready = True
    changes.notify()
    answers = await asyncio.wait_for(asyncio.gather(*held), PROMPT)
    assert answers == ["answer"] * 3 and owner.asked == 9


async def test_a_change_between_the_look_and_the_wait_is_not_missed() -> None:
    changes = Changes()
    loop = asyncio.get_running_loop()

    def check() -> str:
        if not changes_seen:
            changes_seen.append(True)
            changes.notify()  # changes while the first look is made
            raise OwnerUnavailable("still reading the webhook's partition")
        return "answer"

    changes_seen: list[bool] = []
    answer = await asyncio.wait_for(settle(check, changes, loop.time() + 60), PROMPT)
    assert answer == "answer"


async def test_a_hold_that_does_not_settle_ends_unavailable_at_its_bound() -> None:
    owner = Owner()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(OwnerUnavailable) as raised:
        await settle(owner, Changes(), start + 0.2)
    waited = loop.time() - start
    assert 0.2 <= waited < PROMPT
    assert raised.value.detail == "the webhook has no owner now" and raised.value.retry_after == 1


async def test_changes_after_the_bound_do_not_prolong_the_hold() -> None:
    changes = Changes()
    loop = asyncio.get_running_loop()

    def check() -> str:
        changes.notify()  # something changes at every look, and never settles it
        raise OwnerUnavailable("still reading the webhook's partition")

    start = loop.time()
    with pytest.raises(OwnerUnavailable):
        await asyncio.wait_for(settle(check, changes, start + 0.1), PROMPT)
    assert not await wait_for_change(changes.watch(), start + 0.1)  # past it: never waits


async def test_not_held_without_a_deadline_or_when_no_change_can_settle_it() -> None:
    loop = asyncio.get_running_loop()
    owner = Owner()
    with pytest.raises(OwnerUnavailable):
        await asyncio.wait_for(settle(owner, Changes(), None), PROMPT)
    assert owner.asked == 1
    # The owner answered, but not with the log (a 404, a broken answer): no change helps.
    answered = Owner(settles=False)
    with pytest.raises(OwnerUnavailable):
        await asyncio.wait_for(settle(answered, Changes(), loop.time() + 60), PROMPT)
    assert answered.asked == 1


async def test_an_owner_never_known_leaves_no_reference_cycle() -> None:
    """The error raised at the end of a hold is not kept in the frame its traceback holds: until
    2026-12-07 each ``503`` so answered was a reference cycle, left to the collector's full
    passes, which pause the event loop."""
    changes = Changes()

    async def attempt() -> None:
        raise OwnerUnavailable("no owner", settles=False)

    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            with pytest.raises(OwnerUnavailable):
                await settle_async(attempt, changes, None)
        assert gc.collect() == 0
    finally:
        gc.enable()
