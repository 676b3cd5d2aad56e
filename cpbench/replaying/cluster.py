"""Replay across a Ray cluster: one dispatcher actor per client core on every node.

``cpbench replay --ray [ADDRESS]`` swaps the local :class:`cpbench.replaying.pool.WorkerPool` for a
:class:`RayPool` with the same interface (``wait_ready``, ``start``, ``pump``, ``stop``,
``totals``, ``merged_itl``, ``close``, ``live``, ``finals``), so the runner, the results writer
and the summary do not change. What differs is where the workers run and how they talk:

- :class:`RayCluster` connects (``ray.init``) and counts the actors each live node takes:
  ``--workers-per-node`` or the node's CPUs minus one (the raylet's).
- :class:`RayPool` reserves one single-CPU bundle per actor in a placement group spread over
  the nodes and starts a :class:`DispatchActor` in each. Each actor's plan (its share of the
  rows, as today) travels through the object store as column arrays; the actor writes it to a
  node-local folder and runs the child's own loop, :func:`cpbench.replaying.child.worker_main`,
  unchanged: timerfd sends, prebuilt requests, packed row buffers.
- One time base: the driver estimates every node's monotonic clock offset
  (:mod:`cpbench.replaying.clock`, the minimum-RTT round trip over all of the node's actors)
  and hands each actor the start instant on its own clock. Rows carry times relative to the
  start, so results stay in the driver's time base; the offsets and their uncertainty go
  into ``summary.json`` (``run.cluster``).
- Result rows come back in batches: the driver keeps one long poll outstanding per actor
  and turns each batch into a record batch as a local run does. Every wait is bounded: an
  actor that dies, or stays silent for :data:`SILENT_S`, is lost; the run stops scheduling,
  keeps every row received, and the runner marks it ``worker-exited`` naming the node.

Ray is optional (``pip install "cpbench[ray]"``); nothing here imports it at module level.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpbench import __version__
from cpbench.errors import ConfigError, TargetError
from cpbench.replaying.plan import COLUMNS, Plan, PromptColumn, load_plan, save_plan
from cpbench.replaying.pool import PoolReports
from cpbench.replaying.clock import ClockOffset, ClockSample, estimate_offset

RAY_MISSING = 'the --ray option needs Ray; install it with: pip install "cpbench[ray]"'
CLOCK_ROUNDS = 8                # round trips per actor for the clock offset
POLL_S = 0.5                    # an actor's long poll: answer at once with rows, else by then
SILENT_S = 30.0                 # no answer to a poll this long: the actor counts as lost
READY_S = 120.0                 # placement, actor start, plan hand-over and connections
CALL_S = 30.0                   # any other single call (facts, clock, start)
PROBE_S = 5.0                   # the TCP connect to an explicit cluster address


def import_ray():
    """``ray``, or a ConfigError whose one line says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


# -- the actor (runs on every node) --------------------------------------------------------

class _Outbox:
    """The child's OUT connection inside an actor: ``send`` queues, ``take`` long-polls.

    :func:`cpbench.replaying.child.worker_main` only calls ``send((kind, payload))`` on it; the driver's
    poll takes what is there, waiting up to ``wait_s`` for the next hand-over.
    """

    def __init__(self) -> None:
        self._items: list = []
        self._cond = threading.Condition()

    def send(self, msg: tuple) -> None:
        with self._cond:
            self._items.append(msg)
            self._cond.notify()

    def take(self, wait_s: float) -> list:
        with self._cond:
            if not self._items:
                self._cond.wait(wait_s)
            items, self._items = self._items, []
        return items


class DispatchActor:
    """One client core: the child's dispatcher loop in a thread, steered by pipe as today.

    Methods run in two concurrency groups: the default one (one thread: :meth:`run`, the loop)
    and ``control`` (:meth:`poll`, :meth:`start`, :meth:`stop`, facts, clock and plan), so the
    driver can poll and stop while the loop runs. A plain class: Ray wraps it at run time
    (Ray is optional), and the tests use it as it is.
    """

    def __init__(self, worker: int, n_workers: int) -> None:
        from multiprocessing.connection import Connection
        self.worker, self.n_workers = worker, n_workers
        ctl_r, ctl_w = os.pipe()
        self.ctl_r = Connection(ctl_r, writable=False)
        self.ctl_w = Connection(ctl_w, readable=False)
        self.outbox = _Outbox()
        self.folder = tempfile.mkdtemp(prefix=f"cpbench-plan-{worker}-")
        self.cfg: dict | None = None
        self.realtime_threads: set[int] = set()

    def facts(self) -> dict:
        """Where this actor runs and which versions it runs."""
        import ray
        return {"node_id": ray.get_runtime_context().get_node_id(),
                "address": ray.util.get_node_ip_address(), "hostname": platform.node(),
                "cpus": os.cpu_count() or 1, "pid": os.getpid(),
                "cpbench_version": __version__, "python_version": platform.python_version(),
                "ray_version": ray.__version__}

    def clock_ns(self) -> int:
        """This node's monotonic clock (one side of a round trip)."""
        return time.monotonic_ns()

    def prepare(self, cfg: dict, columns: dict) -> None:
        """Write this actor's plan (column arrays from the object store) to a node-local
        folder for the loop to map, as the child maps the one its parent saved."""
        prompts = None
        if columns.get("prompt_data") is not None:
            prompts = PromptColumn(columns["prompt_data"], columns["prompt_offsets"],
                                   columns["prompt_valid"])
        plan = Plan(**{name: columns[name] for name in COLUMNS}, prompts=prompts,
                    models=list(columns["models"]))
        save_plan(plan, _plan_dir(self.folder))
        self.cfg = {**cfg, "plan": str(_plan_dir(self.folder))}

    def run(self) -> None:
        """The child's loop, unchanged: ready, wait for start, send the plan, done."""
        from cpbench.replaying.child import worker_main
        try:
            worker_main(self.cfg, self.worker, self.ctl_r, self.outbox)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def start(self, start_ns: int) -> None:
        """Release the loop at ``start_ns`` on this node's clock."""
        self.ctl_w.send(("start", int(start_ns)))

    def stop(self) -> None:
        """Stop scheduling (in-flight requests get the grace period), as the child's stop."""
        try:
            self.ctl_w.send(("stop",))
        except OSError:
            pass

    def poll(self, wait_s: float) -> list:
        """The loop's messages since the last poll (``ready``, ``rows``, ``progress``,
        ``warning``, ``error``, ``done``), waiting up to ``wait_s`` for one."""
        if self.cfg and self.cfg.get("realtime") and \
                threading.get_ident() not in self.realtime_threads:
            # The poll thread takes the GIL the loop needs: at normal priority on a busy host
            # it could be preempted holding it while a real-time send waits (inversion).
            from cpbench.replaying.child import set_realtime
            set_realtime(int(self.cfg["realtime"]))
            self.realtime_threads.add(threading.get_ident())
        return self.outbox.take(wait_s)


def _plan_dir(folder: str) -> Path:
    return Path(folder) / "plan"


def plan_columns(plan: Plan) -> dict:
    """A plan as plain arrays for the object store (no per-row objects)."""
    cols: dict = {name: np.ascontiguousarray(getattr(plan, name), dtype=dtype)
                  for name, dtype in COLUMNS.items()}
    cols["models"] = list(plan.models)
    cols["prompt_data"] = None
    if plan.prompts is not None:
        cols["prompt_data"] = bytes(plan.prompts.data)
        cols["prompt_offsets"] = np.asarray(plan.prompts.offsets, dtype=np.int64)
        cols["prompt_valid"] = np.asarray(plan.prompts.valid, dtype=np.bool_)
    return cols


# -- the cluster (driver side) ----------------------------------------------------------

@dataclass(frozen=True)
class NodeSlots:
    """A live node and the number of actors it takes."""

    node_id: str
    address: str
    cpus: int
    actors: int


class RayCluster:
    """A connection to a Ray cluster and its live nodes.

    ``address`` ``"auto"`` leaves discovery to ``ray.init()`` (``RAY_ADDRESS``, a cluster
    started with ``ray start`` on this host, else a new local instance); anything else is
    handed to ``ray.init(address=...)``. A process already connected (``ray.init`` called by
    the caller) is used as it is and left connected.
    """

    def __init__(self, address: str = "auto", workers_per_node: int | None = None) -> None:
        if workers_per_node is not None and workers_per_node < 1:
            raise ConfigError(f"--workers-per-node must be >= 1; got {workers_per_node}")
        self.ray = ray = import_ray()
        self.owned = not ray.is_initialized()
        if self.owned:
            _probe(address)
            try:
                ray.init(address=None if address in ("auto", "") else address,
                         include_dashboard=False, log_to_driver=True,
                         logging_level="WARNING", configure_logging=True)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if "version mismatch" in str(exc).lower():
                    # Ray refuses a driver whose Python or Ray differs from the cluster's.
                    raise ConfigError(f"the Ray cluster at {address!r} runs another Python or "
                                      f"Ray: {first}; install the same on every node") from None
                raise TargetError(f"cannot join the Ray cluster at {address!r}: {first}; "
                                  "check `ray status` or --ray") from None
        self.nodes = [_slots(n, workers_per_node) for n in ray.nodes() if n.get("Alive")]
        if not self.nodes:
            self.disconnect()
            raise TargetError("the Ray cluster has no live node with a CPU; check `ray status`")

    @property
    def n_actors(self) -> int:
        """Actors the cluster takes: the sum over nodes."""
        return sum(n.actors for n in self.nodes)

    def addresses(self) -> list[str]:
        """Every live node's address as Ray reports it."""
        return [n.address for n in self.nodes]

    def pool(self, cfgs: list[dict]) -> "RayPool":
        """A :class:`RayPool` of ``len(cfgs)`` actors, one per worker configuration."""
        return RayPool(self, cfgs)

    def disconnect(self) -> None:
        """``ray.shutdown()`` when this object connected (a local instance it started
        stops with it); a connection the caller made is left alone."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


def _probe(address: str) -> None:
    """One TCP connect to an explicit ``host:port`` (or ``ray://host:port``) address: Ray
    itself retries an unreachable GCS for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return                                  # "auto" or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()
    except OSError as exc:
        raise TargetError(f"cannot reach the Ray cluster at {address}: "
                          f"{exc.strerror or exc}; start it (`ray start --head`) or fix "
                          "--ray") from None


def _slots(node: dict, workers_per_node: int | None) -> NodeSlots:
    cpus = int(node.get("Resources", {}).get("CPU", 0))
    actors = workers_per_node if workers_per_node is not None else max(1, cpus - 1)
    return NodeSlots(node["NodeID"], node.get("NodeManagerAddress", "?"), cpus,
                     min(actors, cpus) if cpus else 0)


def check_versions(facts: list[dict]) -> None:
    """Every actor runs the driver's cpbench and Python (major.minor); else one line naming
    the first node that does not."""
    want = (__version__, ".".join(platform.python_version_tuple()[:2]))
    for f in facts:
        got = (f["cpbench_version"], ".".join(f["python_version"].split(".")[:2]))
        if got != want:
            raise ConfigError(
                f"Ray node {f['address']} ({f['hostname']}) runs cpbench {got[0]} on Python "
                f"{got[1]}, the driver cpbench {want[0]} on Python {want[1]}; install the same "
                "cpbench and Python on every node")


class RayPool(PoolReports):
    """The driver's side of a Ray replay; the interface of :class:`cpbench.replaying.pool.WorkerPool`.

    Raises ConfigError (version mismatch, not enough free CPUs) or TargetError (an actor
    failed to start); either way nothing it started is left running.
    """

    def __init__(self, cluster: RayCluster, cfgs: list[dict]) -> None:
        self.cluster, self.ray = cluster, cluster.ray
        self.n = len(cfgs)
        self.actors: list = []
        self.pg = None
        self.live: set[int] = set()
        self.progress: list[dict] = [{} for _ in range(self.n)]
        self.finals: list[dict | None] = [None] * self.n
        self.saturated: dict[int, dict] = {}
        self.lost: dict[int, str] = {}          # worker -> why, naming its node
        self.started = False
        self.planned = 0
        try:
            self._place()
            self.facts = self._get([_call(a, "facts") for a in self.actors], CALL_S, "facts")
            check_versions(self.facts)
            # One put per actor: its share travels as arrays, read zero-copy on its node.
            refs = [_call(a, "prepare", cfgs[w],
                          self.ray.put(plan_columns(load_plan(Path(cfgs[w]["plan"])))))
                    for w, a in enumerate(self.actors)]
            self._get(refs, READY_S, "plan hand-over")
        except BaseException:
            self.close(0.0)
            raise
        self.runs = [a.run.remote() for a in self.actors]
        self.live = set(range(self.n))
        self.polls = {w: _call(self.actors[w], "poll", POLL_S) for w in self.live}
        self.answered = {w: time.monotonic() for w in self.live}
        self.clocks: dict[str, ClockOffset] = {}

    # -- setting up ------------------------------------------------------------------------
    def _place(self) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        ray = self.ray
        self.pg = placement_group([{"CPU": 1}] * self.n, strategy="SPREAD",
                                  name=f"cpbench-{os.getpid()}")
        try:
            ray.get(self.pg.ready(), timeout=READY_S)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"the Ray cluster could not place {self.n} dispatcher actors "
                              f"(one CPU each) in {READY_S:g} s; lower --workers-per-node or "
                              "free CPUs") from None
        # run() takes the default group's one thread; every other call goes to "control" (see
        # _call), so polls and stops are served while the loop runs.
        remote = ray.remote(concurrency_groups={"control": 2})(DispatchActor)
        for w in range(self.n):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=w)
            self.actors.append(remote.options(
                num_cpus=1, scheduling_strategy=strategy, max_restarts=0).remote(w, self.n))

    def _get(self, refs: list, timeout_s: float, what: str) -> list:
        ray = self.ray
        try:
            return ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TargetError(f"Ray actors did not answer ({what}) in {timeout_s:g} s") \
                from None
        except ray.exceptions.RayActorError as exc:
            raise TargetError(f"a Ray dispatcher actor died during {what}: "
                              f"{str(exc).splitlines()[0]}") from None

    # -- the WorkerPool interface ----------------------------------------------------------
    def wait_ready(self, timeout_s: float = READY_S) -> None:
        """Block until every actor is connected, then estimate each node's clock offset."""
        pending = set(range(self.n))
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TargetError(f"Ray dispatcher actors did not get ready in {timeout_s:g} s")
            for w, msgs in self._answers(0.1):
                for kind, payload in msgs:
                    if kind == "error":
                        raise TargetError(payload)
                    if kind == "ready":
                        self.planned += int(payload)
                        pending.discard(w)
            if self.lost:
                w, why = next(iter(self.lost.items()))
                raise TargetError(f"Ray dispatcher actor {w} exited during start-up: {why}")
        self._estimate_clocks()

    def _estimate_clocks(self) -> None:
        # Round trips over every actor of a node, interleaved; the node's offset comes from
        # its minimum-RTT sample (cpbench.replaying.clock).
        samples: dict[str, list[ClockSample]] = {}
        for _ in range(CLOCK_ROUNDS):
            for w, actor in enumerate(self.actors):
                t_send = time.monotonic_ns()
                remote = self._get([_call(actor, "clock_ns")], CALL_S, "clock")[0]
                samples.setdefault(self.facts[w]["node_id"], []).append(
                    ClockSample(t_send, int(remote), time.monotonic_ns()))
        self.clocks = {node: estimate_offset(s) for node, s in samples.items()}

    def start(self, start_ns: int) -> None:
        """Release every actor at the driver's ``start_ns``, each on its own node's clock."""
        self.started = True
        for w in self.live:
            offset = self.clocks[self.facts[w]["node_id"]]
            _call(self.actors[w], "start", offset.to_remote(start_ns))

    def stop(self) -> None:
        """Ask every live actor to stop scheduling (fire and forget: never waits)."""
        for w in self.live:
            _call(self.actors[w], "stop")

    def pump(self, timeout_s: float, on_rows) -> None:
        """Handle what the actors sent within ``timeout_s``; rows go to ``on_rows``."""
        for w, msgs in self._answers(timeout_s):
            for kind, payload in msgs:
                if kind == "error":
                    self._lose(w, payload)
                else:
                    self.handle(w, kind, payload, on_rows)

    def _answers(self, timeout_s: float):
        """``(worker, messages)`` for each poll answered within ``timeout_s``; the next poll
        goes out at once. A dead actor, or one silent past SILENT_S, is lost."""
        ray = self.ray
        refs = {self.polls[w]: w for w in self.live}
        if not refs:
            return
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout_s)
        if ready:
            rest = [r for r in refs if r not in ready]
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0] if rest else []
        now = time.monotonic()
        for ref in ready:
            w = refs[ref]
            try:
                msgs = ray.get(ref)
            except ray.exceptions.RayError as exc:   # the actor, its node or its answer lost
                self._lose(w, f"actor died ({type(exc).__name__})")
                continue
            self.answered[w] = now
            if not any(kind == "done" for kind, _ in msgs):
                self.polls[w] = _call(self.actors[w], "poll", POLL_S)
            yield w, msgs
        for w in list(self.live):
            if now - self.answered[w] > SILENT_S:
                self._lose(w, f"no answer in {SILENT_S:g} s")

    def _lose(self, w: int, why: str) -> None:
        f = self.facts[w]
        self.lost[w] = f"worker {w} on node {f['address']} ({f['hostname']}, " \
                       f"{f['node_id'][:12]}): {why}"
        self.live.discard(w)
        if self.started:
            self.stop()             # a lost node ends the run: the others stop scheduling

    def close(self, grace_s: float = 5.0) -> None:
        """Wait up to ``grace_s`` for the loops to end, then kill every actor, remove the
        placement group and disconnect (when this run connected)."""
        ray = self.ray
        runs = getattr(self, "runs", [])
        if runs and grace_s > 0:
            ray.wait(runs, num_returns=len(runs), timeout=grace_s)
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:               # already gone: nothing to stop
                pass
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group
            remove_placement_group(self.pg)
        self.cluster.disconnect()

    # -- what the run records --------------------------------------------------------------
    def cluster_facts(self) -> dict:
        """The ``cluster`` block of the run (summary.json and manifest.json): per node its
        address, versions, CPUs, workers and clock offset."""
        nodes: dict[str, dict] = {}
        for w, f in enumerate(self.facts):
            node = nodes.setdefault(f["node_id"], {
                "node_id": f["node_id"], "address": f["address"], "hostname": f["hostname"],
                "cpus": f["cpus"], "cpbench_version": f["cpbench_version"],
                "python_version": f["python_version"], "ray_version": f["ray_version"],
                "workers": []})
            node["workers"].append(w)
        ray_cpus = {n.node_id: n.cpus for n in self.cluster.nodes}
        for node in nodes.values():
            node["ray_cpus"] = ray_cpus.get(node["node_id"])   # Ray's logical CPU count
            node["actors"] = len(node["workers"])
            clock = self.clocks.get(node["node_id"])
            node["clock"] = clock.as_dict() if clock else None
        return {"ray_version": self.ray.__version__, "nodes": list(nodes.values())}


def _call(actor, method: str, *args):
    """``actor.method.remote(*args)`` in the ``control`` concurrency group."""
    return getattr(actor, method).options(concurrency_group="control").remote(*args)
