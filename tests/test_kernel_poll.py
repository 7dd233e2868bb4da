"""polar_vbll.kernel_poll: a missed wakeup costs one slice, the deadline and Empty are kept, and a
real kernel's reply that comes after several slices still arrives."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import pytest

from polar_vbll import kernel_poll


class Channel:
    """A kernel channel whose reply is there from poll ``ready_at`` on (None: never); a poll before
    that waits out its whole timeout, as a poll that missed the wakeup does."""

    def __init__(self, ready_at: int | None):
        self.ready_at, self.polls = ready_at, []

    async def get_msg(self, timeout: float | None = None) -> dict:
        self.polls.append(timeout)
        if self.ready_at is not None and len(self.polls) >= self.ready_at:
            return {"msg_type": "execute_reply"}
        await asyncio.sleep(timeout)
        raise Empty


def wait(channel: Channel, timeout: float | None) -> dict:
    get_msg = kernel_poll.sliced(Channel.get_msg, slice_seconds=0.2)
    return asyncio.run(get_msg(channel, timeout=timeout))


def test_a_missed_wakeup_costs_one_slice_not_the_whole_limit():
    channel = Channel(ready_at=2)  # the first poll misses the reply; the next one finds it
    assert wait(channel, timeout=600)["msg_type"] == "execute_reply"
    assert channel.polls == [0.2, 0.2]


def test_no_limit_polls_until_the_reply():
    channel = Channel(ready_at=4)
    assert wait(channel, timeout=None)["msg_type"] == "execute_reply"
    assert channel.polls == [0.2, 0.2, 0.2, 0.2]


@pytest.mark.parametrize("timeout", [0.0, 0.5])
def test_no_reply_raises_empty_at_the_same_deadline(timeout):
    channel = Channel(ready_at=None)
    start = time.monotonic()
    with pytest.raises(Empty):
        wait(channel, timeout=timeout)
    assert time.monotonic() - start >= timeout - 0.01  # never gives up early
    assert all(poll <= 0.2 for poll in channel.polls) and channel.polls[0] == min(timeout, 0.2)


def test_installed_once_and_a_real_kernel_still_answers():
    from jupyter_client.channels import AsyncZMQSocketChannel
    from jupyter_client.manager import start_new_async_kernel

    kernel_poll.install()
    installed = AsyncZMQSocketChannel.get_msg
    kernel_poll.install()
    assert AsyncZMQSocketChannel.get_msg is installed and installed.sliced

    async def run() -> dict:
        manager, client = await start_new_async_kernel(kernel_name="python3")
        try:
            msg_id = client.execute("import time; time.sleep(2.5); 6 * 7")
            while True:  # the reply comes after about three one-second slices
                reply = await client.shell_channel.get_msg(timeout=60)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply
        finally:
            client.stop_channels()
            await manager.shutdown_kernel(now=True)

    assert asyncio.run(run())["content"]["status"] == "ok"
