"""Long polls learn of a batch's end from any thread, at once, and only of their own batch."""

from __future__ import annotations

import asyncio
import threading

from batchserve.engine.endings import Endings


def test_a_waiter_is_woken_from_another_thread() -> None:
    endings = Endings()

    async def scenario() -> bool:
        ended = endings.expect("b1")
        threading.Thread(target=endings.ended, args=("b1",)).start()
        await asyncio.wait_for(ended, 30)
        endings.forget("b1", ended)
        return ended.done()

    assert asyncio.run(scenario())


def test_an_end_before_the_wait_is_not_missed() -> None:
    endings = Endings()

    async def scenario() -> bool:
        ended = endings.expect("b1")  # taken before the look at the batch
        endings.ended("b1")  # the batch ends between the look and the wait
        await asyncio.wait_for(ended, 30)
        return ended.done()

    assert asyncio.run(scenario())


def test_only_the_waiters_of_the_batch_that_ended_wake() -> None:
    endings = Endings()

    async def scenario() -> tuple[bool, bool]:
        mine, other = endings.expect("b1"), endings.expect("b2")
        endings.ended("b1")
        await asyncio.wait_for(mine, 30)
        await asyncio.sleep(0)
        return mine.done(), other.done()

    assert asyncio.run(scenario()) == (True, False)


def test_a_forgotten_waiter_is_not_kept() -> None:
    endings = Endings()

    async def scenario() -> None:
        ended = endings.expect("b1")
        ended.cancel()  # the wait timed out
        endings.forget("b1", ended)
        endings.ended("b1")  # nothing to wake, nothing raised

    asyncio.run(scenario())
    assert endings._waiters == {}
