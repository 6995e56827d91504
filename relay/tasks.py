"""Long-lived background tasks: an exception that ends one is logged, never silent."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.logs import get_logger

log = get_logger("relay.tasks")


def report_unexpected_exit(task: asyncio.Task[Any]) -> None:
    """A done-callback for tasks that should run until cancelled."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("task_died", task=task.get_name(), exc_info=error)


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; its outcome is not raised."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
