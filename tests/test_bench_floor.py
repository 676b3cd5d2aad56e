"""tools/bench_floor.py's C sender (tools/bench/floor.c) is a fair reference only if it sends
what ``cpbench replay`` sends and reads every answer to its end: both pinned here against the
test server, with chunked SSE (also in 7-byte writes) and Content-Length bodies."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cpbench.trace import read_trace
from support import run_cli
from support.faulty_server import FaultyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bench_floor  # noqa: E402  (tools/ is not a package)

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


@pytest.fixture(scope="module")
def floor_exe(tmp_path_factory) -> Path:
    return bench_floor.build_floor(tmp_path_factory.mktemp("floor"))


def probe(tmp_path: Path, kind: str, bodies: str, model: str = "bench", rate: float = 50.0,
          seconds: float = 0.5) -> Path:
    """The probe trace bench_floor replays (``make_trace``, realistic bodies on demand), with
    every row's model set to ``model`` (the test server's behaviour)."""
    import pyarrow as pa

    from cpbench.trace import write_trace
    trace = tmp_path / f"{kind}-{bodies}.arrow"
    bench_floor.make_trace(trace, kind, rate, seconds, bench_floor.SEED)
    if bodies == "realistic":
        trace = bench_floor.make_realistic_trace(trace, tmp_path / f"{kind}-real.arrow", kind)
    table = read_trace(trace)
    i = table.schema.get_field_index("model")
    table = table.set_column(i, "model", pa.array([model] * table.num_rows))
    write_trace(table, trace, metadata={"generator": "tests/test_bench_floor.py"})
    return trace


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind,model", [("chat", "ok"), ("chat", "split"),
                                        ("embedding", "ok"), ("embedding", "split")])
def test_floor_sends_on_schedule_and_reads_every_answer(tmp_path, floor_exe, kind, model,
                                                        threads):
    """One thread, a sending and a reading thread (--floor-threads 2), or one thread timed by
    epoll_pwait2 with no timerfd (3)."""
    trace = probe(tmp_path, kind, "small", model, rate=300.0, seconds=1.0)
    arrivals = np.sort(read_trace(trace).column("arrival_ns").to_numpy())
    with FaultyServer() as server:
        port = int(server.url.rsplit(":", 1)[1])
        request = tmp_path / "request.http"
        request.write_bytes(bench_floor.request_bytes(trace, server.url))
        r = bench_floor.run_floor(floor_exe, port, trace, request, 4, tmp_path / "times.bin",
                                  threads=threads)
        assert server.requests == r["requests"] == len(arrivals)
        assert {s["body"]["model"] for s in server.seen} == {model}
    n = r["requests"]
    assert r["answers"] == n and r["errors"] == 0
    if model == "ok":                            # (7-byte writes keep many answers in flight)
        assert r["connections"] < n / 5          # finished connections are reused
    times = np.fromfile(tmp_path / "times.bin.0", dtype=np.int64)     # process 0 of 1
    intended, sent = times[:n], times[n:]
    assert np.array_equal(intended - intended[0], arrivals - arrivals[0])   # the trace's times
    assert np.all(sent >= intended)
    # The schedule's span on CLOCK_MONOTONIC, to window a perf trace (--sched).
    assert r["window_ns"][0] == intended[0] and r["window_ns"][1] == intended[-1]
    assert r["cpu_us_per_request"] > 0 and r["lag_p50_us"] >= 0
    gaps = np.diff(np.sort(sent)).astype(np.float64)
    assert r["sent_cv"] == pytest.approx(gaps.std() / gaps.mean())
    assert isinstance(r["held"], bool)


def test_held_is_the_ladders_three_conditions():
    """At most 1 % short, lag p99 at most 1 ms, CV within 0.1 + 3/sqrt(n) of 1: each bound is
    inclusive, and missing any one of them is not held."""
    held, n = bench_floor.held, 10_000            # 3/sqrt(n) = 0.03: the CV band is [0.87, 1.13]
    assert held(0.01, 1.0, 1.13, n) and held(0.0, 0.2, 0.87, n)
    assert not held(0.0101, 0.2, 1.0, n)
    assert not held(0.0, 1.001, 1.0, n)
    assert not held(0.0, 0.2, 1.131, n) and not held(0.0, 0.2, 0.869, n)
    assert held(0.0, 0.2, 1.39, 100) and not held(0.0, 0.2, 1.41, 100)    # 0.1 + 0.3


@pytest.mark.parametrize("kind,bodies", [("chat", "small"), ("embedding", "realistic")])
def test_floor_request_is_the_request_cpbench_replay_sends(tmp_path, kind, bodies):
    trace = probe(tmp_path, kind, bodies)
    with FaultyServer() as server:
        # bench_floor, like bench_replay, sends batches under BATCH_PATH (nginx's 16 vectors)
        url = server.url + (bench_floor.BATCH_PATH if bodies == "realistic" else "")
        done = run_cli("replay", trace, "--url", url, "-o", tmp_path / "out", "--no-report",
                       "--workers", "1")
        assert done.returncode == 0, done.stderr
        first = next(s for s in server.seen if '"r0 ' in json.dumps(s["body"]))
    mine = bench_floor.request_bytes(trace, url)
    head, _, body = mine.partition(b"\r\n\r\n")
    assert first["head"] == head + b"\r\n\r\n"
    assert first["body"] == json.loads(body)
    assert len(body) == int(first["headers"]["Content-Length"])


def test_floor_processes_share_one_schedule(tmp_path, floor_exe):
    """--workers 2: each process sends every 2nd arrival, all counted from one start, so the
    merged intended times are the trace's."""
    trace = probe(tmp_path, "chat", "small", rate=300.0, seconds=1.0)
    arrivals = np.sort(read_trace(trace).column("arrival_ns").to_numpy())
    with FaultyServer() as server:
        request = tmp_path / "request.http"
        request.write_bytes(bench_floor.request_bytes(trace, server.url))
        r = bench_floor.run_floor(floor_exe, int(server.url.rsplit(":", 1)[1]), trace, request,
                                  2, tmp_path / "times.bin", workers=2)
        assert server.requests == r["requests"] == r["answers"] == len(arrivals)
    parts = [np.fromfile(tmp_path / f"times.bin.{w}", dtype=np.int64) for w in (0, 1)]
    assert [len(p) // 2 for p in parts] == [len(arrivals[0::2]), len(arrivals[1::2])]
    intended = np.sort(np.concatenate([p[:len(p) // 2] for p in parts]))
    assert np.array_equal(intended - intended[0], arrivals - arrivals[0])
