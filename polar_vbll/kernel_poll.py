"""A Jupyter client's waits on its kernel, in one-second polls (notebooks run by tests, benchmarks).

A notebook runner (nbclient: nbmake in ``make test-notebooks``, ``tests/test_widgets.py``,
``benchmarks/bench_walkthrough.py``) waits for a cell's reply with one asyncio ZeroMQ poll as
long as the cell's time limit. Now and then that poll misses the wakeup of a reply that has
arrived, and it returns only when the limit runs out: the cell then passes, late by exactly its
limit. Every new poll first looks at the socket's pending events, so waiting in polls of one
second bounds what a missed wakeup costs to one second. :func:`install` makes every asyncio
channel of ``jupyter_client`` wait that way; as a pytest plugin (``-p polar_vbll.kernel_poll``,
in pyproject.toml's ``addopts`` for every pytest run of this repository) it is installed when
pytest starts.
"""

from __future__ import annotations

import time
from queue import Empty

SLICE_SECONDS = 1.0


def sliced(get_msg, slice_seconds: float = SLICE_SECONDS):
    """``get_msg(channel, timeout)`` that polls in slices of ``slice_seconds`` until ``timeout``
    (None: for ever) and raises ``queue.Empty`` at the same deadline as ``get_msg``."""

    async def get_msg_sliced(channel, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                poll = slice_seconds if left is None else min(slice_seconds, left)
                return await get_msg(channel, timeout=poll)
            except Empty:
                if left is not None and left <= slice_seconds:
                    raise

    get_msg_sliced.sliced = True
    get_msg_sliced.__doc__ = get_msg.__doc__
    return get_msg_sliced


def install(slice_seconds: float = SLICE_SECONDS) -> None:
    """Make every asyncio channel of ``jupyter_client`` wait in :func:`sliced` polls (once;
    nothing to do where ``jupyter_client`` is not installed: no notebook runs there)."""
    try:
        from jupyter_client.channels import AsyncZMQSocketChannel
    except ImportError:
        return

    if not getattr(AsyncZMQSocketChannel.get_msg, "sliced", False):
        AsyncZMQSocketChannel.get_msg = sliced(AsyncZMQSocketChannel.get_msg, slice_seconds)


def pytest_configure(config) -> None:
    """pytest plugin hook (``-p polar_vbll.kernel_poll``)."""
    install()


__all__ = ["SLICE_SECONDS", "install", "sliced"]
