"""tools/sched_waits.py: run-queue waits and on-CPU stretches from ``perf script`` text,
pinned on a hand-built trace whose answers are worked out below."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import sched_waits  # noqa: E402  (tools/ is not a package)


def switch(t: float, cpu: int, prev: tuple[str, int, int], state: str,
           nxt: tuple[str, int]) -> str:
    """A ``perf script -F pid,tid,cpu,time,event,trace`` line for a switch from ``prev``
    (command, tgid, tid) to ``nxt`` (command, tid); ``t`` in ms."""
    comm, tgid, tid = prev
    return (f"{tgid:>7}/{tid:<7} [{cpu:03d}] {t / 1e3:.6f}: sched:sched_switch: "
            f"prev_comm={comm} prev_pid={tid} prev_prio=120 prev_state={state} ==> "
            f"next_comm={nxt[0]} next_pid={nxt[1]} next_prio=120")


def wakeup(t: float, cpu: int, comm: str, tid: int, waker: int = 0) -> str:
    return (f"{waker:>7}/{waker:<7} [{cpu:03d}] {t / 1e3:.6f}: sched:sched_wakeup: "
            f"comm={comm} pid={tid} prio=120 target_cpu={cpu:03d}")


W0, W1, OUTBOX = ("cpbench-w0", 100, 100), ("cpbench-w1", 200, 200), ("cpbench-w0", 100, 101)
NGINX, PARENT, IDLE0 = ("nginx", 300, 300), ("python", 400, 400), ("swapper/0", 0, 0)

# ms  cpu0                                        cpu1
#  0  w0 runs                                     nginx runs
#  1  w0 preempted by the parent: waits           .
#  3  parent -> w0 (waited 2.0 ms behind parent)  .
#  4  w0 sleeps -> idle                           .
#  5  .                                           w1 woken here, nginx keeps the cpu
#  5.6 .                                          nginx -> w1 (waited 0.6 ms behind server)
#  6  outbox (w0's thread) woken, idle -> outbox  .
#  6.2 outbox sleeps -> idle (stretch 0.2 ms)     .
#  9  .                                           w1 sleeps -> nginx (stretch 3.4 ms)
LINES = [
    "some header line perf prints",
    switch(0.0, 0, IDLE0, "R", ("cpbench-w0", 100)),
    switch(0.0, 1, ("swapper/1", 0, 0), "R", ("nginx", 300)),
    switch(1.0, 0, W0, "R+", ("python", 400)),
    switch(3.0, 0, PARENT, "S", ("cpbench-w0", 100)),
    switch(4.0, 0, W0, "S", ("swapper/0", 0)),
    wakeup(5.0, 1, "cpbench-w1", 200, waker=300),
    switch(5.6, 1, NGINX, "R", ("cpbench-w1", 200)),
    wakeup(6.0, 0, "cpbench-w0", 101),
    switch(6.0, 0, IDLE0, "R", ("cpbench-w0", 101)),
    switch(6.2, 0, OUTBOX, "S", ("swapper/0", 0)),
    switch(9.0, 1, W1, "S", ("nginx", 300)),
    "    300/300     [001] 9.500000: sched:sched_stat_runtime: comm=nginx pid=300 ...",
]


def test_parse_reads_switches_and_wakeups_and_skips_the_rest():
    events, comms = sched_waits.parse(LINES)
    assert len(events) == 11
    assert [type(e).__name__ for e in events[:3]] == ["Switch", "Switch", "Switch"]
    first = events[2]                                      # w0 preempted at 1 ms
    assert (first.t, first.cpu, first.prev_tgid, first.prev, first.prev_runnable,
            first.next) == (0.001, 0, 100, 100, True, 400)
    assert comms[400] == "python" and comms[101] == "cpbench-w0" and comms[300] == "nginx"
    assert comms[0] == "swapper/0"
    wake = events[5]                                       # w1 woken at 5 ms
    assert (type(wake).__name__, wake.t, wake.tid) == ("Wakeup", 0.005, 200)
    assert sched_waits.processes_named(events, comms, "cpbench-w") == {100, 200}


def test_waits_stretches_and_what_ran_meanwhile_are_exact():
    events, comms = sched_waits.parse(LINES)
    s = sched_waits.summarize(events, comms, {100, 200}, parent=400)
    # Stretches: w0 0-1 and 3-4 ms, outbox 6-6.2, w1 5.6-9: 1, 1, 0.2, 3.4 ms.
    assert s["stretches"] == 4 and s["stretches_over_0.5ms"] == 3
    assert s["on_cpu_ms"] == pytest.approx(5.6)
    assert s["stretch_us"]["max"] == pytest.approx(3400)
    assert s["stretch_us"]["p50"] == pytest.approx(1000)
    # Waits: w0 1-3 ms (preempted), w1 5-5.6 (woken), the outbox 6-6 (woken onto an idle cpu).
    assert s["waits"] == 3
    assert s["waits_over_0.5ms"] == 2 and s["wait_ms_over_0.5ms"] == pytest.approx(2.6)
    assert s["waits_over_1ms"] == 1 and s["wait_ms_over_1ms"] == pytest.approx(2.0)
    assert s["behind_ms"] == pytest.approx({"client": 0.0, "server": 0.6, "parent": 2.0,
                                            "idle": 0.0, "other": 0.0})


def test_a_window_keeps_what_begins_within_it_and_a_sleep_ends_a_stale_wait():
    events, comms = sched_waits.parse(LINES)
    s = sched_waits.summarize(events, comms, {100, 200}, parent=400, window=(0.0045, 0.010))
    assert s["stretches"] == 2 and s["waits"] == 2                  # from 5 ms on
    assert s["behind_ms"]["server"] == pytest.approx(0.6) and s["behind_ms"]["parent"] == 0
    # Without the parent named, its time counts as other work; a client of nobody: nothing.
    other = sched_waits.summarize(events, comms, {100, 200})
    assert other["behind_ms"]["other"] == pytest.approx(2.0)
    assert sched_waits.summarize(events, comms, set())["waits"] == 0
    # A wake-up seen while the task was still on its way to sleep is dropped at its switch
    # out, not counted as a wait until its next run.
    stale = [switch(0.0, 0, IDLE0, "R", ("cpbench-w0", 100)),
             wakeup(0.5, 0, "cpbench-w0", 100),
             switch(1.0, 0, W0, "S", ("swapper/0", 0)),
             switch(50.0, 0, IDLE0, "R", ("cpbench-w0", 100))]
    ev, cm = sched_waits.parse(stale)
    assert sched_waits.summarize(ev, cm, {100})["waits"] == 0


def test_no_perf_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sched_waits.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"^perf is not installed \(Debian: linux-perf\)$"):
        with sched_waits.SchedTrace(tmp_path):
            pass
    assert not list(tmp_path.iterdir())


def test_a_recorded_trace_sees_a_process_burn_its_cpu(tmp_path):
    # perf itself, where this host lets it record (root, or a low perf_event_paranoid).
    import subprocess
    import time

    try:
        with sched_waits.SchedTrace(tmp_path) as trace:
            burn = subprocess.run(
                [sys.executable, "-c", "import os, time\nend = time.process_time() + 0.2\n"
                 "while time.process_time() < end: pass\nprint(os.getpid())"],
                capture_output=True, text=True, check=True)
            time.sleep(0.1)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    events, comms = sched_waits.parse(trace.lines)
    s = sched_waits.summarize(events, comms, {int(burn.stdout)})
    assert s["stretches"] >= 1 and s["on_cpu_ms"] >= 200 * 0.95       # its 0.2 s of CPU
    assert not list(tmp_path.iterdir())                                 # perf.data removed
