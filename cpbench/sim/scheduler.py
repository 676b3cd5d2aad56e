"""The control plane proper: routes accepted requests through the policy to engine instances.

The scheduler owns the engines (grouped by model) and the current policy. It drains the policy
whenever capacity may have appeared -- a request arrived, an engine finished a step or a batch
-- and places each request the policy offers on the least-loaded instance of its model that can
take it now. Switching policy moves the waiting requests, in arrival order, into the new one.
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
        self.policy = make_policy(config.policy, self.max_wait_ns)
        self.engines: dict[str, list[Any]] = {}
        for llm in config.llm:
            self.engines[llm.model] = [LLMEngine(llm, i, self.drain) for i in range(llm.instances)]
        for emb in config.embedding:
            self.engines[emb.model] = [EmbeddingEngine(emb, i, self.drain)
                                       for i in range(emb.instances)]
        self._draining = False
        self._again = False
        self.dispatched = 0

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
                again = self._again
        finally:
            self._draining = False

    def _admit(self, req: Any) -> bool:
        if req.done.done():
            return True   # finished while waiting (shutdown): just drop it from the queue
        client = req.client
        if client is not None and client.is_closing():
            req.finish(_monotonic_ns(), aborted=True)   # its client left while it waited
            return True
        best = None
        for engine in self.engines[req.model]:
            if engine.can_admit(req) and (best is None or engine.load() < best.load()):
                best = engine
        if best is None:
            return False
        req.admitted_ns = _monotonic_ns()
        best.admit(req)
        self.dispatched += 1
        return True

    def set_policy(self, name: str) -> None:
        """Switch to policy ``name``; waiting requests move over in arrival order."""
        new = make_policy(name, self.max_wait_ns)
        for req in self.policy.take_all():
            new.push(req)
        self.policy = new
        self.drain()
