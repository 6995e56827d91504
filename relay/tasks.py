"""Long-lived background tasks: an exception that ends one is logged, never silent."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from relay.logs import get_logger

log = get_logger("relay.tasks")
T = TypeVar("T")


def report_unexpected_exit(task: asyncio.Task[Any]) -> None:
    """A done-callback for tasks that should run until cancelled."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("task_died", task=task.get_name(), exc_info=error)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start a task that should run until cancelled (:func:`report_unexpected_exit`)."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(report_unexpected_exit)
    return task


async def cancel_and_wait(task: asyncio.Future[Any] | None, timeout: float | None = None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished, at most ``timeout`` seconds
    (then ``TimeoutError``; None: no bound); its outcome is not raised."""
    if task is not None:
        task.cancel()
        async with asyncio.timeout(timeout):
            await asyncio.gather(task, return_exceptions=True)
