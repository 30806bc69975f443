"""Calls of one event-loop turn sent together (group commit).

Why: a burst of publishes or acks arriving in the same turn costs one round trip to the
store, not one each, while each caller still gets only its own answer, once stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class TurnGroup(Generic[T, R]):
    """Calls made in one event-loop turn, sent as one: each ``submit(items)`` of a turn
    joins the others, and at the end of the turn ``run`` gets all their items in call
    order and returns one answer per item. Each caller gets the answers of its own
    items, or, if ``run`` fails, its error: no caller is half-answered."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]] | None = None
        #: the runs in flight (``close`` waits for them)
        self.calls: set[asyncio.Task[None]] = set()

    async def submit(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = []
            loop.call_soon(self._send)
        future: asyncio.Future[list[R]] = loop.create_future()
        self._waiting.append((items, future))
        return await future

    def _send(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        call = asyncio.ensure_future(self._together(waiting))
        self.calls.add(call)
        call.add_done_callback(self.calls.discard)

    async def _together(self, waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        try:
            answers = await self._run([item for items, _ in waiting for item in items])
            start = 0
            for items, future in waiting:
                if not future.done():  # its caller went away
                    future.set_result(answers[start:start + len(items)])
                start += len(items)
        except Exception as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
        finally:
            for _, future in waiting:  # cancelled itself (the engine closing): so are its callers
                future.cancel()
