"""Importers: each public sample keeps its arrivals and lengths exactly (checked against the
source file parsed independently, with the standard library); BurstGPT on a file the test
writes; ServeGen windows come out with their rate and CV."""
from __future__ import annotations

import csv
import datetime
import json
import os

import numpy as np
import pytest

from cpbench.cli import main
from cpbench.errors import ConfigError, TraceError
from cpbench.record.importers import import_trace, read_servegen_windows
from cpbench.trace import read_trace, trace_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Public samples committed with their provenance and licences (tests/data/public/PROVENANCE.md).
PUBLIC = os.path.join(ROOT, "tests", "data", "public")


def _azure_source(name: str) -> tuple[np.ndarray, list[int], list[int]]:
    with open(os.path.join(PUBLIC, name), newline="") as fh:
        rows = list(csv.DictReader(fh))
    stamps = []
    for row in rows:
        day, frac = row["TIMESTAMP"].split(".")
        base = datetime.datetime.strptime(day, "%Y-%m-%d %H:%M:%S")
        # 7 fractional digits = 100 ns units; integer arithmetic keeps them exact.
        stamps.append(int(base.replace(tzinfo=datetime.timezone.utc).timestamp()) * 10**9
                      + int(frac.ljust(9, "0")))
    return (np.array(stamps, np.int64), [int(r["ContextTokens"]) for r in rows],
            [int(r["GeneratedTokens"]) for r in rows])


def _mooncake_source(name: str) -> tuple[np.ndarray, list[int], list[int]]:
    with open(os.path.join(PUBLIC, name)) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return (np.array([r["timestamp"] for r in rows], np.int64) * 10**6,
            [r["input_length"] for r in rows], [r["output_length"] for r in rows])


@pytest.mark.parametrize("fmt, name, rows", [
    ("azure", "azure_code_2023.sample.csv", 2598),
    ("azure", "azure_conv_2023.sample.csv", 2867),
    ("mooncake", "mooncake_conversation.sample.jsonl", 2728),
    ("mooncake", "mooncake_synthetic.sample.jsonl", 2000),
])
def test_public_sample_kept_exactly(tmp_path, fmt, name, rows):
    t, tin, tout = (_azure_source if fmt == "azure" else _mooncake_source)(name)
    out = tmp_path / "out.arrow"
    assert main(["record", "import", fmt, os.path.join(PUBLIC, name), "-o", str(out),
                 "--kind", "completion", "--priority", "LOW", "--slo-e2e-ms", "8000"]) == 0
    trace = read_trace(out)
    assert trace.num_rows == len(t) == rows
    arrivals = trace["arrival_ns"].to_numpy()
    assert np.array_equal(arrivals, t - t[0])             # every offset, to the nanosecond
    assert trace["input_tokens"].to_pylist() == tin
    assert trace["output_tokens"].to_pylist() == tout
    assert set(trace["kind"].to_pylist()) == {"completion"}
    assert set(trace["priority"].to_pylist()) == {"LOW"}
    assert set(trace["slo_e2e_ms"].to_pylist()) == {8000.0}
    meta = trace_metadata(trace)
    assert meta["source"] == name and meta["generator"] == f"cpbench record import {fmt}"
    assert len(meta["params"]["source_sha256"]) == 64


def test_window_and_speed():
    path = os.path.join(PUBLIC, "azure_conv_2023.sample.csv")
    t, tin, _ = _azure_source("azure_conv_2023.sample.csv")
    rel = t - t[0]
    table, params = import_trace("azure", path, start_s=100, end_s=200, speed=4.0)
    keep = (rel >= 100 * 10**9) & (rel < 200 * 10**9)
    assert table.num_rows == keep.sum()
    expected = np.rint((rel[keep] - 100 * 10**9) / 4.0).astype(np.int64)
    assert np.array_equal(table["arrival_ns"].to_numpy(), expected)
    assert table["input_tokens"].to_pylist() == list(np.array(tin)[keep])
    with pytest.raises(TraceError, match="holds no rows; the source spans 599.971"):
        import_trace("azure", path, start_s=5000)


def test_priority_mix_and_mooncake_jitter():
    path = os.path.join(PUBLIC, "mooncake_conversation.sample.jsonl")
    table, _ = import_trace("mooncake", path, priority={"HIGH": 0.5, "LOW": 0.5}, seed=3,
                            jitter_s=3.0)
    prio = np.array(table["priority"].to_pylist())
    assert set(prio) == {"HIGH", "LOW"} and abs((prio == "HIGH").mean() - 0.5) < 0.05
    arrivals = table["arrival_ns"].to_numpy()
    assert (np.diff(arrivals) >= 0).all()
    assert (np.diff(arrivals) == 0).mean() < 0.01   # the 3-s grid is spread out


def test_burstgpt_written_by_test(tmp_path):
    src = tmp_path / "burstgpt.csv"
    src.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,ChatGPT,472,18,490,Conversation log\n"
        "45,ChatGPT,1087,0,1087,Conversation log\n"
        "118,GPT-4,417,153,570,API log\n"
        "118.25,ChatGPT,1360,1,1361,Conversation log\n"
        "130.5,GPT-4,20,3,23,API log\n")
    out = tmp_path / "b.arrow"
    assert main(["record", "import", "burstgpt", str(src), "-o", str(out)]) == 0
    trace = read_trace(out)
    assert trace["arrival_ns"].to_pylist() == [0, 113 * 10**9, 113_250_000_000,
                                               125_500_000_000]
    assert trace["input_tokens"].to_pylist() == [472, 417, 1360, 20]
    assert trace["output_tokens"].to_pylist() == [18, 153, 1, 3]
    assert trace["model"].to_pylist() == ["ChatGPT", "GPT-4", "ChatGPT", "GPT-4"]
    assert trace_metadata(trace)["params"]["dropped_zero_output_rows"] == 1
    table, _ = import_trace("burstgpt", str(src), model="cpbench-llm-7b")
    assert set(table["model"].to_pylist()) == {"cpbench-llm-7b"}
    (tmp_path / "wrong.csv").write_text("time,tokens\n1,2\n")
    with pytest.raises(TraceError, match="not a BurstGPT CSV"):
        import_trace("burstgpt", str(tmp_path / "wrong.csv"))


def _window_cv(arrivals_s: np.ndarray, lo: float, hi: float) -> tuple[int, float]:
    inside = arrivals_s[(arrivals_s >= lo) & (arrivals_s < hi)]
    gaps = np.diff(inside)
    return len(inside), float(gaps.std() / gaps.mean()) if len(gaps) > 1 else float("nan")


def test_servegen_windows_rate_and_cv(tmp_path):
    windows = [(0, 5.0, 1.0, "Gamma"), (600, 2.0, 3.0, "Weibull"), (1200, 0, 0, ""),
               (1800, 4.0, 0.5, "Gamma"), (2400, 1.2, 8.6, "Weibull"), (3000, 3.0, 4.0, "Gamma")]
    src = tmp_path / "chunk-9-trace.csv"
    src.write_text("".join(f"{w},{r},{c},{d},0.5,1.0\n" for w, r, c, d in windows))
    table, params = import_trace("servegen", str(src), seed=5, input_tokens="fixed:100",
                                 output_tokens="uniform:5,9")
    assert params["dataset"] is None
    t = table["arrival_ns"].to_numpy() / 1e9
    for w0, rate, cv, dist in windows:
        n, got_cv = _window_cv(t, w0, w0 + 600)
        assert n == round(rate * 600)
        if n > 2:
            assert got_cv == pytest.approx(cv, rel=0.02), (w0, got_cv, cv)
    assert set(table["input_tokens"].to_pylist()) == {100}
    again, _ = import_trace("servegen", str(src), seed=5, input_tokens="fixed:100",
                            output_tokens="uniform:5,9")
    assert again.equals(table)


def test_servegen_public_sample_with_dataset(tmp_path):
    trace_csv = os.path.join(PUBLIC, "servegen_language_m-large_chunk-0-trace.sample.csv")
    dataset = os.path.join(PUBLIC, "servegen_language_m-large_chunk-0-dataset.sample.json")
    out = tmp_path / "sg.arrow"
    assert main(["record", "import", "servegen", trace_csv, "--dataset", dataset,
                 "--start-s", "57600", "--end-s", "64800", "--seed", "2", "-o",
                 str(out)]) == 0
    trace = read_trace(out)
    t = trace["arrival_ns"].to_numpy() / 1e9
    for w0, rate, cv, family in read_servegen_windows(trace_csv):
        if 57600 <= w0 < 64800:
            n, got_cv = _window_cv(t, w0 - 57600, w0 - 57600 + 600)
            assert n == round(rate * 600)
            if n > 2:
                assert got_cv == pytest.approx(cv, rel=0.02)
    with open(dataset) as fh:
        pmf = json.load(fh)["43200"]   # PMFs every 21,600 s: 43200 covers the cut
    import ast
    support = set(ast.literal_eval(pmf["input_tokens"]))
    assert set(trace["input_tokens"].to_pylist()) <= support


def test_bad_options_and_sources(tmp_path, capsys):
    with pytest.raises(ConfigError, match="import format must be one of"):
        import_trace("splitwise", __file__)
    with pytest.raises(ConfigError, match="--speed must be a positive number"):
        import_trace("azure", __file__, speed=0)
    with pytest.raises(TraceError, match="no such file"):
        import_trace("azure", str(tmp_path / "absent.csv"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": "soon"}\n')
    status = main(["record", "import", "mooncake", str(bad), "-o", str(tmp_path / "x.arrow")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "not a Mooncake JSONL trace" in err[0]
    sg = tmp_path / "sg.csv"
    sg.write_text("0,abc,1,Gamma,1,1\n")
    with pytest.raises(TraceError, match="line 1"):
        import_trace("servegen", str(sg))


@pytest.mark.parametrize("name", ["mooncake_conversation.sample.jsonl",
                                  "mooncake_synthetic.sample.jsonl"])
def test_mooncake_hash_ids_kept_exactly(tmp_path, name):
    """Every hash_ids list of the shared samples survives the import as prefix_blocks, in
    order, with the 512-token block size in the metadata (parsed here with json, not Arrow)."""
    path = os.path.join(PUBLIC, name)
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    # the importer keeps equal timestamps in file order when it sorts
    rows = [r for _, r in sorted(enumerate(rows), key=lambda x: (x[1]["timestamp"], x[0]))]
    out = tmp_path / "m.arrow"
    assert main(["record", "import", "mooncake", path, "-o", str(out)]) == 0
    table = read_trace(out)
    assert trace_metadata(table)["block_tokens"] == 512
    assert table.column("prefix_blocks").to_pylist() == [r["hash_ids"] for r in rows]
    assert table.column("input_tokens").to_pylist() == [r["input_length"] for r in rows]
