"""Scheduling policies of the embedded control plane: which waiting request goes to an engine next.

A policy owns the control plane's waiting queue(s). The scheduler pushes every accepted request
and, whenever an engine may have room, calls ``drain(admit, now_ns)``; the policy offers requests
in its order and ``admit(request)`` answers whether the request left the queue (placed on an
engine, or dropped because its client went away). A queue stops at the first request that cannot
be placed: dispatch is strictly in policy order, so head-of-line blocking is part of what a
policy means (a FIFO control plane really does make an embedding wait behind a chat request
that no engine can take yet).

Ordering is half of a policy; the other half is what it asks of the engines, read by the
scheduler from three flags: ``preempts`` (a blocked request may evict running ones of lower
priority, vLLM's priority scheduling), ``protects_deadlines`` (admission into the running batch
is capped so the running requests stay on course for their deadlines) and
``defers_embeddings`` (on a GPU shared by both engines, embedding batches wait to fill up while
their deadlines allow). The rules, with their sources, are written down in ``docs/policies.md``.

Requests need only these attributes: ``seq`` (arrival order), ``rank`` (0 HIGH, 1 NORMAL,
2 LOW), ``deadline_ns`` and ``ttft_deadline_ns`` (absolute, monotonic clock), ``received_ns``,
``kind``, ``engine_kind`` (``"llm"`` or ``"embedding"``), ``min_service_ns`` and
``min_ttft_ns`` (the least time an idle engine needs for all of it and for its first token).
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Callable

from cpbench.sim.config import POLICY_NAMES

Admit = Callable[[Any], bool]


class _FifoQueue:
    """Arrival order."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()

    def push(self, req: Any) -> None:
        self._items.append(req)

    def drain(self, admit: Admit, now_ns: int) -> None:
        items = self._items
        while items and admit(items[0]):
            items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def take_all(self) -> list[Any]:
        out = list(self._items)
        self._items.clear()
        return out


class _PriorityQueue:
    """HIGH before NORMAL before LOW, arrival order within a class."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any]] = []

    def push(self, req: Any) -> None:
        heapq.heappush(self._heap, (req.rank, req.seq, req))

    def drain(self, admit: Admit, now_ns: int) -> None:
        heap = self._heap
        while heap and admit(heap[0][2]):
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._heap)

    def take_all(self) -> list[Any]:
        out = [item[2] for item in self._heap]
        self._heap.clear()
        return out


def hopeless(req: Any, now_ns: int) -> bool:
    """Whether ``req`` can no longer meet its deadline, or its first-token deadline, even on an
    idle engine: ``now + min_service > deadline`` or ``now + min_ttft > ttft_deadline``."""
    return (now_ns + req.min_service_ns > req.deadline_ns
            or now_ns + req.min_ttft_ns > req.ttft_deadline_ns)


class _EdfQueue:
    """Earliest deadline first among requests that can still meet their deadline.

    A request that can no longer make it (``hopeless``) is set aside in a FIFO of late
    requests, served when no on-time request waits -- spending capacity on a lost cause would
    make on-time requests late too (the EDF domino effect under overload). Each one set aside
    is counted per kind (``late_counts``, shown in ``/metrics`` and ``/admin/stats``). So that
    late requests are not starved under sustained overload, the oldest one goes first once it
    has waited ``max_wait_ns``.
    """

    def __init__(self, max_wait_ns: int, late_counts: dict[str, int]) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._late: deque[Any] = deque()
        self._max_wait_ns = max_wait_ns
        self._late_counts = late_counts

    def push(self, req: Any) -> None:
        heapq.heappush(self._heap, (req.deadline_ns, req.seq, req))

    def drain(self, admit: Admit, now_ns: int) -> None:
        heap, late = self._heap, self._late
        while heap or late:
            if late and (not heap or now_ns - late[0].received_ns >= self._max_wait_ns):
                if not admit(late[0]):
                    return
                late.popleft()
                continue
            req = heap[0][2]
            if hopeless(req, now_ns):
                heapq.heappop(heap)
                late.append(req)
                self._late_counts[req.kind] = self._late_counts.get(req.kind, 0) + 1
                continue
            if not admit(req):
                return
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._heap) + len(self._late)

    def take_all(self) -> list[Any]:
        out = [item[2] for item in self._heap] + list(self._late)
        self._heap.clear()
        self._late.clear()
        return out


class Policy:
    """A named set of queues, the rule that routes a request to one of them, and what the
    policy asks of the engines (see the module docstring)."""

    name: str = ""
    preempts: bool = False
    protects_deadlines: bool = False
    defers_embeddings: bool = False

    def __init__(self, queues: dict[str, Any], route: Callable[[Any], str],
                 late_counts: dict[str, int] | None = None) -> None:
        self._queues = queues
        self._route = route
        #: Requests set aside as hopeless, per kind (deadline-aware policies only).
        self.late_counts: dict[str, int] = late_counts if late_counts is not None else {}

    def push(self, req: Any) -> None:
        """Add one accepted request."""
        self._queues[self._route(req)].push(req)

    def drain(self, admit: Admit, now_ns: int) -> None:
        """Offer waiting requests to ``admit`` in policy order until each queue is blocked."""
        for queue in self._queues.values():
            if len(queue):
                queue.drain(admit, now_ns)

    def depths(self) -> dict[str, int]:
        """Waiting requests per queue name (for ``/metrics``)."""
        return {name: len(q) for name, q in self._queues.items()}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def take_all(self) -> list[Any]:
        """Remove and return every waiting request in arrival order (for a policy switch)."""
        out = [r for q in self._queues.values() for r in q.take_all()]
        out.sort(key=lambda r: r.seq)
        return out


def make_policy(name: str, max_wait_ns: int, late_counts: dict[str, int] | None = None) -> Policy:
    """The policy called ``name`` (one of ``POLICY_NAMES``); hopeless requests are counted per
    kind into ``late_counts`` (the caller's, so counts outlive a policy switch).

    - ``fifo``: one queue in arrival order for every kind; no preemption, no cap.
    - ``priority``: one queue, HIGH before NORMAL before LOW, FIFO within a class; a head that
      no engine can take preempts running sequences of lower priority (recomputed later).
    - ``slo_aware``: one queue, earliest deadline first; hopeless requests set aside and
      counted; admission capped so running requests stay on course for their deadlines.
    - ``hybrid_slo``: separate embedding and LLM queues, each deadline-aware like ``slo_aware``,
      so embeddings never wait behind LLM requests that no engine can take; on a shared GPU,
      embedding batches fill up while their deadlines allow instead of interrupting every
      decode step; LLM traffic is never starved because it has its own queue and its late
      requests age in after ``max_wait_ns``.
    """
    late: dict[str, int] = {} if late_counts is None else late_counts
    if name == "fifo":
        policy = Policy({"global": _FifoQueue()}, lambda r: "global")
    elif name == "priority":
        policy = Policy({"global": _PriorityQueue()}, lambda r: "global")
        policy.preempts = True
    elif name == "slo_aware":
        policy = Policy({"global": _EdfQueue(max_wait_ns, late)}, lambda r: "global", late)
        policy.protects_deadlines = True
    elif name == "hybrid_slo":
        # Embeddings first: they are short, so they rarely delay an LLM admission measurably.
        policy = Policy({"embedding": _EdfQueue(max_wait_ns, late),
                         "llm": _EdfQueue(max_wait_ns, late)}, lambda r: r.engine_kind, late)
        policy.protects_deadlines = True
        policy.defers_embeddings = True
    else:
        raise ValueError(f"policy must be one of {', '.join(POLICY_NAMES)}; got {name!r}")
    policy.name = name
    return policy
