"""Modelled engines: an LLM engine with continuous batching and a batching embedding engine.

Each engine is one asyncio task with one timer: an LLM engine sleeps once per decode step and,
when it wakes, emits a token to every running sequence in one pass (``SimRequest.token`` writes
a pre-encoded SSE frame straight to the socket). There is no sleep per token per request, so
pacing stays accurate with hundreds of concurrent streams on a small machine.

Steps follow a fixed timeline: a step that starts at ``start_ns`` ends at ``start_ns + step_ns``
and the next one starts there, not when the event loop happened to wake, so timer jitter (the
loop's timers have millisecond resolution) never accumulates into the token rate.

Engines hand on: tokens and completions to the requests (``wire.SimRequest``), and a call to
``on_capacity()`` after every step so the scheduler can admit waiting requests.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

from cpbench.sim.config import EmbeddingEngineConfig, LLMEngineConfig
from cpbench.sim.prefix_cache import PrefixCache

_monotonic_ns = time.monotonic_ns
# Timers fire on whole milliseconds; asking for half a millisecond more centres the wake-up
# error on zero instead of always waking early.
_TIMER_BIAS_NS = 500_000
_MAX_CATCH_UP_NS = 1_000_000_000


async def _sleep_until(end_ns: int) -> None:
    delay_ns = end_ns - _monotonic_ns()
    if delay_ns > 0:
        await asyncio.sleep((delay_ns + _TIMER_BIAS_NS) / 1e9)
    else:
        await asyncio.sleep(0)   # catching up: still let requests and other engines run


class _EngineTask:
    """The one asyncio task every engine runs, started and stopped the same way.

    Each engine kind supplies ``_run()`` (its step or batch loop) and ``_take_all()`` (removes
    and returns every request it still holds, so ``stop`` can abort them).
    """

    name: str
    _task: asyncio.Task[None] | None

    def start(self) -> None:
        """Start the engine's task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and abort every request still on the engine (running or waiting)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        now_ns = _monotonic_ns()
        for req in self._take_all():
            req.finish(now_ns, aborted=True)


class LLMEngine(_EngineTask):
    """One LLM engine instance: continuous batching over a KV cache of fixed size.

    A request is admitted when a sequence slot is free and its whole KV footprint (prompt plus
    ``max_tokens``) fits in the cache; it is reserved at admission, so no sequence is ever
    preempted. Each step runs every decoding sequence one token and at most
    ``max_prefill_tokens_per_step`` prompt tokens of admitted sequences (chunked prefill, in
    admission order); a sequence whose prefill completes emits its first token at the end of
    that step. Step time = ``decode_base_ns`` + ``decode_ns_per_seq`` × decoding sequences +
    ``decode_ns_per_context_token`` × their context tokens + ``prefill_ns_per_token`` × prompt
    tokens in the step. Prompt tokens found in the engine's prefix cache
    (:class:`cpbench.sim.prefix_cache.PrefixCache`, looked up at admission) are not prefilled.
    """

    engine_kind = "llm"

    def __init__(self, cfg: LLMEngineConfig, index: int, on_capacity: Callable[[], None]) -> None:
        self.cfg = cfg
        self.index = index
        self.name = f"{cfg.model}/{index}"
        self.on_capacity = on_capacity
        self.running: list[Any] = []
        self.prefilling: deque[Any] = deque()
        self.kv_used_tokens = 0
        self.context_tokens = 0
        self.steps = 0
        # Pacing fidelity: modelled step time vs the time between the step's token writes.
        self.modelled_ns_total = 0
        self.actual_ns_total = 0
        self.prefix_cache = PrefixCache(cfg.kv_cache_tokens, cfg.prefix_block_tokens,
                                        cfg.prefix_cache)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- admission (called by the scheduler) --------------------------------------------------
    def load(self) -> int:
        """Sequences on this engine, running or waiting for prefill."""
        return len(self.running) + len(self.prefilling)

    def fits_ever(self, req: Any) -> bool:
        """Whether the request could run on an empty engine."""
        return req.kv_tokens <= min(self.cfg.kv_cache_tokens, self.cfg.max_model_len)

    def can_admit(self, req: Any) -> bool:
        """Whether a sequence slot and the request's KV footprint are free now."""
        return (len(self.running) + len(self.prefilling) < self.cfg.max_running_seqs
                and self.kv_used_tokens + req.kv_tokens <= self.cfg.kv_cache_tokens)

    def admit(self, req: Any) -> None:
        """Reserve KV cache and queue the request's prefill for the next step."""
        self.kv_used_tokens += req.kv_tokens
        # Prefill is charged only for the tokens the prefix cache does not hold.
        req.cached_tokens = self.prefix_cache.lookup(req.prefix_hashes, req.prompt_tokens)
        req.engine_index = self.index
        req.prefill_left = max(req.prompt_tokens - req.cached_tokens, 1)
        self.prefilling.append(req)
        self._wake.set()

    def min_service_ns(self, prompt_tokens: int, max_tokens: int) -> int:
        """Least time from admission to the last token, on an idle engine."""
        cfg = self.cfg
        return (prompt_tokens * cfg.prefill_ns_per_token
                + max_tokens * (cfg.decode_base_ns + cfg.decode_ns_per_seq))

    # -- the step loop -----------------------------------------------------------------------
    def _take_all(self) -> list[Any]:
        taken = [*self.running, *self.prefilling]
        self.running, self.prefilling = [], deque()
        return taken

    async def _run(self) -> None:
        cfg = self.cfg
        start_ns = _monotonic_ns()
        last_ns = start_ns
        while True:
            if not self.running and not self.prefilling:
                self._wake.clear()
                await self._wake.wait()
                start_ns = last_ns = _monotonic_ns()
            chunk, prefill_tokens = self._plan_prefill()
            step_ns = (cfg.decode_base_ns + cfg.decode_ns_per_seq * len(self.running)
                       + cfg.decode_ns_per_context_token * self.context_tokens
                       + cfg.prefill_ns_per_token * prefill_tokens)
            end_ns = start_ns + step_ns
            await _sleep_until(end_ns)
            now_ns = _monotonic_ns()
            # First tokens go out before decode tokens: TTFT is what clients measure most.
            started = self._finish_prefill(chunk, now_ns)
            self._decode(now_ns)
            self.running.extend(started)
            self.steps += 1
            self.modelled_ns_total += step_ns
            self.actual_ns_total += now_ns - last_ns
            last_ns = now_ns
            # Keep the fixed timeline: after a late wake-up (a busy host) the next steps run
            # without sleeping until the engine is back on its model time, so the token rate
            # stays the model's. Beyond _MAX_CATCH_UP_NS behind, start afresh instead of
            # emitting a long burst.
            start_ns = end_ns if now_ns - end_ns < _MAX_CATCH_UP_NS else now_ns
            self.on_capacity()

    def _plan_prefill(self) -> tuple[list[tuple[Any, int]], int]:
        budget = self.cfg.max_prefill_tokens_per_step
        chunk: list[tuple[Any, int]] = []
        for req in self.prefilling:
            if budget <= 0:
                break
            take = min(req.prefill_left, budget)
            chunk.append((req, take))
            budget -= take
        return chunk, self.cfg.max_prefill_tokens_per_step - budget

    def _decode(self, now_ns: int) -> None:
        keep: list[Any] = []
        emitted = 0
        for req in self.running:
            if req.slow_factor > 1:
                req.slow_count += 1
                if req.slow_count % req.slow_factor:
                    keep.append(req)
                    continue
            if not req.token(now_ns):
                self._release(req)
                req.finish(now_ns, aborted=True)
            elif req.generated >= req.max_tokens:
                self._release(req)
                req.finish(now_ns)
            else:
                keep.append(req)
                emitted += 1
        self.context_tokens += emitted
        self.running = keep

    def _finish_prefill(self, chunk: list[tuple[Any, int]], now_ns: int) -> list[Any]:
        started: list[Any] = []
        for req, take in chunk:
            req.prefill_left -= take
            if req.prefill_left > 0:
                continue
            self.prefilling.popleft()   # chunks are planned from the head, in order
            if not req.token(now_ns):
                self.kv_used_tokens -= req.kv_tokens
                req.finish(now_ns, aborted=True)
            elif req.generated >= req.max_tokens:
                self.kv_used_tokens -= req.kv_tokens
                req.finish(now_ns)
            else:
                started.append(req)
                self.context_tokens += req.prompt_tokens + req.generated
        return started

    def _release(self, req: Any) -> None:
        self.kv_used_tokens -= req.kv_tokens
        self.context_tokens -= req.prompt_tokens + req.generated - 1


class EmbeddingEngine(_EngineTask):
    """One embedding engine instance: runs one batch at a time, collecting the next meanwhile.

    Requests admitted while a batch runs wait for the next batch, which starts as soon as the
    current one ends; a batch holds at most ``max_batch_inputs`` texts and ``max_batch_tokens``
    tokens (a single request larger than that runs alone). Batch time = ``batch_base_ns`` +
    ``ns_per_token`` × tokens in the batch.
    """

    engine_kind = "embedding"

    def __init__(self, cfg: EmbeddingEngineConfig, index: int,
                 on_capacity: Callable[[], None]) -> None:
        self.cfg = cfg
        self.name = f"{cfg.model}/{index}"
        self.on_capacity = on_capacity
        self.pending: list[Any] = []
        self.pending_inputs = 0
        self.pending_tokens = 0
        self.running: list[Any] = []
        self.batches = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def load(self) -> int:
        """Requests on this engine, running or collected for the next batch."""
        return len(self.running) + len(self.pending)

    def fits_ever(self, req: Any) -> bool:
        """Every request fits: an oversized one runs as a batch of its own."""
        return True

    def can_admit(self, req: Any) -> bool:
        """Whether the request joins the next batch without overfilling it."""
        if not self.pending:
            return True
        return (self.pending_inputs + req.n_inputs <= self.cfg.max_batch_inputs
                and self.pending_tokens + req.prompt_tokens <= self.cfg.max_batch_tokens)

    def admit(self, req: Any) -> None:
        """Add the request to the next batch."""
        self.pending.append(req)
        self.pending_inputs += req.n_inputs
        self.pending_tokens += req.prompt_tokens
        self._wake.set()

    def min_service_ns(self, prompt_tokens: int, max_tokens: int) -> int:
        """Time of a batch holding only this request."""
        return self.cfg.batch_base_ns + prompt_tokens * self.cfg.ns_per_token

    def _take_all(self) -> list[Any]:
        taken = [*self.running, *self.pending]
        self.running, self.pending = [], []
        return taken

    async def _run(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch, tokens = self.pending, self.pending_tokens
            self.pending, self.pending_inputs, self.pending_tokens = [], 0, 0
            self.running = batch
            # The queue may refill the next batch while this one runs.
            self.on_capacity()
            start_ns = _monotonic_ns()
            await _sleep_until(start_ns + self.cfg.batch_base_ns + tokens * self.cfg.ns_per_token)
            now_ns = _monotonic_ns()
            self.running = []
            self.batches += 1
            for req in batch:
                req.finish(now_ns)
            self.on_capacity()
