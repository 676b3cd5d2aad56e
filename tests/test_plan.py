"""A worker's plan: built from a trace, saved by the parent, memory-mapped by the worker."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa

from cpbench.replaying.dispatch import _Columns
from cpbench.replaying.plan import COLUMNS, PromptColumn, load_plan, save_plan
from cpbench.replaying.planning import build_plan, select_rows


def table(prompts: list[str | None]) -> pa.Table:
    n = len(prompts)
    return pa.table({
        "arrival_ns": pa.array(np.arange(n, dtype=np.int64) * 1000),
        "kind": pa.array(["chat", "embedding"] * (n // 2) + ["chat"] * (n % 2)).dictionary_encode(),
        "model": pa.array(["b", "a"] * (n // 2) + ["b"] * (n % 2)).dictionary_encode(),
        "input_tokens": pa.array(range(n), pa.int32()),
        "output_tokens": pa.array([7] * n, pa.int32()),
        "batch_size": pa.array([1] * n, pa.int16()),
        "priority": pa.array(["LOW"] * n).dictionary_encode(),
        "slo_ttft_ms": pa.array([None] * n, pa.float32()),
        "slo_e2e_ms": pa.array([250.0] * n, pa.float32()),
        "prompt": pa.array(prompts, pa.string()),
    })


def test_saved_plan_maps_back_equal_with_prompts(tmp_path):
    prompts = ["héllo wörld", None, "", "多语言 prompt", None, "last"]
    t = table(prompts)
    sel = select_rows(t, warmup_requests=2)
    plan = build_plan(t, sel, 1, 2)                         # rows 1, 3, 5
    save_plan(plan, tmp_path / "p")
    back = load_plan(tmp_path / "p")
    assert len(back) == 3 and back.models == ["a", "b"]
    for name in COLUMNS:
        assert np.array_equal(getattr(back, name), getattr(plan, name)), name
    assert back.rows.tolist() == [1, 3, 5]
    assert back.warmup.tolist() == [1, 0, 0]                # the second request is warm-up
    assert back.slo_e2e_ms.tolist() == [250.0] * 3
    assert back.kind.tolist() == [2, 2, 2]                   # embedding
    assert back.slo_ttft_ms.tolist() == [500.0] * 3          # its default deadline
    assert [back.prompts[j] for j in range(3)] == [None, "多语言 prompt", "last"]
    # The dispatcher reads the mapped columns through memoryviews, as Python numbers.
    col = _Columns(back)
    assert (col.rows[2], col.intended_ns[1], col.slo_e2e_ms[0], col.prompts[1]) == (
        5, 3000, 250.0, "多语言 prompt")


def test_plan_without_prompts_and_an_empty_plan(tmp_path):
    t = table([None, None, None])
    plan = build_plan(t, select_rows(t), 0, 1)
    assert plan.prompts is None
    save_plan(plan, tmp_path / "p")
    assert load_plan(tmp_path / "p").prompts is None
    empty = build_plan(t.slice(0, 0), select_rows(t.slice(0, 0)), 0, 1)
    save_plan(empty, tmp_path / "e")
    assert len(load_plan(tmp_path / "e")) == 0


def test_prompt_column_from_texts():
    col = PromptColumn.from_texts(["a", None, "ü"])
    assert [col[j] for j in range(3)] == ["a", None, "ü"] and len(col) == 3


def test_worker_process_imports_no_pyarrow():
    # A worker's memory is the interpreter plus its plan: pyarrow alone would be ~40 MB more.
    code = ("import sys, cpbench.replaying.child; "
            "print(sorted(m for m in ('pyarrow', 'aiohttp', 'bokeh', 'cpbench.trace') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"



def test_models_and_codes_come_from_the_dictionary_entries_in_use():
    import pyarrow as pa

    from cpbench.replaying.planning import _codes, trace_models
    models = pa.DictionaryArray.from_arrays(pa.array([2, 0, 2], pa.int32()),
                                            pa.array(["m-a", "m-b", "m-c"]))
    table = pa.table({"model": pa.chunked_array([models])})
    assert trace_models(table) == ["m-a", "m-c"]          # m-b is in the dictionary, unused
    assert _codes(models, ["m-a", "m-c"]).tolist() == [1, 0, 1]
    plain = pa.array(["m-c", "m-a"])
    assert _codes(plain, ["m-a", "m-c"]).tolist() == [1, 0]
