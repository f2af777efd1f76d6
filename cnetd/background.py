"""Owned background tasks: every one is cancelled and awaited when its owner stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel every task given (None is skipped) and wait until each has ended."""
    await cancel_all(tasks)


async def cancel_all(tasks: Iterable[asyncio.Task[Any] | asyncio.Future[Any] | None]) -> None:
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
