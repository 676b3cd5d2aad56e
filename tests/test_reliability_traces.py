"""Bad traces through the real CLI: ``cpbench validate`` and ``cpbench replay`` reject each one
with a line that names the file, the column or row and the value, exit status 2, and no
traceback; a hypothesis property test mutates valid trace files (structure and bytes) and
checks that both commands accept or reject every mutant cleanly and agree with each other.

The commands run in a child Python process (``_Harness``) that calls ``cpbench.cli.main`` once
per file, so a crash inside pyarrow (a segfault on corrupt buffers) fails the test instead of
killing pytest, and a few cases also run as a plain ``python -m cpbench`` process.
``replay`` gets ``--url http://127.0.0.1:1`` (nothing listens there): it reads and validates
the trace before it touches the network, so a good trace ends in exit 1 "cannot reach" and a
bad one in exit 2 — no server is needed to tell them apart.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpbench.trace import SCHEMA, write_trace

UNREACHABLE = "http://127.0.0.1:1"
N_ROWS = 40

# A long-lived child that runs `cpbench.cli.main(argv)` per request line and answers with the
# exit status and both output streams; any exception escaping main() is a traceback.
_HARNESS = r"""
import contextlib, io, json, sys, traceback, warnings
from cpbench.cli import main
for line in sys.stdin:
    argv = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, c, f, l, file=None, line=None: print(
                f"warning: {m}", file=sys.stderr)
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                rc, tb = -1, traceback.format_exc()
    sys.__stdout__.write(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue(),
                                     "tb": tb}) + "\n")
    sys.__stdout__.flush()
"""


class _Harness:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HARNESS], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, *argv: str) -> dict:
        self.proc.stdin.write(json.dumps(list(argv)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.__init__()                       # keep serving later cases
            raise AssertionError(f"cpbench {' '.join(argv)} killed the process (status {code})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def harness():
    h = _Harness()
    yield h
    h.close()


# -- building traces ---------------------------------------------------------------------------

def good_columns(n: int = N_ROWS) -> dict[str, pa.Array]:
    """A valid hybrid trace as plain columns (chat, completion and embedding rows)."""
    kinds = [("chat", "completion", "embedding")[i % 3] for i in range(n)]
    llm = [k != "embedding" for k in kinds]
    return {
        "arrival_ns": pa.array(np.arange(n, dtype=np.int64) * 10_000_000),
        "kind": pa.array(kinds).dictionary_encode(),
        "model": pa.array(["m-llm" if x else "m-emb" for x in llm]).dictionary_encode(),
        "input_tokens": pa.array([8] * n, pa.int32()),
        "output_tokens": pa.array([4 if x else None for x in llm], pa.int32()),
        "batch_size": pa.array([1 if x else 2 for x in llm], pa.int16()),
        "priority": pa.array([("HIGH", "NORMAL", "LOW")[i % 3] for i in range(n)])
        .dictionary_encode(),
        "slo_ttft_ms": pa.array([None] * n, pa.float32()),
        "slo_e2e_ms": pa.array([None] * n, pa.float32()),
        "prompt": pa.array([None] * n, pa.string()),
        "session": pa.array([None] * n, pa.string()),
    }


def write_raw(cols: dict[str, pa.Array], path: Path, fmt: str = "file") -> Path:
    """Write columns without any validation (the point is to write broken traces)."""
    table = pa.table(cols)
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        with pa.OSFile(str(path), "wb") as sink:
            opener = ipc.new_file if fmt == "file" else ipc.new_stream
            with opener(sink, table.schema) as writer:
                writer.write_table(table)
    return path


def with_col(name: str, array: pa.Array | None) -> dict[str, pa.Array]:
    cols = good_columns()
    if array is None:
        del cols[name]
    else:
        cols[name] = array
    return cols


def patched(name: str, index: int, value) -> dict[str, pa.Array]:
    cols = good_columns()
    values = cols[name].to_pylist()
    values[index] = value
    typ = cols[name].type
    typ = typ.value_type if pa.types.is_dictionary(typ) else typ
    cols[name] = pa.array(values, typ)
    return cols


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _good_file(tmp: Path) -> Path:
    return write_raw(good_columns(), tmp / "good.arrow")


def _declared_2gb(tmp: Path) -> Path:
    """A ~16 KB IPC file whose record batch declares a 2 GiB data buffer."""
    n = 1001                                   # 8008-byte int64 buffers: easy to find
    cols = good_columns(n)
    path = write_raw(cols, tmp / "declared2g.arrow")
    raw = bytearray(path.read_bytes())
    pat = struct.pack("<q", 8 * n)
    at = raw.find(pat)
    assert at > 0, "buffer length not found in the record batch metadata"
    raw[at:at + 8] = struct.pack("<q", 2 ** 31)
    path.write_bytes(bytes(raw))
    return path


def _non_utf8(tmp: Path) -> Path:
    cols = good_columns()
    prompts = [b"fine words"] * N_ROWS
    prompts[7] = b"bad \xff\xfe bytes"
    cols["prompt"] = pa.array(prompts, pa.binary()).view(pa.string())
    return write_raw(cols, tmp / "non_utf8.arrow")


def _nested_parquet(tmp: Path) -> Path:
    cols = good_columns()
    cols["session"] = pa.array([[1, 2]] * N_ROWS, pa.list_(pa.int64()))
    return write_raw(cols, tmp / "nested.parquet", "parquet")


def _truncated(tmp: Path) -> Path:
    data = _good_file(tmp).read_bytes()
    return _bytes(tmp / "truncated.arrow", data[: len(data) // 2])


def _truncated_stream(tmp: Path) -> Path:
    path = write_raw(good_columns(), tmp / "s.arrows", "stream")
    data = path.read_bytes()
    return _bytes(tmp / "truncated.arrows", data[: len(data) - 300])


def _truncated_parquet(tmp: Path) -> Path:
    data = write_raw(good_columns(), tmp / "p.parquet", "parquet").read_bytes()
    return _bytes(tmp / "truncated.parquet", data[: len(data) - 40])


def _zero_rows(tmp: Path) -> Path:
    cols = {k: v.slice(0, 0) for k, v in good_columns().items()}
    return write_raw(cols, tmp / "zero_rows.arrow")


def _blocks(tmp: Path, name: str, rows: dict[int, list | None], block_tokens: bytes | None = b"4",
            typ: pa.DataType = pa.list_(pa.int64()), prompt_row: int | None = None) -> Path:
    """A trace whose ``prefix_blocks`` has ``rows`` (others null), block size in metadata."""
    cols = good_columns()
    cols["prefix_blocks"] = pa.array([rows.get(i) for i in range(N_ROWS)], typ)
    if prompt_row is not None:
        prompts = [None] * N_ROWS
        prompts[prompt_row] = "a literal prompt"
        cols["prompt"] = pa.array(prompts, pa.string())
    table = pa.table(cols)
    if block_tokens is not None:
        table = table.replace_schema_metadata({b"cpbench.block_tokens": block_tokens})
    with pa.OSFile(str(tmp / name), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return tmp / name


# (case id, builder(tmp) -> path, words the message must contain: column, row, value)
CASES = [
    ("not_arrow", lambda t: _bytes(t / "notes.arrow", b"arrival_ns,kind\n1,chat\n"),
     ["not an Arrow", "arrival_"]),
    ("truncated_file", _truncated, ["unreadable"]),
    ("truncated_stream", _truncated_stream, ["unreadable"]),
    ("truncated_parquet", _truncated_parquet, ["unreadable"]),
    ("empty_file", lambda t: _bytes(t / "empty.arrow", b""), ["empty"]),
    ("magic_then_garbage", lambda t: _bytes(t / "garbage.arrow", b"ARROW1\0\0" + b"\x07" * 500),
     ["unreadable"]),
    ("zero_rows", _zero_rows, ["no rows"]),
    ("arrival_float", lambda t: write_raw(with_col(
        "arrival_ns", pa.array(np.arange(N_ROWS) * 1e7)), t / "f.arrow"),
     ["arrival_ns", "double"]),
    ("input_tokens_string", lambda t: write_raw(with_col(
        "input_tokens", pa.array(["8"] * N_ROWS)), t / "s.arrow"),
     ["input_tokens", "string"]),
    ("arrival_timestamp", lambda t: write_raw(with_col(
        "arrival_ns", pa.array(np.arange(N_ROWS), pa.timestamp("ns"))), t / "ts.arrow"),
     ["arrival_ns", "timestamp"]),
    ("missing_kind", lambda t: write_raw(with_col("kind", None), t / "m.arrow"),
     ["missing", "kind"]),
    ("missing_arrival", lambda t: write_raw(with_col("arrival_ns", None), t / "m2.arrow"),
     ["missing", "arrival_ns"]),
    ("negative_arrival", lambda t: write_raw(patched("arrival_ns", 0, -5), t / "neg.arrow"),
     ["arrival_ns", "row 0", "-5"]),
    ("unsorted_arrival", lambda t: write_raw(patched("arrival_ns", 10, 1), t / "uns.arrow"),
     ["arrival_ns", "row 10", "1 <"]),
    ("null_arrival", lambda t: write_raw(patched("arrival_ns", 3, None), t / "null.arrow"),
     ["arrival_ns", "row 3", "null"]),
    ("duplicate_nan_arrival", lambda t: write_raw(with_col("arrival_ns", pa.array(
        [0.0, 0.0, float("nan")] + [1.0] * (N_ROWS - 3))), t / "dupnan.arrow"),
     ["arrival_ns", "double"]),
    ("unknown_kind", lambda t: write_raw(patched("kind", 5, "rerank"), t / "k.arrow"),
     ["kind", "row 5", "rerank"]),
    ("unknown_priority", lambda t: write_raw(patched("priority", 4, "URGENT"), t / "p.arrow"),
     ["priority", "row 4", "URGENT"]),
    ("null_model", lambda t: write_raw(patched("model", 6, None), t / "nm.arrow"),
     ["model", "row 6", "null"]),
    ("llm_without_output_tokens", lambda t: write_raw(patched("output_tokens", 3, None),
                                                      t / "o.arrow"),
     ["output_tokens", "row 3", "null"]),
    ("embedding_batch_zero", lambda t: write_raw(patched("batch_size", 2, 0), t / "b0.arrow"),
     ["batch_size", "row 2", " 0 "]),
    ("llm_batch_two", lambda t: write_raw(patched("batch_size", 0, 2), t / "b2.arrow"),
     ["batch_size", "row 0", " 2 "]),
    ("absurd_input_tokens", lambda t: write_raw(patched("input_tokens", 9, 10 ** 9),
                                                t / "huge.arrow"),
     ["input_tokens", "row 9", "1000000000"]),
    ("absurd_output_tokens", lambda t: write_raw(patched("output_tokens", 1, 10 ** 9),
                                                 t / "hugeo.arrow"),
     ["output_tokens", "row 1", "1000000000"]),
    ("absurd_batch", lambda t: write_raw(with_col("batch_size", pa.array(
        [1, 1, 10 ** 6] + [1, 1, 2] * ((N_ROWS - 3) // 3) + [1] * ((N_ROWS - 3) % 3),
        pa.int32())), t / "hugeb.arrow"),
     ["batch_size", "row 2", "1000000"]),
    ("negative_input_tokens", lambda t: write_raw(patched("input_tokens", 11, -1),
                                                  t / "negin.arrow"),
     ["input_tokens", "row 11", "-1"]),
    ("negative_slo", lambda t: write_raw(patched("slo_e2e_ms", 12, -3.0), t / "slo.arrow"),
     ["slo_e2e_ms", "row 12", "-3"]),
    ("non_utf8_prompt", _non_utf8, ["prompt", "row 7", "utf"]),
    ("nested_parquet", _nested_parquet, ["session", "list"]),
    ("declared_2gb_buffer", _declared_2gb, ["2147483648"]),
    ("directory", lambda t: (t / "adir.arrow").mkdir() or t / "adir.arrow", ["adir.arrow"]),
    ("missing_file", lambda t: t / "no_such.arrow", ["no_such.arrow", "No such file"]),
    # prefix_blocks (block size 4, input_tokens 8: at most 2 blocks per row)
    ("prefix_negative_id", lambda t: _blocks(t, "pneg.arrow", {0: [1, 2], 5: [3, -7]}),
     ["prefix_blocks", "row 5", "-7"]),
    ("prefix_null_id", lambda t: _blocks(t, "pnull.arrow", {3: [1, None]}),
     ["prefix_blocks", "row 3", "null"]),
    ("prefix_too_many_blocks", lambda t: _blocks(t, "plong.arrow", {1: [1], 4: [1, 2, 3]}),
     ["prefix_blocks", "row 4", "3 blocks", "input_tokens 8"]),
    ("prefix_without_block_tokens", lambda t: _blocks(t, "pmeta.arrow", {6: [1]}, None),
     ["prefix_blocks", "row 6", "cpbench.block_tokens", "absent"]),
    ("prefix_bad_block_tokens", lambda t: _blocks(t, "pmeta2.arrow", {0: [1]}, b"zero"),
     ["prefix_blocks", "cpbench.block_tokens", "'zero'"]),
    ("prefix_on_embedding", lambda t: _blocks(t, "pemb.arrow", {2: [1]}),
     ["prefix_blocks", "row 2", "embedding"]),
    ("prefix_and_prompt", lambda t: _blocks(t, "pboth.arrow", {0: [1]}, prompt_row=0),
     ["row 0", "prompt", "prefix_blocks"]),
    ("prefix_strings", lambda t: _blocks(t, "pstr.arrow", {0: ["a"]},
                                         typ=pa.list_(pa.string())),
     ["prefix_blocks", "string", "list<int64>"]),
]


def _check_rejection(res: dict, path: Path, words: list[str], stream: str) -> str:
    assert res["tb"] is None, res["tb"]
    assert res["rc"] == 2, res
    assert "Traceback" not in res["out"] + res["err"]
    text = res[stream].strip()
    first = text.splitlines()[0] if text else ""
    assert str(path) in first, first
    for word in words:
        assert word.lower() in first.lower(), (word, first)
    return first


@pytest.mark.parametrize("case,build,words", CASES, ids=[c[0] for c in CASES])
def test_bad_trace_rejected_by_validate_and_replay(tmp_path, harness, case, build, words):
    path = build(tmp_path)
    # validate lists every problem, one per line, on stdout (the problems are its output).
    res = harness.run("validate", str(path))
    _check_rejection(res, path, words, "out")
    assert "ok" not in res["out"].split()
    # replay refuses before any request: exactly one line on stderr.
    res = harness.run("replay", str(path), "--url", UNREACHABLE, "-o", str(tmp_path / "out"),
                      "--quiet")
    line = _check_rejection(res, path, words, "err")
    assert res["err"].strip() == line
    assert line.startswith("cpbench: error: ")
    assert not (tmp_path / "out" / "results.arrow").exists()


@pytest.mark.parametrize("case", ["not_arrow", "truncated_file", "declared_2gb_buffer",
                                  "non_utf8_prompt", "nested_parquet"])
def test_bad_trace_in_a_real_process(tmp_path, case):
    """The same through `python -m cpbench`: the real process's streams and exit status."""
    _, build, words = next(c for c in CASES if c[0] == case)
    path = build(tmp_path)
    for argv, stream in ((["validate", str(path)], "stdout"),
                         (["replay", str(path), "--url", UNREACHABLE, "--quiet"], "stderr")):
        proc = subprocess.run([sys.executable, "-m", "cpbench", *argv], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stdout + proc.stderr
        lines = getattr(proc, stream).strip().splitlines()
        assert str(path) in lines[0] and all(w.lower() in lines[0].lower() for w in words)
        if stream == "stderr":
            assert len(lines) == 1


def test_extra_columns_accepted_and_noted_once(tmp_path, harness):
    cols = good_columns()
    cols["tenant"] = pa.array(["a"] * N_ROWS)
    cols["cost_usd"] = pa.array([0.5] * N_ROWS)
    path = write_raw(cols, tmp_path / "extra.arrow")
    res = harness.run("validate", str(path))
    assert res["rc"] == 0 and res["tb"] is None
    assert res["out"].strip() == f"{path}: ok"
    notes = [ln for ln in res["err"].splitlines() if "tenant" in ln]
    assert len(notes) == 1 and "cost_usd" in notes[0]
    # replay accepts it too: it gets as far as the (absent) server.
    res = harness.run("replay", str(path), "--url", UNREACHABLE, "--quiet")
    assert res["rc"] == 1 and res["tb"] is None
    assert "cannot reach" in res["err"]
    assert sum("tenant" in ln for ln in res["err"].splitlines()) <= 1


# -- the property test -------------------------------------------------------------------------

_COLUMNS = list(SCHEMA.names)
_ODD_VALUES = [None, -1, 0, 1, 2, 2 ** 31 - 1, -(2 ** 63), 10 ** 12, "chat", "embedding", "",
               "HIGH", "x" * 300, 0.5, float("nan"), float("inf"), b"\xff"]


def _mutate_columns(data) -> dict[str, pa.Array]:
    cols = good_columns()
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        op = data.draw(st.sampled_from(["drop", "set", "retype", "shuffle", "extra", "slice"]),
                       label="op")
        name = data.draw(st.sampled_from(_COLUMNS), label="column")
        if op == "drop":
            cols.pop(name, None)
        elif op == "set" and name in cols:
            values = cols[name].to_pylist()
            i = data.draw(st.integers(0, len(values) - 1), label="row")
            values[i] = data.draw(st.sampled_from(_ODD_VALUES), label="value")
            try:
                cols[name] = pa.array(values)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                cols[name] = pa.array([str(v) for v in values])
        elif op == "retype" and name in cols:
            typ = data.draw(st.sampled_from([pa.int8(), pa.int64(), pa.float64(), pa.string(),
                                             pa.large_string(), pa.bool_()]), label="type")
            try:
                cols[name] = cols[name].cast(typ) if not pa.types.is_dictionary(
                    cols[name].type) else cols[name].dictionary_decode().cast(typ)
            except (pa.ArrowException, TypeError, ValueError):
                pass
        elif op == "shuffle":
            order = data.draw(st.permutations(range(N_ROWS)), label="order")
            cols = {k: v.take(pa.array(order)) for k, v in cols.items()}
        elif op == "extra":
            cols[f"extra_{name}"] = pa.array(range(N_ROWS))
        elif op == "slice":
            k = data.draw(st.integers(0, N_ROWS), label="rows")
            cols = {k2: v.slice(0, k) for k2, v in cols.items()}
    return cols


def _mutate_bytes(raw: bytes, data) -> bytes:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="byte edits")):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "zero"]), label="byte op")
        i = data.draw(st.integers(0, max(0, len(buf) - 1)), label="at")
        if op == "flip" and buf:
            buf[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        elif op == "zero":
            buf[i:i + 8] = b"\0" * len(buf[i:i + 8])
    return bytes(buf)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_traces_are_accepted_or_rejected_cleanly(tmp_path, harness, data):
    fmt = data.draw(st.sampled_from(["file", "stream", "parquet"]), label="format")
    path = tmp_path / f"mutant.{fmt}"
    cols = _mutate_columns(data)
    try:
        write_raw(cols, path, fmt)
    except (pa.ArrowException, ValueError, TypeError):
        return                                  # pyarrow itself would not write this table
    if data.draw(st.booleans(), label="byte-level"):
        path.write_bytes(_mutate_bytes(path.read_bytes(), data))
    checked = harness.run("validate", str(path))
    replayed = harness.run("replay", str(path), "--url", UNREACHABLE, "--quiet",
                           "-o", str(tmp_path / "out"))
    for res in (checked, replayed):
        assert res["tb"] is None, res["tb"]
        assert "Traceback" not in res["out"] + res["err"]
    assert checked["rc"] in (0, 2), checked
    if checked["rc"] == 0:
        # A trace validate accepts gets past replay's reader, to the unreachable server.
        assert replayed["rc"] == 1 and "cannot reach" in replayed["err"], replayed
    else:
        assert replayed["rc"] == 2, replayed
        lines = replayed["err"].strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("cpbench: error: ")]
        assert len(errors) == 1 and str(path) in errors[0], lines
        assert checked["out"].strip(), checked


def test_good_trace_written_by_cpbench_passes_both(tmp_path, harness):
    """The baseline the mutations start from is itself accepted (so rejections mean something)."""
    path = tmp_path / "good.arrow"
    write_trace(pa.table(good_columns()), path, metadata={"generator": "test", "seed": 1})
    assert harness.run("validate", str(path))["rc"] == 0
    res = harness.run("replay", str(path), "--url", UNREACHABLE, "--quiet")
    assert res["rc"] == 1 and "cannot reach" in res["err"]
    assert os.path.getsize(path) > 0


@pytest.mark.integration
def test_extra_columns_warned_once_by_a_real_replay(tmp_path):
    from support import read_run, run_cli
    from support.faulty_server import FaultyServer

    cols = good_columns()
    cols["tenant"] = pa.array(["a"] * N_ROWS)
    path = write_raw(cols, tmp_path / "extra.arrow")
    with FaultyServer() as server:
        proc = run_cli("replay", str(path), "--url", server.url, "-o", str(tmp_path / "out"),
                       "--workers", "2", "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr
    table, _ = read_run(tmp_path / "out")
    assert table.num_rows == N_ROWS
    assert sum("tenant" in ln for ln in proc.stderr.splitlines()) == 1, proc.stderr
