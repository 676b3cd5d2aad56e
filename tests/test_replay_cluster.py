"""The Ray pool's pieces that need no cluster: the plan through the object store's form,
the actor's outbox, per-node actor counts."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from cpbench.replaying.plan import COLUMNS, load_plan
from cpbench.replaying.cluster import DispatchActor, _Outbox, _slots, plan_columns
from cpbench.replaying.planning import build_plan, select_rows


def _table(n: int) -> pa.Table:
    return pa.table({
        "arrival_ns": pa.array(np.arange(n, dtype=np.int64) * 1_000_000),
        "kind": pa.array(["chat", "embedding"] * (n // 2)).dictionary_encode(),
        "model": pa.array(["m1", "m2", "m1", "m3"] * (n // 4)).dictionary_encode(),
        "priority": pa.array(["HIGH", "LOW"] * (n // 2)).dictionary_encode(),
        "input_tokens": pa.array([5] * n, pa.int32()),
        "output_tokens": pa.array([3, None] * (n // 2), pa.int32()),
        "batch_size": pa.array([1, 4] * (n // 2), pa.int16()),
        "slo_ttft_ms": pa.array([None] * n, pa.float64()),
        "slo_e2e_ms": pa.array([None] * n, pa.float64()),
        "prompt": pa.array(["héllo", None, "", "x" * 50] * (n // 4)),
    })


def test_a_plan_survives_the_object_store_form_and_the_actors_folder():
    table = _table(40)
    plan = build_plan(table, select_rows(table, warmup_requests=3), 1, 3)
    actor = DispatchActor(1, 3)
    actor.prepare({"url": "http://127.0.0.1:1"}, plan_columns(plan))
    back = load_plan(Path(actor.cfg["plan"]))
    for name in COLUMNS:
        assert np.array_equal(getattr(back, name), getattr(plan, name)), name
    assert back.models == plan.models
    assert [back.prompts[j] for j in range(len(back))] == \
        [plan.prompts[j] for j in range(len(plan))]
    assert actor.cfg["url"] == "http://127.0.0.1:1"
    shutil.rmtree(actor.folder)


def test_the_outbox_answers_at_once_with_messages_and_empty_after_the_wait():
    box = _Outbox()
    assert box.take(0.01) == []
    box.send(("rows", 1))
    box.send(("progress", 2))
    assert box.take(10) == [("rows", 1), ("progress", 2)]
    threading.Timer(0.05, box.send, args=(("done", 3),)).start()
    assert box.take(10) == [("done", 3)]            # woken by the send, not the timeout


def test_actors_per_node_default_to_cpus_minus_one():
    node = {"NodeID": "n1", "NodeManagerAddress": "127.0.0.1", "Resources": {"CPU": 8.0}}
    assert _slots(node, None).actors == 7
    assert _slots({**node, "Resources": {"CPU": 1.0}}, None).actors == 1
    assert _slots(node, 3).actors == 3
    assert _slots(node, 20).actors == 8              # a bundle needs a CPU of its own
    assert _slots({**node, "Resources": {}}, None).actors == 0      # no CPU: no actor


def test_with_realtime_each_poll_thread_asks_for_sched_fifo_once(monkeypatch):
    # A normal-priority poll thread preempted while holding the GIL would delay the real-time
    # loop's sends: with --realtime the poll threads are real-time too.
    import cpbench.replaying.child
    asked = []
    monkeypatch.setattr(cpbench.replaying.child, "set_realtime", lambda prio: asked.append(prio))
    actor = DispatchActor(0, 1)
    actor.cfg = {"realtime": 3}
    actor.poll(0.0)
    actor.poll(0.0)
    other = threading.Thread(target=actor.poll, args=(0.0,))
    other.start()
    other.join(10)
    assert asked == [3, 3]                          # once per thread
    actor.cfg = {"realtime": 0}
    actor.realtime_threads.clear()
    actor.poll(0.0)
    assert asked == [3, 3]
    shutil.rmtree(actor.folder)
