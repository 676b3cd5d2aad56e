"""Seeded fault injection for reliability tests of clients: errors, stalls, broken streams.

Each fault mode draws from its own generator, spawned from the sim's seed with
``numpy.random.SeedSequence(seed).spawn``, so turning one mode on or off does not change which
requests another mode hits: with the same seed and the same arrival order, the same requests
fail the same way. Decisions are taken when a request arrives; the engines act on the marks
left on the ``SimRequest`` (``disconnect_at``, ``malformed_at``, ``slow_factor``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cpbench.sim.config import FaultConfig

_MODES = ("error", "stall", "disconnect", "malformed", "slow")


class FaultInjector:
    """Decides, per request, which configured faults hit it; counts what it injected."""

    def __init__(self, cfg: FaultConfig, seed: int) -> None:
        self.cfg = cfg
        children = np.random.SeedSequence(seed).spawn(len(_MODES))
        self._rng = {mode: np.random.default_rng(c) for mode, c in zip(_MODES, children)}
        self.enabled = cfg.any_enabled()
        self.counts: dict[str, int] = {mode: 0 for mode in _MODES}

    def _hit(self, mode: str, percent: float) -> bool:
        if percent <= 0:
            return False
        hit = bool(self._rng[mode].random() * 100.0 < percent)
        if hit:
            self.counts[mode] += 1
        return hit

    def error_status(self) -> int | None:
        """An HTTP status to answer with at once, or None."""
        if not self._hit("error", self.cfg.error_percent):
            return None
        statuses = self.cfg.error_statuses
        return int(statuses[int(self._rng["error"].integers(len(statuses)))])

    def stall_s(self) -> float:
        """Seconds to wait before the request is scheduled (so before its first byte)."""
        return self.cfg.stall_ms / 1000.0 if self._hit("stall", self.cfg.stall_percent) else 0.0

    def mark(self, req: Any, stream: bool) -> None:
        """Leave the stream faults that hit ``req`` on it for the engine to carry out.

        A disconnect closes the stream after ``disconnect_after_tokens`` tokens (at least one,
        and before the last, so the client sees a stream that started and broke); a malformed
        chunk replaces the middle token (streams of two tokens or more).
        """
        cfg = self.cfg
        if stream and self._hit("disconnect", cfg.disconnect_percent):
            req.disconnect_at = max(1, min(cfg.disconnect_after_tokens, req.max_tokens - 1))
        if stream and self._hit("malformed", cfg.malformed_percent):
            req.malformed_at = max(1, req.max_tokens // 2)
        if self._hit("slow", cfg.slow_percent):
            req.slow_factor = cfg.slow_factor
