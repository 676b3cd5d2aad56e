"""The report's breakdowns of results.arrow, folded one record batch at a time.

However the rows are split into batches, the report gets the same models, error details,
completions per kind and embedding batch table; the table's statistics agree with the rows
(mean exactly, p99 within the histogram's bound); results.arrow is read batch by batch.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cpbench.reporting.breakdowns import RESULT_COLUMNS, Breakdowns
from cpbench.reporting.load import load_run
from cpbench.resultdir import iter_arrow_batches
from support.result_dirs import make_result_dir, make_results_table

REL_BOUND = 4.9e-4      # the 3-digit histogram's stated relative error


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_results_table(6000, rate_rps=300.0, llm_ratio=0.5, seed=11, model_name="m",
                              error_detail="HTTP 503", error_ratio=0.03)


def _fold(table: pa.Table, chunk: int) -> Breakdowns:
    out = Breakdowns(1.0, 25)
    for batch in table.to_batches(max_chunksize=chunk):
        out.add(batch)
    return out


def test_the_split_into_batches_changes_nothing(table):
    one, many = _fold(table, len(table)), _fold(table, 97)
    assert one.models == many.models and one.error_details == many.error_details
    assert one.batch_table() == many.batch_table()
    series = one.kind_series()
    assert sorted(series) == ["chat", "embedding"]
    for kind, values in many.kind_series().items():
        assert np.array_equal(values, series[kind])


def test_batch_table_agrees_with_the_rows(table):
    live = ~table.column("warmup").to_numpy(zero_copy_only=False)
    ok = table.column("error_class").is_null().to_numpy(zero_copy_only=False) & live
    emb = ok & (table.column("kind").cast(pa.string()).to_numpy(zero_copy_only=False)
                == "embedding")
    sizes = table.column("batch_size").to_numpy()[emb]
    e2e_ms = (table.column("done_ns").to_numpy() - table.column("sent_ns").to_numpy())[emb] / 1e6
    rows = _fold(table, 101).batch_table()
    assert [r["batch_size"] for r in rows] == sorted(set(sizes.tolist()))
    for r in rows:
        lat = e2e_ms[sizes == r["batch_size"]]
        assert r["requests"] == lat.size
        assert r["e2e_mean_ms"] == pytest.approx(lat.mean(), rel=1e-12)
        exact_p99 = np.percentile(lat, 99, method="inverted_cdf")
        assert r["e2e_p99_ms"] == pytest.approx(exact_p99, rel=REL_BOUND)


def test_results_are_read_batch_by_batch_with_only_the_columns_asked(tmp_path):
    d = make_result_dir(tmp_path / "r", n_requests=500, seed=2)
    batches = list(iter_arrow_batches(d / "results.arrow", (*RESULT_COLUMNS, "nope")))
    assert sum(b.num_rows for b in batches) == 500
    assert all(set(b.schema.names) == set(RESULT_COLUMNS) for b in batches)
    # No column asked for that the file has: one empty batch, not the whole file.
    assert [b.num_rows for b in iter_arrow_batches(d / "results.arrow", ("nope",))] == [0]
    run = load_run(d)
    assert run.models and run.batch_table and run.kind_series
