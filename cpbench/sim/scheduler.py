"""The control plane proper: routes accepted requests through the policy to engine instances.

The scheduler owns the engines (grouped by model) and the current policy. It drains the policy
whenever capacity may have appeared -- a request arrived, an engine finished a step or a batch
-- and places each request the policy offers on the least-loaded instance of its model that can
take it now, applying what the policy asks of the engines: the deadline cap on admission
(``protects_deadlines``), preemption of lower-priority sequences when nothing can take the
request (``preempts``; the victims go back to the policy's queue) and patient embedding
batches on a shared GPU (``defers_embeddings``). Switching policy moves the waiting requests,
in arrival order, into the new one. ``stats()`` hands the counts on to ``/metrics`` and
``/admin/stats``.
"""
from __future__ import annotations

import time
from typing import Any

from cpbench.sim.config import SimConfig
from cpbench.sim.engines import EmbeddingEngine, LLMEngine
from cpbench.sim.policies import make_policy

_monotonic_ns = time.monotonic_ns


class Scheduler:
    """Engines by model, the current policy, and the admission rule between them."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.max_wait_ns = int(config.max_wait_ms * 1e6)
        #: Requests set aside as hopeless, per policy and kind (they outlive policy switches).
        self.hopeless: dict[str, dict[str, int]] = {}
        self.policy = self._make_policy(config.policy)
        self.engines: dict[str, list[Any]] = {}
        for llm in config.llm:
            self.engines[llm.model] = [LLMEngine(llm, i, self.drain) for i in range(llm.instances)]
        for emb in config.embedding:
            self.engines[emb.model] = [EmbeddingEngine(emb, i, self.drain)
                                       for i in range(emb.instances)]
        if config.colocate and config.llm:
            hosts = self.engines[config.llm[0].model]
            for emb in config.embedding:
                for i, guest in enumerate(self.engines[emb.model]):
                    guest.colocate_with(hosts[i % len(hosts)])
        self._set_patience()
        self._draining = False
        self._again = False
        self._requeue: list[Any] = []
        self.dispatched = 0
        self.preempted: dict[str, int] = {}

    def _make_policy(self, name: str) -> Any:
        return make_policy(name, self.max_wait_ns, self.hopeless.setdefault(name, {}))

    def _set_patience(self) -> None:
        for engine in self.all_engines():
            if engine.engine_kind == "embedding":
                engine.patient = self.policy.defers_embeddings

    def start(self) -> None:
        """Start every engine's task on the running loop."""
        for group in self.engines.values():
            for engine in group:
                engine.start()

    async def stop(self) -> None:
        """Stop the engines and abort every waiting request (a second call does nothing)."""
        for group in self.engines.values():
            for engine in group:
                await engine.stop()
        now_ns = _monotonic_ns()
        for req in self.policy.take_all():
            req.finish(now_ns, aborted=True)

    def all_engines(self) -> list[Any]:
        """Every engine instance, LLM first."""
        return [e for group in self.engines.values() for e in group]

    def resolve_model(self, model: str, engine_kind: str) -> str | None:
        """The served model for a request's ``model`` field, or None when nothing serves it.

        With ``accept_any_model`` an unknown name goes to the first model of the right kind, so
        a trace recorded against other model names replays unchanged.
        """
        group = self.engines.get(model)
        if group is not None and group[0].engine_kind == engine_kind:
            return model
        if self.config.accept_any_model:
            for name, group in self.engines.items():
                if group[0].engine_kind == engine_kind:
                    return name
        return None

    def models(self) -> list[tuple[str, str]]:
        """(model, engine kind) of every served model."""
        return [(name, group[0].engine_kind) for name, group in self.engines.items()]

    def submit(self, req: Any) -> None:
        """Queue an accepted request under the current policy and try to place it."""
        group = self.engines[req.model]
        req.min_service_ns = group[0].min_service_ns(req.prompt_tokens, req.max_tokens)
        req.min_ttft_ns = group[0].min_ttft_ns(req.prompt_tokens)
        self.policy.push(req)
        self.drain()

    def drain(self) -> None:
        """Place waiting requests until the policy's queues are blocked."""
        if self._draining:
            # An admission woke something that asked to drain again: do it after this pass.
            self._again = True
            return
        self._draining = True
        try:
            again = True
            while again:
                self._again = False
                self.policy.drain(self._admit, _monotonic_ns())
                # Preempted sequences wait again, in the policy's order; they join after the
                # pass so the queue being drained is not changed under it.
                for req in self._requeue:
                    self.policy.push(req)
                again = self._again or bool(self._requeue)
                self._requeue.clear()
        finally:
            self._draining = False

    def _admit(self, req: Any) -> bool:
        if req.done.done():
            return True   # finished while waiting (shutdown): just drop it from the queue
        client = req.client
        if client is not None and client.is_closing():
            req.finish(_monotonic_ns(), aborted=True)   # its client left while it waited
            return True
        now_ns = _monotonic_ns()
        capped = self.policy.protects_deadlines
        best = None
        for engine in self.engines[req.model]:
            if (engine.can_admit(req) and (best is None or engine.load() < best.load())
                    and (not capped or engine.keeps_deadlines(req, now_ns))):
                best = engine
        if best is None and self.policy.preempts and req.engine_kind == "llm":
            best = self._preempt_for(req)
        if best is None:
            return False
        if not req.admitted_ns:   # a preempted request keeps its first admission time
            req.admitted_ns = now_ns
        best.admit(req)
        self.dispatched += 1
        return True

    def _preempt_for(self, req: Any) -> Any:
        """The first engine of the model that can make room for ``req`` by evicting
        lower-priority sequences (they are queued again), or None."""
        for engine in self.engines[req.model]:
            victims = engine.preempt_for(req)
            if victims:
                self._requeue.extend(victims)
                name = self.policy.name
                self.preempted[name] = self.preempted.get(name, 0) + len(victims)
                return engine
        return None

    def set_policy(self, name: str) -> None:
        """Switch to policy ``name``; waiting requests move over in arrival order."""
        new = self._make_policy(name)
        for req in self.policy.take_all():
            new.push(req)
        self.policy = new
        self._set_patience()
        self.drain()

    def stats(self) -> dict[str, Any]:
        """Counts since start: requests placed on engines, sequences preempted and requests
        set aside as hopeless (per policy, and per kind for the latter), and waiting now."""
        return {"policy": self.policy.name, "colocate": self.config.colocate,
                "dispatched": self.dispatched, "waiting": len(self.policy),
                "preempted": dict(self.preempted),
                "hopeless": {p: dict(k) for p, k in self.hopeless.items() if k}}
