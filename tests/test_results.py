"""The worker's row buffer (cpbench.replaying.rows) and the parent's batch builder and column readers
(cpbench.results)."""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from cpbench.results import (ResultsWriter, column_numpy, label_codes, read_results,
                             result_schema, rows_to_batch)
from cpbench.replaying.rows import ROW_FIELDS, RowBuffer

MS = 1_000_000


def row(**v) -> tuple:
    """A ROW_FIELDS tuple: a 200 chat success unless overridden."""
    base = {"row": 0, "kind": 0, "priority": 1, "model": 0, "intended_ns": 0, "sent_ns": 0,
            "first_byte_ns": 0, "first_token_ns": 0, "done_ns": 0, "input_tokens": 10,
            "output_tokens": 16, "batch_size": 1, "status": 200, "error_class": -1,
            "itl_mean_ns": -1, "itl_max_ns": -1, "warmup": 0, "slo_ttft_ms": 100.0,
            "slo_e2e_ms": 1000.0}
    base.update(v)
    return tuple(base[f] for f in ROW_FIELDS)


def test_rows_become_one_batch_with_flags_nulls_and_dictionaries():
    buf = RowBuffer()
    assert buf.take_rows() is None
    # Met both deadlines (TTFT 90 ms, e2e 900 ms from the intended time).
    buf.append(row(row=4, intended_ns=10 * MS, sent_ns=11 * MS, first_byte_ns=99 * MS,
                   first_token_ns=100 * MS, done_ns=910 * MS, itl_mean_ns=5 * MS,
                   itl_max_ns=9 * MS))
    # Sent late: 1 ms over the TTFT deadline from intended, though fast from sent.
    buf.append(row(row=5, kind=2, priority=0, model=1, intended_ns=0, sent_ns=60 * MS,
                   first_byte_ns=101 * MS, first_token_ns=101 * MS, done_ns=101 * MS,
                   output_tokens=0, batch_size=8, warmup=1))
    # A failure: nulls where nothing happened, its detail kept, no deadline met.
    buf.append(row(row=6, first_byte_ns=-1, first_token_ns=-1, done_ns=5 * MS, status=503,
                   error_class=3, slo_ttft_ms=2.5), "HTTP 503: busy")
    assert len(buf) == 3
    packed = buf.take_rows()
    assert len(buf) == 0 and buf.take_rows() is None
    packed = pickle.loads(pickle.dumps(packed))          # it crosses a pipe as is
    batch = rows_to_batch(packed, ["m-a", "m-b"], worker=3)
    assert batch.schema.equals(result_schema(), check_metadata=False)
    r = batch.to_pylist()
    assert [x["row"] for x in r] == [4, 5, 6]
    assert [x["kind"] for x in r] == ["chat", "embedding", "chat"]
    assert [x["priority"] for x in r] == ["NORMAL", "HIGH", "NORMAL"]
    assert [x["model"] for x in r] == ["m-a", "m-b", "m-a"]
    assert [x["worker"] for x in r] == [3, 3, 3]
    assert [x["error_class"] for x in r] == [None, None, "http_5xx"]
    assert [x["error_detail"] for x in r] == [None, None, "HTTP 503: busy"]
    assert (r[0]["slo_ttft_met"], r[0]["slo_e2e_met"], r[0]["slo_met"]) == (True, True, True)
    assert (r[1]["slo_ttft_met"], r[1]["slo_e2e_met"], r[1]["slo_met"]) == (False, True, False)
    assert (r[2]["slo_ttft_met"], r[2]["slo_e2e_met"], r[2]["slo_met"]) == (False, False, False)
    assert r[2]["first_byte_ns"] is None and r[2]["first_token_ns"] is None
    assert r[2]["done_ns"] == 5 * MS and r[2]["status"] == 503
    assert r[0]["itl_mean_ns"] == 5 * MS and r[1]["itl_mean_ns"] is None
    assert r[2]["slo_ttft_ms"] == pytest.approx(2.5) and r[1]["batch_size"] == 8
    assert [x["warmup"] for x in r] == [False, True, False]


def test_batches_written_as_they_come_read_back_whole(tmp_path):
    writer = ResultsWriter(tmp_path / "results.arrow", {"target": "http://h:1"})
    buf = RowBuffer()
    for b in range(3):
        for i in range(5):
            buf.append(row(row=b * 5 + i, done_ns=i))
        writer.write(rows_to_batch(buf.take_rows(), ["m"], worker=0))
    writer.close()
    table = read_results(tmp_path / "results.arrow")
    assert table.column("row").to_pylist() == list(range(15))
    assert b"http://h:1" in table.schema.metadata[b"cpbench.run"]


def test_label_codes_and_column_numpy_over_chunks_and_nulls():
    kinds = pa.chunked_array([
        pa.array(["embedding", None, "chat"]).dictionary_encode(),
        pa.array(["chat", "rerank"]).dictionary_encode(),
    ])
    codes, labels = label_codes(kinds, ("chat", "completion", "embedding"))
    assert labels == ("chat", "completion", "embedding", "unknown", "rerank")
    assert codes.tolist() == [2, 3, 0, 0, 4]
    plain, plain_labels = label_codes(pa.chunked_array([["b", None], ["a"]]), ())
    assert [plain_labels[c] for c in plain] == ["b", "unknown", "a"]
    table = pa.table({"t": pa.chunked_array([[1, None], [3]], pa.int64())})
    assert column_numpy(table, "t", -1, np.int64).tolist() == [1, -1, 3]
