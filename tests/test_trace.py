"""cpbench.trace: round trips in three containers, one-line errors for every bad input (never
another exception), and the validate/info CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from cpbench.cli import main
from cpbench.errors import TraceError
from cpbench.trace import (REQUIRED_COLUMNS, SCHEMA, TRACE_VERSION, describe, read_trace,
                           sha256_file, trace_metadata, validate_table, write_trace)
from support import run_cli

META = {"generator": "test", "params": {"a": 1}, "seed": 5, "source": "unit"}


def _columns(n: int = 6) -> dict:
    kinds = ["chat", "embedding", "completion", "chat", "embedding", "chat"][:n]
    return {
        "arrival_ns": pa.array(np.arange(n, dtype=np.int64) * 1_000_000),
        "kind": pa.array(kinds),
        "model": pa.array(["m"] * n),
        "input_tokens": pa.array([10 + i for i in range(n)], pa.int32()),
        "output_tokens": pa.array([None if k == "embedding" else 20 for k in kinds], pa.int32()),
        "batch_size": pa.array([4 if k == "embedding" else 1 for k in kinds], pa.int16()),
        "priority": pa.array(["HIGH", "NORMAL", "LOW", "NORMAL", "HIGH", "LOW"][:n]),
    }


def _table(**changes) -> pa.Table:
    cols = _columns()
    for name, value in changes.items():
        if value is None:
            cols.pop(name)
        else:
            cols[name] = value
    return pa.table(cols)


def _write_ipc(table: pa.Table, path) -> str:
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return str(path)


def test_round_trip_file_stream_parquet(tmp_path):
    table = _table(prompt=pa.array(["hello world", None, "x", None, None, None]))
    path = tmp_path / "t.arrow"
    write_trace(table, path, metadata=META)
    back = read_trace(path)
    assert back.schema.remove_metadata() == SCHEMA
    assert back["kind"].to_pylist() == table["kind"].to_pylist()
    assert back["prompt"].to_pylist()[0] == "hello world"
    assert back["slo_e2e_ms"].null_count == 6
    assert trace_metadata(back) == {"version": TRACE_VERSION, "generator": "test",
                                    "params": {"a": 1}, "seed": 5, "source": "unit"}
    stream = tmp_path / "t.arrows"
    with pa.OSFile(str(stream), "wb") as sink, ipc.new_stream(sink, back.schema) as writer:
        writer.write_table(back)
    pq.write_table(table, tmp_path / "t.parquet")
    for other in (stream, tmp_path / "t.parquet"):
        assert read_trace(other).drop_columns([]).to_pydict() == back.to_pydict()
    # Same table + metadata -> same bytes.
    write_trace(table, tmp_path / "u.arrow", metadata=META)
    assert sha256_file(path) == sha256_file(tmp_path / "u.arrow")


def test_normalisation_fills_defaults_and_narrows_types(tmp_path):
    table = _table(arrival_ns=pa.array(np.arange(6) * 10, pa.int32()),
                   priority=pa.array([None, "HIGH", None, "LOW", None, None]),
                   batch_size=pa.array([None, 3, None, None, 2, 1], pa.int64()))
    back = read_trace(_write_ipc(table, tmp_path / "n.arrow"))
    assert back["arrival_ns"].type == pa.int64()
    assert back["priority"].to_pylist()[:2] == ["NORMAL", "HIGH"]
    assert back["batch_size"].to_pylist() == [1, 3, 1, 1, 2, 1]
    assert back["batch_size"].type == pa.int16()


def test_extra_columns_one_warning(tmp_path):
    table = _table(user_id=pa.array(["a"] * 6), note=pa.array([1] * 6))
    path = _write_ipc(table, tmp_path / "x.arrow")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = read_trace(path)
    assert len(caught) == 1 and "user_id" in str(caught[0].message)
    assert back.column_names == SCHEMA.names


BAD_TABLES = {
    "missing": (dict(model=None), "missing required column(s) model"),
    "float_arrivals": (dict(arrival_ns=pa.array([0.0, 1.0, float("nan"), 3, 4, 5])),
                       "column 'arrival_ns' has type double"),
    "unsorted": (dict(arrival_ns=pa.array([0, 5, 3, 6, 7, 8], pa.int64())),
                 "not sorted at row 2 (3 < 5)"),
    "negative": (dict(arrival_ns=pa.array([-4, 5, 6, 7, 8, 9], pa.int64())),
                 "negative at row 0 (-4)"),
    "null_arrival": (dict(arrival_ns=pa.array([0, None, 6, 7, 8, 9], pa.int64())),
                     "'arrival_ns' is null at row 1"),
    "kind": (dict(kind=pa.array(["chat", "chat", "embeding", "chat", "chat", "chat"])),
             "unknown value 'embeding' at row 2"),
    "no_output": (dict(output_tokens=pa.array([20, None, None, 5, None, 5], pa.int32())),
                  "'output_tokens' has null at row 2 (an LLM request)"),
    "batch0": (dict(batch_size=pa.array([1, 0, 1, 1, 4, 1], pa.int16())),
               "'batch_size' has 0 at row 1 (an embedding request)"),
    "huge_tokens": (dict(input_tokens=pa.array([1, 2, 3, 10**8, 5, 6], pa.int64())),
                    "'input_tokens' has 100000000 at row 3"),
    "huge_batch": (dict(batch_size=pa.array([1, 10**6, 1, 1, 4, 1], pa.int64())),
                   "'batch_size' has 1000000 at row 1"),
    "priority": (dict(priority=pa.array(["HIGH", "URGENT", "LOW", "LOW", "LOW", "LOW"])),
                 "'priority' has unknown value 'URGENT' at row 1"),
    "nested": (dict(session=pa.array([[1]] * 6)), "'session' has nested type list<item: int64>"),
    # Dictionary-encoded columns are checked per dictionary entry: the same messages.
    "kind_dictionary": (dict(kind=pa.array(["chat", "chat", "embeding", "chat", "chat", None])
                             .dictionary_encode()), "unknown value 'embeding' at row 2"),
    "kind_dictionary_null": (dict(kind=pa.array(["chat", None, "chat", "chat", "chat", "chat"])
                                  .dictionary_encode()), "unknown value None at row 1"),
    "priority_dictionary": (
        dict(priority=pa.array(["HIGH", None, "URGENT", "LOW", "LOW", "LOW"]).dictionary_encode()),
        "'priority' has unknown value 'URGENT' at row 2"),
    "batch0_dictionary_kind": (dict(batch_size=pa.array([1, 0, 1, 1, 4, 1], pa.int16()),
                                    kind=pa.array(["chat", "embedding", "chat", "chat",
                                                   "embedding", "chat"]).dictionary_encode()),
                               "'batch_size' has 0 at row 1 (an embedding request)"),
    "binary_prompt": (dict(prompt=pa.array([b"\xff"] * 6)), "'prompt' has type binary"),
    "slo": (dict(slo_e2e_ms=pa.array([1.0, -5.0, 1, 1, 1, 1], pa.float32())),
            "'slo_e2e_ms' has -5.0 at row 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_tables_one_line_naming_column_row_value(tmp_path, case):
    changes, expected = BAD_TABLES[case]
    path = _write_ipc(_table(**changes), tmp_path / f"{case}.arrow")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert expected in message and path in message and "\n" not in message
    assert any(expected in p for p in validate_table(_table(**changes)))


def test_unreadable_files(tmp_path):
    good = tmp_path / "good.arrow"
    write_trace(_table(), good, metadata=META)
    data = good.read_bytes()
    cases = {"empty.arrow": (b"", "file is empty"),
             "text.arrow": (b"kind,arrival\nchat,1\n", "not an Arrow IPC file"),
             "trunc.arrow": (data[: len(data) // 2], "unreadable trace"),
             "trunc.parquet": (b"PAR1" + b"\0" * 20, "unreadable trace")}
    for name, (raw, expected) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(TraceError, match=expected):
            read_trace(tmp_path / name)
    with pytest.raises(TraceError, match="cannot open trace"):
        read_trace(tmp_path / "absent.arrow")
    with pytest.raises(TraceError, match="trace has no rows"):
        read_trace(_write_ipc(_table().slice(0, 0), tmp_path / "zero.arrow"))


def test_invalid_utf8_in_string_column_names_row(tmp_path):
    raw = pa.array([b"ok", b"fine", b"bad \xff\xfe", b"x", b"y", b"z"], pa.binary())
    table = _table(prompt=raw.view(pa.string()))   # a writer that skipped UTF-8 checks
    path = _write_ipc(table, tmp_path / "utf.arrow")
    with pytest.raises(TraceError, match=r"column 'prompt' is corrupt at row 2"):
        read_trace(path)


def test_corrupted_bytes_never_escape_as_other_exceptions(tmp_path):
    """Flip bytes all over a valid file (metadata, buffer lengths, footer): every read either
    succeeds with a valid trace or raises TraceError — no pyarrow exception, no crash."""
    good = tmp_path / "good.arrow"
    write_trace(_table(prompt=pa.array(["p"] * 6)), good, metadata=META)
    data = bytearray(good.read_bytes())
    bad = tmp_path / "fuzz.arrow"
    outcomes = {"ok": 0, "error": 0}
    for pos in range(0, len(data), 3):
        for value in (0xFF, 0x7F):
            mutated = bytearray(data)
            mutated[pos] = value
            bad.write_bytes(bytes(mutated))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    read_trace(bad)
                outcomes["ok"] += 1
            except TraceError as exc:
                assert "\n" not in str(exc)
                outcomes["error"] += 1
    assert outcomes["error"] > 0


def test_parquet_declaring_too_many_rows_is_refused(tmp_path, monkeypatch):
    import cpbench.trace as trace_mod
    path = tmp_path / "t.parquet"
    pq.write_table(_table(), path)
    monkeypatch.setattr(trace_mod, "MAX_ROWS", 3)
    with pytest.raises(TraceError, match="declares 6 rows"):
        read_trace(path)


def test_write_rejects_invalid_and_unknown_metadata(tmp_path):
    with pytest.raises(TraceError, match="not sorted"):
        write_trace(_table(arrival_ns=pa.array([3, 2, 4, 5, 6, 7], pa.int64())),
                    tmp_path / "a.arrow", metadata=META)
    with pytest.raises(TraceError, match="unknown trace metadata"):
        write_trace(_table(), tmp_path / "a.arrow", metadata={"when": "now"})
    assert not (tmp_path / "a.arrow").exists()
    assert set(REQUIRED_COLUMNS) <= set(SCHEMA.names)


def test_describe_counts_rates_and_mix(tmp_path):
    write_trace(_table(), tmp_path / "d.arrow", metadata=META)
    info = describe(read_trace(tmp_path / "d.arrow"))
    assert info["requests"] == 6 and info["duration_s"] == pytest.approx(0.005)
    assert info["peak_1s_rps"] == 6 and info["gap_cv"] == pytest.approx(0.0)
    assert info["by_kind"] == {"chat": 3, "completion": 1, "embedding": 2}
    assert info["lengths"]["embedding_batch_size"]["p50"] == 4.0


_cli = run_cli


def test_validate_and_info_cli(tmp_path, capsys):
    good = tmp_path / "good.arrow"
    write_trace(_table(), good, metadata=META)
    assert main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["info", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 6
    assert main(["info", str(good)]) == 0
    text = capsys.readouterr().out
    assert "requests     6" in text and "embedding 2 (33.3%)" in text

    unsorted = _write_ipc(_table(arrival_ns=pa.array([0, 5, 3, 6, 7, -1], pa.int64()),
                                 kind=pa.array(["chat"] * 5 + ["x"])), tmp_path / "u.arrow")
    result = _cli("validate", unsorted)
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all(unsorted in line for line in lines)   # one per problem

    junk = tmp_path / "junk.arrow"
    junk.write_bytes(b"\x00garbage" * 10)
    for command in ("validate", "info"):
        result = _cli(command, str(junk))
        out = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 2 and len(out) == 1 and "Traceback" not in result.stderr
        assert "not an Arrow IPC file" in out[0]


@pytest.mark.parametrize("container", ["stream", "file"])
def test_huge_declared_body_length_is_refused_without_allocating(tmp_path, container):
    import struct
    table = _table()
    sink = pa.BufferOutputStream()
    opener = ipc.new_stream if container == "stream" else ipc.new_file
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    raw = sink.getvalue().to_pybytes()
    reader = pa.BufferReader(raw if container == "stream" else raw[8:])
    sizes = []
    while True:
        try:
            message = ipc.read_message(reader)
        except (pa.ArrowInvalid, OSError, EOFError):
            break
        if message is None:
            break
        if message.type == "record batch":
            sizes.append(message.body.size)
    declared = struct.pack("<q", sizes[0])
    assert declared in raw
    path = tmp_path / f"huge.{container}"
    path.write_bytes(raw.replace(declared, struct.pack("<q", 1 << 40)))   # a 1 TiB body
    with pytest.raises(TraceError, match="unreadable trace"):
        read_trace(path)
