"""Modelled engines: an LLM engine with continuous batching and a batching embedding engine.

Each engine is one asyncio task with one timer: an LLM engine sleeps once per decode step and,
when it wakes, emits a token to every running sequence in one pass (``SimRequest.token`` writes
a pre-encoded SSE frame straight to the socket). There is no sleep per token per request, so
pacing stays accurate with hundreds of concurrent streams on a small machine.

Steps follow a fixed timeline: a step that starts at ``start_ns`` ends at ``start_ns + step_ns``
and the next one starts there, not when the event loop happened to wake, so timer jitter (the
loop's timers have millisecond resolution) never accumulates into the token rate.

An embedding engine either has a GPU of its own (its own task and timer) or is co-located
with an LLM engine, whose steps then also run its batches (``LLMEngine.guests``), so the two
kinds share one modelled GPU timeline.

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
    ``max_tokens``) fits in the cache; it is reserved at admission, so a sequence never runs out
    of cache mid-way. A policy may still evict sequences to make room (``preempt_for``, vLLM's
    priority preemption): the evicted sequence loses its KV cache and, when admitted again,
    recomputes it -- its prefill covers its prompt and every token it already generated
    (``prefill_tokens``), then it goes on generating where it stopped.

    Each step runs every decoding sequence one token and at most
    ``max_prefill_tokens_per_step`` prompt tokens of admitted sequences (chunked prefill, in
    admission order); a sequence whose prefill completes emits its next token at the end of
    that step. Step time (``step_ns``) = ``decode_base_ns`` + ``decode_ns_per_seq`` ×
    decoding sequences + ``decode_ns_per_context_token`` × their context tokens +
    ``prefill_ns_per_token`` × prompt tokens in the step. Prompt tokens found in the engine's
    prefix cache (:class:`cpbench.sim.prefix_cache.PrefixCache`, looked up at admission) are
    not prefilled.

    Co-located embedding engines (``guests``) share this engine's GPU: a step also runs the
    embedding batch a guest hands over (``EmbeddingEngine.take_batch``), and its time is added
    to the step's, so each kind delays the other.
    """

    engine_kind = "llm"

    def __init__(self, cfg: LLMEngineConfig, index: int, on_capacity: Callable[[], None]) -> None:
        self.cfg = cfg
        self.index = index
        self.name = f"{cfg.model}/{index}"
        self.on_capacity = on_capacity
        self.running: list[Any] = []
        self.prefilling: deque[Any] = deque()
        self.guests: list[EmbeddingEngine] = []
        self.kv_used_tokens = 0
        self.context_tokens = 0
        self.steps = 0
        self.preemptions = 0
        self.recomputed_tokens = 0
        # Pacing fidelity: modelled step time vs the time between the step's token writes.
        self.modelled_ns_total = 0
        self.actual_ns_total = 0
        self.prefix_cache = PrefixCache(cfg.kv_cache_tokens, cfg.prefix_block_tokens,
                                        cfg.prefix_cache)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the cost model ----------------------------------------------------------------------
    def step_ns(self, decoding: int, context_tokens: int, prefill_tokens: int) -> int:
        """Modelled time of one step (see the class docstring)."""
        cfg = self.cfg
        return (cfg.decode_base_ns + cfg.decode_ns_per_seq * decoding
                + cfg.decode_ns_per_context_token * context_tokens
                + cfg.prefill_ns_per_token * prefill_tokens)

    def prefill_tokens(self, req: Any) -> int:
        """Tokens to prefill when ``req`` is admitted: the one place prefill work is charged.

        A fresh request prefills its prompt; one that was preempted recomputes the KV cache of
        its prompt and of every token it already generated (vLLM's preemption by recompute).
        Prompt tokens the prefix cache held at admission (``cached_tokens``) are not computed.
        """
        return max(req.prompt_tokens + req.generated - req.cached_tokens, 1)

    def min_service_ns(self, prompt_tokens: int, max_tokens: int) -> int:
        """Least time from admission to the last token, on an idle engine."""
        cfg = self.cfg
        return (prompt_tokens * cfg.prefill_ns_per_token
                + max_tokens * (cfg.decode_base_ns + cfg.decode_ns_per_seq))

    def min_ttft_ns(self, prompt_tokens: int) -> int:
        """Least time from admission to the first token, on an idle engine."""
        return prompt_tokens * self.cfg.prefill_ns_per_token + self.cfg.decode_base_ns

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

    def keeps_deadlines(self, req: Any, now_ns: int) -> bool:
        """Whether admitting ``req`` keeps the batch on course: the batch cap the
        deadline-aware policies apply.

        A request with ``left`` tokens to go is predicted to finish after ``left`` steps of the
        batch with ``req`` in it (context bounded above by the whole reserved KV cache) plus
        the prefill work queued on the engine, ``req``'s included (chunked prefill runs inside
        the same steps, so it delays everyone). ``req`` is admitted while at least half of the
        running requests whose deadline is still ahead are predicted on time -- the median
        request's time per output token is protected, not the tail's: a long answer whose
        deadline needs a near-empty engine must not hold the whole batch back. ``req`` must
        also be able to get its first token by its first-token deadline, unless that has
        passed already (a late request set aside by the policy) or the engine is idle
        (waiting cannot make it faster).
        """
        cfg = self.cfg
        seqs = self.load()
        if not seqs:
            return True
        prefill_ns = cfg.prefill_ns_per_token * (
            sum(r.prefill_left for r in self.prefilling) + self.prefill_tokens(req))
        if now_ns < req.ttft_deadline_ns < now_ns + prefill_ns + cfg.decode_base_ns:
            return False   # it would miss a first-token deadline it can still make later
        new_step_ns = self.step_ns(seqs + 1, self.kv_used_tokens + req.kv_tokens, 0)
        ahead = late = 0
        for group in (self.running, self.prefilling):
            for r in group:
                left = r.max_tokens - r.generated
                time_left_ns = r.deadline_ns - now_ns
                if left <= 0 or time_left_ns <= 0:
                    continue
                ahead += 1
                if time_left_ns < left * new_step_ns + prefill_ns:
                    late += 1
        return 2 * late <= ahead

    def admit(self, req: Any) -> None:
        """Reserve KV cache and queue the request's prefill for the next step."""
        self.kv_used_tokens += req.kv_tokens
        # Prefill is charged only for the tokens the prefix cache does not hold.
        req.cached_tokens = self.prefix_cache.lookup(req.prefix_hashes, req.prompt_tokens)
        req.engine_index = self.index
        req.prefill_left = self.prefill_tokens(req)
        if req.generated:
            self.recomputed_tokens += req.prefill_left
        self.prefilling.append(req)
        self._wake.set()

    def preempt_for(self, req: Any) -> list[Any]:
        """Evict decoding sequences of lower priority than ``req`` until it fits; return them.

        Victims are taken lowest priority first, latest arrival first within a priority (the
        ``max((priority, arrival))`` of vLLM's scheduler), and only if evicting them all makes
        room; otherwise nothing is evicted and the list is empty. Each victim's KV cache is
        freed; its tokens already sent stay sent. Sequences in prefill are not evicted: the
        step in flight may be computing them.
        """
        key = (req.rank, req.seq)
        candidates = sorted((r for r in self.running if (r.rank, r.seq) > key),
                            key=lambda r: (r.rank, r.seq), reverse=True)
        slots = self.cfg.max_running_seqs - self.load()
        kv_free = self.cfg.kv_cache_tokens - self.kv_used_tokens
        victims: list[Any] = []
        for r in candidates:
            if slots >= 1 and kv_free >= req.kv_tokens:
                break
            victims.append(r)
            slots += 1
            kv_free += r.kv_tokens
        if not (slots >= 1 and kv_free >= req.kv_tokens):
            return []
        gone = set(map(id, victims))
        self.running = [r for r in self.running if id(r) not in gone]
        for r in victims:
            self.kv_used_tokens -= r.kv_tokens
            self.context_tokens -= r.prompt_tokens + r.generated
            r.preemptions += 1
        self.preemptions += len(victims)
        return victims

    # -- the step loop -----------------------------------------------------------------------
    def _take_all(self) -> list[Any]:
        taken = [*self.running, *self.prefilling]
        self.running, self.prefilling = [], deque()
        return taken

    async def _run(self) -> None:
        start_ns = _monotonic_ns()
        last_ns = start_ns
        while True:
            if not self.running and not self.prefilling and not any(
                    g.pending for g in self.guests):
                self._wake.clear()
                await self._wake.wait()
                start_ns = last_ns = _monotonic_ns()
            chunk, prefill_tokens = self._plan_prefill()
            llm_busy = bool(self.running or chunk)
            step_ns = (self.step_ns(len(self.running), self.context_tokens, prefill_tokens)
                       if llm_busy else 0)
            batches = [(g, g.take_batch(start_ns, llm_busy)) for g in self.guests]
            step_ns += sum(gpu_ns for _, (_, gpu_ns) in batches)
            end_ns = start_ns + step_ns
            await _sleep_until(end_ns)
            now_ns = _monotonic_ns()
            for guest, (batch, _) in batches:
                if batch:
                    guest.finish_batch(batch, now_ns)
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

    A batch holds at most ``max_batch_inputs`` texts and ``max_batch_tokens`` tokens; a
    request larger than that runs as as many batches as it needs. Time of ``n`` batches
    (``batch_ns``) = ``n`` × ``batch_base_ns`` + ``ns_per_token`` × their tokens.

    Alone (no ``host``), the engine has a GPU of its own: requests admitted while a batch runs
    wait for the next batch, which starts as soon as the current one ends. Co-located
    (``colocate_with``), it shares an LLM engine's GPU: it takes every request offered, and
    the host runs what is pending, as many batches as it takes, inside its next step
    (``take_batch``), so embedding throughput is bounded by GPU time, as on a real shared GPU.
    An eager guest hands over whatever is pending at every step, as a server that runs
    whatever is ready; a patient one (``patient``, set from the policy) lets the batch fill
    while the LLM engine is busy, until a full batch is pending or its oldest request has used
    ``PATIENCE_FRACTION`` of the time to its deadline -- fewer batches, so less of the
    per-batch cost taken from decode steps.
    """

    engine_kind = "embedding"
    #: A patient guest's batch waits until its oldest request has used this share of the time
    #: to its deadline: what is left covers one more step (up to ~100 ms in a burst), the
    #: batch and the HTTP round trip on a busy host.
    PATIENCE_FRACTION = 0.25

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
        self.host: LLMEngine | None = None
        self.patient = False
        self.full = False   # a full batch is pending, or a request waits that it cannot take
        self._running_batches = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def colocate_with(self, host: LLMEngine) -> None:
        """Share ``host``'s GPU from now on (before ``start``)."""
        self.host = host
        host.guests.append(self)

    def start(self) -> None:
        """Start the batch loop, unless a host runs the batches."""
        if self.host is None:
            super().start()

    def load(self) -> int:
        """Requests on this engine, running or collected for the next batch."""
        return len(self.running) + len(self.pending)

    def fits_ever(self, req: Any) -> bool:
        """Every request fits: an oversized one runs as a batch of its own."""
        return True

    def can_admit(self, req: Any) -> bool:
        """Whether the request joins the next batch without overfilling it (co-located: always,
        the host runs as many batches as are pending). A refusal marks the batch full."""
        if not self.pending or self.host is not None:
            return True
        fits = (self.pending_inputs + req.n_inputs <= self.cfg.max_batch_inputs
                and self.pending_tokens + req.prompt_tokens <= self.cfg.max_batch_tokens)
        self.full = self.full or not fits
        return fits

    def keeps_deadlines(self, req: Any, now_ns: int) -> bool:
        """Embedding batches are capped by size alone."""
        return True

    def admit(self, req: Any) -> None:
        """Add the request to the next batch."""
        self.pending.append(req)
        self.pending_inputs += req.n_inputs
        self.pending_tokens += req.prompt_tokens
        cfg = self.cfg
        if (self.pending_inputs >= cfg.max_batch_inputs
                or self.pending_tokens >= cfg.max_batch_tokens):
            self.full = True
        (self.host._wake if self.host is not None else self._wake).set()

    def batch_ns(self, tokens: int, batches: int = 1) -> int:
        """Modelled time of ``batches`` batches holding ``tokens`` tokens in all."""
        return batches * self.cfg.batch_base_ns + tokens * self.cfg.ns_per_token

    def _batches(self, inputs: int, tokens: int) -> int:
        cfg = self.cfg
        return max(1, -(-inputs // cfg.max_batch_inputs), -(-tokens // cfg.max_batch_tokens))

    def min_service_ns(self, prompt_tokens: int, max_tokens: int) -> int:
        """Time of a batch holding only this request."""
        return self.batch_ns(prompt_tokens)

    def min_ttft_ns(self, prompt_tokens: int) -> int:
        """The result is the first (and only) answer: the time of a batch of its own."""
        return self.batch_ns(prompt_tokens)

    def take_batch(self, now_ns: int, host_busy: bool) -> tuple[list[Any], int]:
        """The requests to run now (the step starting at ``now_ns``, for a host) and their GPU
        time; nothing when nothing is pending or a patient guest lets the batch fill."""
        pending = self.pending
        if not pending:
            return [], 0
        if self.patient and host_busy and not self._due(now_ns):
            return [], 0
        batches = self._batches(self.pending_inputs, self.pending_tokens)
        gpu_ns = self.batch_ns(self.pending_tokens, batches)
        self.pending, self.pending_inputs, self.pending_tokens = [], 0, 0
        self.running, self.full, self._running_batches = pending, False, batches
        return pending, gpu_ns

    def _due(self, now_ns: int) -> bool:
        if self.full:
            return True
        oldest = min(self.pending, key=lambda r: r.deadline_ns)
        used = now_ns - oldest.received_ns
        return used >= self.PATIENCE_FRACTION * (oldest.deadline_ns - oldest.received_ns)

    def finish_batch(self, batch: list[Any], now_ns: int) -> None:
        """The batch ran: answer its requests."""
        self.running = []
        self.batches += self._running_batches
        for req in batch:
            req.finish(now_ns)

    def _take_all(self) -> list[Any]:
        taken = [*self.running, *self.pending]
        self.running, self.pending = [], []
        return taken

    async def _run(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch, gpu_ns = self.take_batch(0, False)
            # The queue may refill the next batch while this one runs.
            self.on_capacity()
            await _sleep_until(_monotonic_ns() + gpu_ns)
            self.finish_batch(batch, _monotonic_ns())
            self.on_capacity()
