"""Stopping in a fixed order under one deadline (``relay/app.py`` lists the steps).

Each step is given what is left of the deadline (at least 0.1 s); a step that fails or overruns
is logged (``shutdown_step_failed``, ``shutdown_step_overran``) and the next one still runs,
so one stuck component never keeps the rest open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from relay.logs import get_logger

log = get_logger("relay.shutdown")

ShutdownStep = Callable[[float], Awaitable[None]]  # given the seconds it may take


def cut_off(close: Callable[[], Awaitable[None]]) -> ShutdownStep:
    """A step for a ``close`` with no timeout of its own: cancelled when its time is up."""

    async def step(left: float) -> None:
        await asyncio.wait_for(close(), timeout=left)

    return step


async def run_step(name: str, step: ShutdownStep, left: float) -> None:
    try:
        await step(left)
    except TimeoutError:
        log.error("shutdown_step_overran", step=name, timeout_s=round(left, 2))
    except Exception as error:  # one failing step must not skip the ones after it
        log.error("shutdown_step_failed", step=name, error=f"{type(error).__name__}: {error}")


async def run_steps(steps: Sequence[tuple[str, ShutdownStep]], timeout: float) -> None:
    """Every step in order, all of them within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name, step in steps:
        await run_step(name, step, max(0.1, deadline - loop.time()))
