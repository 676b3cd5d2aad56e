"""One time base across hosts: estimate another host's monotonic clock offset, NTP-style.

CLOCK_MONOTONIC is system-wide on one Linux host but unrelated between hosts. A replay across a
Ray cluster (:mod:`cpbench.replaying.cluster`) picks its start instant on the driver's clock; each
node needs that instant on its own clock. One round trip gives three stamps: the driver's
clock when the question leaves (``t_send_ns``), the node's clock when it answers
(``remote_ns``) and the driver's clock when the answer is back (``t_recv_ns``). If the way
out and the way back take equally long, the node read its clock at the midpoint of the round
trip, so ``offset = remote - (t_send + t_recv) / 2`` (node clock minus driver clock). If they do
not, the error is half their difference, which is never more than half the round trip: that
is the stated uncertainty. Queueing only lengthens round trips, so of several samples the one
with the smallest round-trip time (RTT) is kept (NTP's clock filter does the same).

Pure arithmetic over stamps plus a loop that takes them: the unit tests inject the clocks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

ROUNDS = 8                      # round trips per estimate


@dataclass(frozen=True)
class ClockSample:
    """One round trip: local send and receive stamps around the remote clock reading."""

    t_send_ns: int
    remote_ns: int
    t_recv_ns: int

    @property
    def rtt_ns(self) -> int:
        """The round-trip time as the local clock measured it."""
        return self.t_recv_ns - self.t_send_ns


@dataclass(frozen=True)
class ClockOffset:
    """A remote clock relative to the local one: ``remote = local + offset_ns``, give or take
    ``uncertainty_ns`` (half the best round trip)."""

    offset_ns: int
    uncertainty_ns: int
    rtt_ns: int                 # the round trip of the sample kept
    samples: int

    def to_remote(self, local_ns: int) -> int:
        """A local-clock instant on the remote clock."""
        return local_ns + self.offset_ns

    def as_dict(self) -> dict:
        """For ``summary.json``: the figures in their own units."""
        return {"offset_ns": self.offset_ns, "uncertainty_ns": self.uncertainty_ns,
                "rtt_ns": self.rtt_ns, "samples": self.samples}


def estimate_offset(samples: list[ClockSample]) -> ClockOffset:
    """The offset from the minimum-RTT sample; uncertainty is half that RTT.

    Raises
    ------
    ValueError
        No sample, or a sample whose receive stamp precedes its send stamp.
    """
    if not samples:
        raise ValueError("estimate_offset needs at least one round trip")
    bad = [s for s in samples if s.rtt_ns < 0]
    if bad:
        raise ValueError(f"a clock sample comes back before it left: {bad[0]}")
    best = min(samples, key=lambda s: s.rtt_ns)
    # Integer midpoint without overflow worries (Python ints); floor keeps it deterministic.
    midpoint = best.t_send_ns + best.rtt_ns // 2
    return ClockOffset(offset_ns=best.remote_ns - midpoint,
                       uncertainty_ns=(best.rtt_ns + 1) // 2,
                       rtt_ns=best.rtt_ns, samples=len(samples))


def measure_offset(read_remote_ns: Callable[[], int], rounds: int = ROUNDS,
                   clock_ns: Callable[[], int] = time.monotonic_ns) -> ClockOffset:
    """Take ``rounds`` round trips through ``read_remote_ns`` (a blocking call that returns the
    remote clock) and estimate the offset from them."""
    samples = []
    for _ in range(max(1, rounds)):
        t_send = clock_ns()
        remote = int(read_remote_ns())
        samples.append(ClockSample(t_send, remote, clock_ns()))
    return estimate_offset(samples)
