"""The parent's result sink (cpbench.replaying.sink): rows written and folded in a nice-19
thread of their own, in order, with a failed write or a broken batch kept for the end."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from cpbench.errors import OutputError
from cpbench.replaying.rows import ROW_FIELDS, RowBuffer
from cpbench.replaying.sink import FOLD_NICE, ResultSink
from cpbench.results import ResultsWriter, read_results, rows_to_batch
from cpbench.summary import RunningSummary
from support import readable_batches, wait_until

MS = 1_000_000
RUN = {"trace": "t.arrow", "workers": 2}


def packed(first: int, n: int, *, error: bool = False) -> tuple:
    """``n`` packed rows numbered from ``first``: chat successes 1 ms apart, each row's TTFT
    and end-to-end latency growing with its number; with ``error``, HTTP 503s."""
    buf = RowBuffer()
    for i in range(first, first + n):
        v = {"row": i, "kind": 0, "priority": 1, "model": 0, "intended_ns": i * MS,
             "sent_ns": i * MS + 20_000, "first_byte_ns": i * MS + 40_000 + i * 1_000,
             "first_token_ns": i * MS + 50_000 + i * 1_000, "done_ns": i * MS + 90_000 + i * 2_000,
             "input_tokens": 32, "output_tokens": 16, "batch_size": 1, "status": 200,
             "error_class": -1, "itl_mean_ns": 3_000, "itl_max_ns": 7_000, "warmup": 0,
             "slo_ttft_ms": 1.0, "slo_e2e_ms": 10.0}
        if error:
            v.update(status=503, error_class=3, first_byte_ns=-1, first_token_ns=-1)
        buf.append(tuple(v[f] for f in ROW_FIELDS), "HTTP 503: busy" if error else None)
    return buf.take_rows()


def test_rows_are_written_and_folded_in_order_as_the_main_thread_would(tmp_path):
    writer = ResultsWriter(tmp_path / "results.arrow", RUN)
    running = RunningSummary()
    sink = ResultSink(writer, running, ["m"])
    parts = [(0, packed(0, 40)), (1, packed(40, 25, error=True)), (0, packed(65, 35))]
    for worker, rows in parts:
        sink.put(worker, rows)
    sink.close()
    assert not sink.broken and sink.failed is None
    table = read_results(tmp_path / "results.arrow")
    assert table.column("row").to_pylist() == list(range(100))
    assert table.column("worker").to_pylist() == [0] * 40 + [1] * 25 + [0] * 35
    assert table.column("error_class").to_pylist()[40:65] == ["http_5xx"] * 25
    # The same batches folded here, in this thread, give the same summary, key for key.
    here = RunningSummary()
    for worker, rows in parts:
        here.add(rows_to_batch(rows, ["m"], worker))
    assert json.dumps(running.finish(run=dict(RUN)), sort_keys=True) == \
        json.dumps(here.finish(run=dict(RUN)), sort_keys=True)


def _task_comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value")
def test_the_fold_thread_is_named_and_lowered_and_the_caller_keeps_its_priority(tmp_path):
    before = os.getpriority(os.PRIO_PROCESS, 0)
    writer = ResultsWriter(tmp_path / "results.arrow", RUN)
    sink = ResultSink(writer, RunningSummary(), ["m"])
    try:
        assert sink.nice == FOLD_NICE == 19 and _nice(sink.native_id) == 19
        assert _task_comm(sink.native_id) == "cpbench-fold"
        assert os.getpriority(os.PRIO_PROCESS, 0) == before   # only the fold thread is lowered
        assert os.sched_getscheduler(sink.native_id) == os.SCHED_OTHER
    finally:
        sink.close()


class FailingWriter(ResultsWriter):
    """A ResultsWriter whose ``fail_at``-th write (from 1) fails as a full disk does."""

    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path, RUN)
        self.fail_at, self.calls = fail_at, 0

    def write(self, batch) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OutputError(f"cannot write {self.path}: No space left on device")
        super().write(batch)


def test_a_failed_write_is_kept_and_nothing_after_it_is_written_or_folded(tmp_path):
    writer = FailingWriter(tmp_path / "results.arrow", fail_at=2)
    running = RunningSummary()
    sink = ResultSink(writer, running, ["m"])
    for k in range(4):
        sink.put(0, packed(k * 10, 10))
    sink.close()                                    # a failed write is not raised here
    assert sink.broken and "No space left on device" in str(sink.failed)
    assert writer.calls == 2                        # the batches after it were drained unread
    assert running.finish(run=dict(RUN))["requests"]["completed"] == 10
    # results.arrow is closed (abandoned: with a footer only if the disk takes one) and
    # holds the batch before the failure, nothing after it.
    assert readable_batches(tmp_path / "results.arrow").column("row").to_pylist() == \
        list(range(10))


def test_a_broken_batch_is_raised_at_close_after_the_batches_before_it(tmp_path):
    writer = ResultsWriter(tmp_path / "results.arrow", RUN)
    sink = ResultSink(writer, RunningSummary(), ["m"])
    sink.put(0, packed(0, 5))
    n, ints, floats, details = packed(5, 5)
    sink.put(0, (n + 1, ints, floats, details))     # says one row more than it holds
    sink.put(0, packed(10, 5))
    assert wait_until(lambda: sink.broken)
    with pytest.raises(ValueError):
        sink.close()
    # The file is complete (footer written) with the batch before the broken one.
    assert read_results(tmp_path / "results.arrow").column("row").to_pylist() == list(range(5))


class GatedWriter(ResultsWriter):
    """A ResultsWriter that holds each write until ``gate`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, RUN)
        self.gate, self.entered = threading.Event(), threading.Event()

    def write(self, batch) -> None:
        self.entered.set()
        self.gate.wait()
        super().write(batch)


def test_put_waits_once_the_backlog_is_full_and_no_row_is_lost(tmp_path):
    writer = GatedWriter(tmp_path / "results.arrow")
    sink = ResultSink(writer, RunningSummary(), ["m"], backlog=2)
    returned: list[int] = []

    def producer() -> None:
        for k in range(5):
            sink.put(0, packed(k * 3, 3))
            returned.append(k)

    thread = threading.Thread(target=producer)
    thread.start()
    assert writer.entered.wait(10)
    # The fold holds batch 0; batches 1 and 2 fill the backlog; the put of batch 3 waits.
    assert wait_until(lambda: returned == [0, 1, 2])
    time.sleep(0.2)
    assert returned == [0, 1, 2]
    writer.gate.set()
    thread.join(10)
    assert returned == [0, 1, 2, 3, 4]
    sink.close()
    assert read_results(tmp_path / "results.arrow").column("row").to_pylist() == list(range(15))

