"""Planning a replay: which trace rows are sent when, and each worker's share as a plan.

The parent reads the trace once and turns the run options into a row selection
(:func:`select_rows`); worker ``w`` of ``n`` takes every ``n``-th selected row, built into a
:class:`cpbench.replaying.plan.Plan` (:func:`build_plan`) that the parent saves for the worker
to memory-map, so no worker reads the trace again. This is the only replay module of the
parent that needs pyarrow; the child process never imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench.replaying.plan import Plan, PromptColumn
from cpbench.vocab import DEFAULT_SLO_MS, KINDS as KIND_VALUES, PRIORITIES as PRIORITY_VALUES


@dataclass(frozen=True)
class Selection:
    """Which trace rows a run sends, when, and which are warm-up."""

    rows: np.ndarray            # int64 trace row indices, in send order
    intended_ns: np.ndarray     # int64 offsets from the run start
    warmup: np.ndarray          # bool


def select_rows(table: pa.Table, *, speed: float = 1.0, rate_scale: float = 1.0,
                duration_s: float | None = None, warmup_s: float = 0.0,
                warmup_requests: int = 0) -> Selection:
    """Apply ``--speed``/``--rate-scale`` (both divide the trace's time offsets),
    ``--duration`` (rows intended at or after it are not sent) and ``--warmup``."""
    arrival = table.column("arrival_ns").to_numpy().astype(np.int64, copy=False)
    factor = float(speed) * float(rate_scale)
    intended = arrival if factor == 1.0 else np.rint(arrival / factor).astype(np.int64)
    rows = np.arange(len(intended), dtype=np.int64)
    if duration_s is not None:
        keep = intended < int(duration_s * 1e9)
        rows, intended = rows[keep], intended[keep]
    warmup = (intended < int(warmup_s * 1e9)) | (np.arange(len(rows)) < warmup_requests)
    return Selection(rows, intended, warmup)


def _codes(array: pa.Array, values: list[str]) -> np.ndarray:
    value_set = pa.array(values, pa.string())
    if pa.types.is_dictionary(array.type) and array.null_count == 0:
        # Map the few dictionary entries, then index by the codes: no string per row.
        mapping = pc.index_in(array.dictionary.cast(pa.string()), value_set=value_set)
        lookup = pc.fill_null(mapping, -1).to_numpy(zero_copy_only=False)
        return lookup[array.indices.to_numpy()].astype(np.int32)
    strings = array.cast(pa.string()) if pa.types.is_dictionary(array.type) else array
    return pc.index_in(strings, value_set=value_set).to_numpy(
        zero_copy_only=False).astype(np.int32)


def trace_models(table: pa.Table) -> list[str]:
    """Every model of the trace, sorted: the dictionary of the results' ``model`` column."""
    col = table.column("model").combine_chunks()
    if pa.types.is_dictionary(col.type):
        # The entries the codes use (a dictionary may hold more): no string per row.
        col = col.dictionary.take(pc.unique(col.indices).drop_null())
    return sorted(v for v in pc.unique(col).to_pylist() if v is not None)


def build_plan(table: pa.Table, sel: Selection, worker: int, n_workers: int,
               models: list[str] | None = None) -> Plan:
    """Worker ``worker``'s share of ``sel`` (every ``n_workers``-th row) as a :class:`Plan`.

    ``models``: :func:`trace_models` of ``table``, when the caller has it already.
    """
    pos = np.arange(worker, len(sel.rows), n_workers)
    rows = sel.rows[pos]
    take = pa.array(rows)
    models = trace_models(table) if models is None else models

    # One column at a time, each gathered and converted before the next: the parent's peak
    # holds the plan and one column's temporaries, not a copy of every column at once.
    def gathered(name: str) -> pa.Array:
        return table.column(name).take(take).combine_chunks()

    def nums(name: str, fill, dtype) -> np.ndarray:
        return pc.fill_null(gathered(name), fill).to_numpy().astype(dtype)

    kind = _codes(gathered("kind"), list(KIND_VALUES))
    slos = []
    for i, name in enumerate(("slo_ttft_ms", "slo_e2e_ms")):
        slo = pc.fill_null(gathered(name), np.nan).to_numpy().astype(np.float64)
        unset = np.isnan(slo)
        slo[unset] = np.array([DEFAULT_SLO_MS[k][i] for k in KIND_VALUES])[kind[unset]]
        slos.append(slo)
    prompts = messages = None
    if "prompt" in table.column_names and table.column("prompt").null_count < table.num_rows:
        prompt = gathered("prompt")
        if prompt.null_count < len(prompt):
            prompts = PromptColumn.from_texts(prompt.to_pylist())
    rendered = render_block_prompts(table, rows)
    if rendered is not None:
        # Literal prompts and blocks never share a row (trace validation): merge the two.
        texts, chats = rendered
        given = [prompts[j] for j in range(len(rows))] if prompts is not None \
            else [None] * len(rows)
        prompts = PromptColumn.from_texts([g if t is None else t for g, t in zip(given, texts)])
        messages = PromptColumn.from_texts(chats) if any(c is not None for c in chats) else None
    return Plan(
        rows=rows, intended_ns=sel.intended_ns[pos], kind=kind,
        priority=_codes(gathered("priority"), list(PRIORITY_VALUES)),
        model=_codes(gathered("model"), models),
        input_tokens=nums("input_tokens", 0, np.int32),
        output_tokens=nums("output_tokens", -1, np.int32),
        batch_size=nums("batch_size", 1, np.int32),
        slo_ttft_ms=slos[0], slo_e2e_ms=slos[1],
        warmup=sel.warmup[pos].astype(np.int32), prompts=prompts, models=models,
        messages=messages,
    )


def render_block_prompts(table: pa.Table, rows: np.ndarray) -> tuple[list, list] | None:
    """Prompts of ``rows`` rendered from ``prefix_blocks`` ahead of the run (None when the
    trace has no blocks): :func:`cpbench.prompts.render_rows` over the whole trace's columns."""
    from cpbench.blocks import BlockLists, block_tokens_of
    from cpbench.prompts import render_rows

    if "prefix_blocks" not in table.column_names or \
            table.column("prefix_blocks").null_count == table.num_rows:
        return None
    kinds = pc.cast(table.column("kind"), pa.string()).to_pylist()
    return render_rows(rows.tolist(), BlockLists(table.column("prefix_blocks")),
                       table.column("input_tokens").to_pylist(),
                       table.column("output_tokens").to_pylist(),
                       table.column("session").to_pylist(), [k == "chat" for k in kinds],
                       block_tokens_of(table.schema.metadata) or 1)
