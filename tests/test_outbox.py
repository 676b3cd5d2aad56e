"""cpbench.replaying.child.Outbox: a worker's messages go out in order from their own thread,
so a parent slow to read blocks that thread, never the event loop that sends requests."""
from __future__ import annotations

import threading

from cpbench.replaying.child import Outbox


class _Gated:
    """An ``out`` whose sends wait for a gate, like a full pipe the parent has not read."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.got: list[tuple] = []

    def send(self, msg: tuple) -> None:
        assert self.gate.wait(30), "the test never opened the gate"
        self.got.append(msg)


def test_puts_return_while_the_pipe_is_full_and_close_delivers_everything_in_order():
    out = _Gated()
    box = Outbox(out)
    for i in range(200):
        box.put("rows", i)              # returns at once although every send is blocked
    box.put("done", {"counters": {}})
    assert out.got == []                # nothing could be delivered yet: the puts did not wait
    out.gate.set()
    box.close()                         # waits for the queue to drain
    assert out.got == [("rows", i) for i in range(200)] + [("done", {"counters": {}})]


def test_a_parent_gone_ends_the_thread_quietly():
    class Broken:
        sends = 0

        def send(self, msg):
            self.sends += 1
            raise BrokenPipeError(32, "Broken pipe")

    out = Broken()
    box = Outbox(out)
    box.put("rows", 1)
    box.put("rows", 2)
    box.close()                         # no exception, no hang
    assert out.sends == 1               # nothing more is tried once the pipe is broken
