"""The parent's side of the result rows: record batches, ``results.arrow``, the running summary.

Each worker hands over its packed rows (:meth:`cpbench._core.conn.RowBuffer.take_rows`) every
quarter second; :class:`ResultSink` turns them into Arrow record batches
(:func:`cpbench.results.rows_to_batch`), appends them to ``results.arrow`` and folds them into
the :class:`cpbench.summary.RunningSummary`. It does that in a thread of its own, named
``cpbench-fold``, at nice 19, while the parent's main thread reads the workers' pipes and
watches the run at the priority it was started with.

Why: a batch of 5,000 rows costs the parent about 3 ms of CPU in one go (0.7 ms to convert,
0.4 ms to write, 1.8 ms to fold, on the 2-core machine of docs/design.md), and at 32,000-40,000
req/s the workers' wake-ups waited behind it: the scheduler's events put 17-44 % of the
workers' run-queue waits over 0.5 ms behind the parent (docs/design.md, "Where the lag tail
at high rates goes"). At nice 19 the thread weighs 15 against a worker's 1,024, so a worker
that wakes takes the CPU from it rather than waiting out its slice, and it still always gets
a share, so it keeps up (what a run cost it is ``run.client.parent_cpu_s``). Measured there,
2 workers beside nginx, six interleaved runs a point against the fold on the main thread:
dispatch-lag p99 medians 1.08 -> 0.76 ms (chat, 32,000 req/s), 1.26 -> 0.63 ms (embeddings,
32,000), 1.85 -> 1.49 ms and 1.75 -> 1.33 ms at 40,000; lower in 18 of 24 pairs. The thread
at normal priority did not help; SCHED_IDLE helped as much, but three of its 112 runs had a
lag p99 near 20 ms, against one of 124 at normal priority and none of 68 at nice 19.

Lowering a thread's priority needs no privilege and raising it back does, which is why the
fold has a thread of its own that ends with the run, rather than the main thread being
lowered. At most :data:`BACKLOG_BATCHES` batches wait for it: past that :meth:`put` blocks,
the workers' pipes fill and their outbox threads (:class:`cpbench.replaying.child.Outbox`)
hold the rows and send them on as the fold catches up; no row is lost.
"""
from __future__ import annotations

import os
import queue
import sys
import threading

from cpbench.errors import OutputError
from cpbench.replaying.timer import name_thread
from cpbench.results import ResultsWriter, rows_to_batch
from cpbench.summary import RunningSummary

BACKLOG_BATCHES = 32        # about 4 s of rows at 40,000 req/s (a 5,000-row batch is 0.76 MB)
FOLD_NICE = 19              # the lowest: a scheduler weight of 15 against a worker's 1,024
_END = object()


def lower_priority(nice: int = FOLD_NICE) -> int | None:
    """Give the calling thread (on Linux a thread has a nice value of its own) the ``nice``
    value; returns the value it has then, or None where threads have none of their own."""
    if not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None


class ResultSink:
    """Packed rows in (:meth:`put`, from any one thread), batches written and folded in the
    ``cpbench-fold`` thread.

    Parameters
    ----------
    writer
        Where the batches go (``results.arrow``); :meth:`close` closes it.
    running
        The summary each written batch is folded into.
    models
        The trace's models in dictionary-code order (:func:`rows_to_batch`).
    backlog
        How many batches may wait for the thread before :meth:`put` blocks.
    """

    def __init__(self, writer: ResultsWriter, running: RunningSummary, models: list[str], *,
                 backlog: int = BACKLOG_BATCHES) -> None:
        self.writer, self.running, self.models = writer, running, models
        self.failed: OutputError | None = None    # the first write that failed (full disk)
        self.nice: int | None = None              # the thread's (lower_priority)
        self._queue: queue.Queue = queue.Queue(maxsize=backlog)
        self._crash: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpbench-fold", daemon=True)
        self._thread.start()
        self._started.wait()

    @property
    def native_id(self) -> int | None:
        """The fold thread's kernel thread id (for ``/proc``, ``perf`` and tests)."""
        return self._thread.native_id

    @property
    def broken(self) -> bool:
        """A write failed or the fold raised: nothing more is written, the run should stop."""
        return self.failed is not None or self._crash is not None

    def put(self, worker: int, packed: tuple) -> None:
        """Queue worker ``worker``'s packed rows; blocks while :data:`BACKLOG_BATCHES` wait."""
        self._queue.put((worker, packed))

    def close(self) -> None:
        """Write and fold everything queued, end the thread, and close ``results.arrow``:
        complete, or after a failed write without its footer, keeping the batches before it
        (:attr:`failed` says which; the caller raises it). An unexpected error in the thread
        is raised here, after the file is closed with every batch before it."""
        self._queue.put(_END)
        self._thread.join()
        if self.failed is not None:
            self.writer.abandon()
        else:
            self.writer.close()
        if self._crash is not None:
            raise self._crash

    def _run(self) -> None:
        name_thread("cpbench-fold")
        self.nice = lower_priority()
        self._started.set()
        while (item := self._queue.get()) is not _END:
            if self.broken:
                continue                    # after a failed write: drain, write nothing more
            worker, packed = item
            try:
                batch = rows_to_batch(packed, self.models, worker)
                self.writer.write(batch)
                self.running.add(batch)
            except OutputError as exc:
                self.failed = exc
            except BaseException as exc:    # noqa: BLE001 - raised again by close()
                self._crash = exc
