"""What the tests share: trace builders, the CLI as a child process, result readers, checks.

Test modules import from here (and from ``support.faulty_server``, the one fault-injecting
server, and ``support.result_dirs``, hand-built result directories), never from each other.
"""
from __future__ import annotations

import contextlib
import json
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from support.faulty_server import TOKENS

ROOT = Path(__file__).resolve().parents[2]


def trace_table(models: list[str], kinds: list[str], gap_ms: float = 2.0, *,
                priorities: list[str] | None = None, embed_batch: int = 2,
                input_tokens: int = 6, output_tokens: int = TOKENS) -> pa.Table:
    """A trace table, row ``i`` of kind ``kinds[i]`` asking for model ``models[i]`` (the
    server's fault vocabulary), ``gap_ms`` apart; embeddings carry ``embed_batch`` inputs."""
    n = len(models)
    llm = [k != "embedding" for k in kinds]
    return pa.table({
        "arrival_ns": pa.array((np.arange(n) * gap_ms * 1e6).astype(np.int64)),
        "kind": pa.array(kinds).dictionary_encode(),
        "model": pa.array(models).dictionary_encode(),
        "input_tokens": pa.array([input_tokens] * n, pa.int32()),
        "output_tokens": pa.array([output_tokens if x else None for x in llm], pa.int32()),
        "batch_size": pa.array([1 if x else embed_batch for x in llm], pa.int16()),
        "priority": pa.array(priorities or ["NORMAL"] * n).dictionary_encode(),
        "slo_ttft_ms": pa.array([None] * n, pa.float32()),
        "slo_e2e_ms": pa.array([None] * n, pa.float32()),
        "prompt": pa.array([None] * n, pa.string()),
    })


def write_table_trace(path: Path, *args, **kwargs) -> Path:
    """:func:`trace_table` written to ``path`` as a trace file."""
    from cpbench.trace import write_trace

    write_trace(trace_table(*args, **kwargs), path,
                metadata={"generator": "tests.support", "seed": None, "source": "synthetic"})
    return path


def readable_batches(path: Path) -> pa.Table:
    """The record batches of an Arrow IPC file that may lack its footer (cut short)."""
    data = path.read_bytes()
    assert data.startswith(b"ARROW1")
    reader = pa.ipc.open_stream(pa.BufferReader(data[8:]))
    batches = []
    try:
        for batch in reader:
            batches.append(batch)
    except (pa.ArrowInvalid, OSError):
        pass                                    # the torn last batch
    return pa.Table.from_batches(batches, schema=reader.schema)


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passed (a bound, not an assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def wait_ready_file(proc: subprocess.Popen, ready: Path, timeout_s: float = 30.0) -> dict:
    """What a child (``cpbench sim``, ``record capture``) wrote to its ``--ready-file`` once it
    listens; the test fails, with the child's output, if it exits or the bound passes first."""
    if not wait_until(lambda: ready.exists() or proc.poll() is not None, timeout_s) \
            or not ready.exists():
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{ready.name} never appeared: {out!r} {err!r}")
    return json.loads(ready.read_text())


@contextlib.contextmanager
def running_fleet(ready: Path, n: int = 2, *extra: str):
    """``cpbench sim --fleet n`` (1 ms decode steps) for the ``with`` block: yields the
    process and what it wrote to its ready file (``urls``, ``pid``); stopped by its pid."""
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--fleet", str(n),
                             "--port", "0", "--ready-file", str(ready), "--decode-step-ms", "1",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, wait_ready_file(proc, ready)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def replay_for_report(out: Path) -> Path:
    """A short real replay of a shipped trace against the embedded sim, without its report."""
    proc = subprocess.run([sys.executable, "-m", "cpbench", "replay",
                           str(ROOT / "traces" / "light.arrow"), "--duration", "2", "--speed",
                           "4", "--workers", "1", "--quiet", "--no-report", "-o", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def write_trace_for(path, models: list[str], n: int, gap_ms: float, *, embed_every: int = 4,
                    output_tokens: int = TOKENS, llm_model: str | None = None,
                    embed_model: str | None = None, prompt: str | None = None):
    """A trace of ``n`` requests ``gap_ms`` apart; row ``i`` asks for ``models[i % len]``
    (or the fixed ``llm_model``/``embed_model``); every ``embed_every``-th row is an
    embedding with 2 inputs (0: none), the rest chat; ``prompt`` is every row's literal prompt
    (None: built from the corpus)."""
    from cpbench.trace import write_trace

    kinds = ["embedding" if embed_every and i % embed_every == 0 else "chat" for i in range(n)]
    names = []
    for i, k in enumerate(kinds):
        fixed = embed_model if k == "embedding" else llm_model
        names.append(fixed or models[i % len(models)])
    table = pa.table({
        "arrival_ns": pa.array((np.arange(n) * gap_ms * 1e6).astype(np.int64)),
        "kind": pa.array(kinds), "model": pa.array(names),
        "input_tokens": pa.array([8] * n, pa.int32()),
        "output_tokens": pa.array([None if k == "embedding" else output_tokens for k in kinds],
                                  pa.int32()),
        "batch_size": pa.array([2 if k == "embedding" else 1 for k in kinds], pa.int16()),
        "priority": pa.array([("HIGH", "NORMAL", "LOW")[i % 3] for i in range(n)]),
        "prompt": pa.array([prompt] * n, pa.string()),
    })
    write_trace(table, path, metadata={"generator": "tests.support", "seed": 0})
    return path


def run_cli(*argv, timeout_s: float = 120, env: dict | None = None, cwd=None):
    """``python -m cpbench ARGV`` as a child process; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "cpbench", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd)


def read_run(out) -> tuple:
    """``(results table, summary dict)`` of a results directory, read as every cpbench reader
    reads one (:func:`cpbench.resultdir.read_result_dir`)."""
    from cpbench.resultdir import read_result_dir

    found = read_result_dir(out, need=("summary.json", "results.arrow"))
    return found.results, found.summary


def check_accounting(table, summary: dict, n_expected: int | None = None) -> dict:
    """Every request in ``results.arrow`` exactly once, and the summary agreeing with it.

    Returns ``{error_class: count}`` (None for successes) from the results file.
    """
    from collections import Counter

    rows = table.column("row").to_pylist()
    assert len(rows) == len(set(rows)), "a request appears twice in results.arrow"
    if n_expected is not None:
        assert sorted(rows) == list(range(n_expected)), "requests missing from results.arrow"
    classes = Counter(table.column("error_class").to_pylist())
    req = summary["requests"]
    assert req["sent"] == table.num_rows
    errors = table.num_rows - classes.get(None, 0)
    assert req["errors"] == errors
    assert req["completed"] == classes.get(None, 0)
    by_class = {k: v for k, v in (req.get("by_error_class") or {}).items() if v}
    assert by_class == {k: v for k, v in classes.items() if k is not None}
    return dict(classes)


def check_report_shows(out, classes: dict) -> None:
    """The report lists each error class with its count: report.html and report.md when the
    run wrote them, else the Markdown report rendered here from the results directory."""
    out = Path(out)
    texts = []
    if (out / "report.html").exists():
        texts = [(out / "report.html").read_text(), (out / "report.md").read_text()]
    else:
        from cpbench.reporting.load import load_run as load_report_run
        from cpbench.reporting.markdown import render_markdown
        texts = [render_markdown([load_report_run(out)])]
    for text in texts:
        for cls, n in classes.items():
            if cls is not None:
                md = cls.replace("_", "\\_")
                assert f"{cls}: {n:,}" in text or f"{md}: {n:,}" in text, (cls, n)


def custom_slices() -> bool:
    """Whether this kernel lets a normal thread choose its time slice (Linux 6.12+, on the
    machines ``cpbench.replaying.timer`` knows the syscall numbers of)."""
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return (major, minor) >= (6, 12) and platform.machine() in ("x86_64", "aarch64")
