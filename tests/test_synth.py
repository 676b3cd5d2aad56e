"""cpbench.record.synth and the shipped traces: byte-identical reproducibility, independent
streams, the distributions asked for, and one-line errors for bad specs."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cpbench.cli import main
from cpbench.errors import ConfigError
from cpbench.record.lengths import parse_length
from cpbench.record.synth import synth_to_file, synthesize
from cpbench.trace import describe, read_trace, sha256_file, trace_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A public sample committed with its provenance (tests/data/public/PROVENANCE.md).
AZURE_CONV = os.path.join(ROOT, "tests", "data", "public", "azure_conv_2023.sample.csv")


def test_same_args_and_seed_give_identical_bytes(tmp_path):
    args = dict(pattern="gamma", shape=0.5, rate_rps=50, requests=3000, mode="hybrid",
                llm_ratio=0.6, chat_share=0.7, seed=42)
    synth_to_file(tmp_path / "a.arrow", **args)
    synth_to_file(tmp_path / "b.arrow", **args)
    synth_to_file(tmp_path / "c.arrow", **{**args, "seed": 43})
    assert sha256_file(tmp_path / "a.arrow") == sha256_file(tmp_path / "b.arrow")
    assert sha256_file(tmp_path / "a.arrow") != sha256_file(tmp_path / "c.arrow")
    meta = trace_metadata(read_trace(tmp_path / "a.arrow"))
    assert meta["seed"] == 42 and meta["params"]["pattern"] == "gamma"
    assert meta["params"]["output_tokens"] == "lognormal:128,0.6,512"   # defaults recorded


def test_cli_synth_is_reproducible_across_processes(tmp_path):
    cmd = [sys.executable, "-m", "cpbench", "record", "synth", "--pattern", "burst",
           "--rate", "0.5", "--burst-rps", "80", "--burst-s", "1", "--period-s", "10",
           "--duration-s", "30", "--mode", "hybrid", "--llm-ratio", "0.7", "--seed", "9"]
    for name in ("x.arrow", "y.arrow"):
        subprocess.run(cmd + ["-o", str(tmp_path / name)], check=True, capture_output=True,
                       timeout=60)
    assert sha256_file(tmp_path / "x.arrow") == sha256_file(tmp_path / "y.arrow")


def test_streams_are_independent():
    base = dict(pattern="poisson", rate_rps=20, requests=2000, mode="hybrid", llm_ratio=0.5,
                seed=7)
    a = synthesize(**base)
    b = synthesize(**base, priority_mix={"HIGH": 1.0})
    c = synthesize(**{**base, "output_tokens": "fixed:50"})
    for col in ("arrival_ns", "kind", "input_tokens", "output_tokens", "batch_size"):
        assert a[col].to_pylist() == b[col].to_pylist()
    assert set(b["priority"].to_pylist()) == {"HIGH"}
    for col in ("arrival_ns", "kind", "priority", "input_tokens", "batch_size"):
        assert a[col].to_pylist() == c[col].to_pylist()


def test_distributions_match_the_spec():
    t = synthesize(pattern="poisson", rate_rps=100, requests=20_000, mode="hybrid",
                   llm_ratio=0.7, chat_share=0.8,
                   priority_mix={"HIGH": 0.1, "NORMAL": 0.5, "LOW": 0.4},
                   input_tokens="lognormal:300,0.5,100000", output_tokens="uniform:10,20",
                   embed_tokens="fixed:64", embed_batch="uniform:2,5", seed=11,
                   models={"llm": "L", "embedding": "E"})
    info = describe(t)
    n = t.num_rows
    assert info["mean_rps"] == pytest.approx(100, rel=0.03)
    assert info["gap_cv"] == pytest.approx(1.0, abs=0.03)
    kinds = np.array(t["kind"].to_pylist())
    llm = kinds != "embedding"
    assert llm.mean() == pytest.approx(0.7, abs=0.015)
    assert (kinds == "chat").sum() / llm.sum() == pytest.approx(0.8, abs=0.015)
    prio = np.array(t["priority"].to_pylist())
    assert (prio == "LOW").mean() == pytest.approx(0.4, abs=0.015)
    tin = t["input_tokens"].to_numpy()
    assert np.median(tin[llm]) == pytest.approx(300, rel=0.03)
    assert np.std(np.log(tin[llm])) == pytest.approx(0.5, rel=0.03)
    assert set(tin[~llm]) == {64}
    tout = np.array(t["output_tokens"].to_pylist(), dtype=object)
    assert all(v is None for v in tout[~llm])
    assert {int(v) for v in tout[llm]} == set(range(10, 21))
    batch = t["batch_size"].to_numpy()
    assert set(batch[~llm]) == {2, 3, 4, 5} and set(batch[llm]) == {1}
    e2e = t["slo_e2e_ms"].to_numpy()
    assert set(e2e[llm]) == {5000.0} and set(e2e[~llm]) == {500.0}
    assert t["slo_ttft_ms"].null_count == n
    assert set(np.array(t["model"].to_pylist())[~llm]) == {"E"}


def test_burst_is_on_off():
    t = synthesize(pattern="burst", rate_rps=0.1, burst_rps=200, burst_s=1, period_s=20,
                   duration_s=200, seed=3)
    info = describe(t)
    assert info["gap_cv"] > 5                      # Poisson is 1, Azure code is ~13
    assert info["idle_1s_bins_percent"] > 80
    assert info["peak_1s_rps"] > 15 * info["mean_rps"]


def test_empirical_lengths_come_from_the_source():
    import csv
    with open(AZURE_CONV, newline="") as fh:
        source = {int(row["ContextTokens"]) for row in csv.DictReader(fh)}
    t = synthesize(rate_rps=10, requests=500, input_tokens=f"empirical:{AZURE_CONV}",
                   seed=1)
    assert set(t["input_tokens"].to_pylist()) <= source


def test_an_empirical_spec_is_read_through_the_callers_reader_once():
    """record/lengths reads no file itself: with_pool takes the reader, caches per file and
    column, and a spec that was never read says so instead of sampling nothing."""
    import pyarrow as pa

    from cpbench.record.lengths import with_pool
    calls = []

    def reader(path):
        calls.append(path)
        return pa.table({"input_tokens": [7, None, 9]})
    spec = parse_length("empirical:/nowhere/lengths-test.arrow", what="--input-tokens")
    with pytest.raises(ValueError, match="was not read"):
        spec.sample(np.random.default_rng(0), 3)
    ready = with_pool(spec, reader)
    assert ready == spec and with_pool(spec, reader).pool is ready.pool
    assert calls == ["/nowhere/lengths-test.arrow"]
    assert set(ready.sample(np.random.default_rng(0), 50).tolist()) == {7, 9}
    assert with_pool(parse_length("fixed:3", what="x"), reader).pool is None


def test_lengths_are_capped_and_parsed():
    assert parse_length("512", what="x").describe() == "fixed:512"
    spec = parse_length("lognormal:1000,2,1500", what="x")
    values = spec.sample(np.random.default_rng(0), 5000)
    assert values.max() == 1500 and values.min() >= 1
    for bad in ("lognormal:-1,2", "uniform:5,1", "gauss:3", "fixed:0", "uniform:a,b"):
        with pytest.raises(ConfigError, match="must be fixed:N"):
            parse_length(bad, what="--input-tokens")


@pytest.mark.parametrize("kwargs, message", [
    (dict(pattern="posson"), "--pattern must be one of uniform, poisson"),
    (dict(mode="embed"), "--mode must be one of llm, hybrid"),
    (dict(mode="hybrid", llm_ratio=1.5), "--llm-ratio must be in"),
    (dict(priority_mix={"URGENT": 1}), "--priority-mix takes weights"),
    (dict(pattern="burst"), "needs --burst-rps"),
    (dict(rate_rps=-3), "--rate must be requests/s > 0"),
    (dict(seed=-1), "--seed must be a non-negative integer"),
])
def test_bad_specs_are_config_errors(kwargs, message):
    args = dict(rate_rps=5, requests=10, seed=1)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        synthesize(**args)


def test_cli_bad_spec_exits_2_with_one_line(tmp_path, capsys):
    status = main(["record", "synth", "--rate", "5", "--requests", "10", "--seed", "1",
                   "--input-tokens", "normal:5", "-o", str(tmp_path / "x.arrow")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--input-tokens must be" in err[0]


SHIPPED = ("light", "medium", "heavy", "balanced", "llm_heavy", "embed_heavy", "burst", "prefix")


def test_shipped_traces_are_valid_small_and_rebuild_byte_for_byte(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import build_traces
    finally:
        sys.path.pop(0)
    rows = {r["name"]: r for r in build_traces.build(str(tmp_path))}
    assert set(rows) == set(SHIPPED)
    for name in SHIPPED:
        path = os.path.join(ROOT, "traces", f"{name}.arrow")
        assert os.path.getsize(path) < 1_000_000
        assert sha256_file(path) == rows[name]["sha256"], f"{name}: rebuild differs"
        info = describe(read_trace(path))
        assert 45 <= info["duration_s"] <= 60
        kinds = set(info["by_kind"])
        assert ("embedding" in kinds) == (name not in ("light", "medium", "heavy", "prefix"))
        assert ("prefix" in info) == (name == "prefix")
    prefix = describe(read_trace(os.path.join(ROOT, "traces", "prefix.arrow")))["prefix"]
    assert prefix["reuse_percent"] >= 50
    burst = describe(read_trace(os.path.join(ROOT, "traces", "burst.arrow")))
    assert burst["gap_cv"] > 5 and burst["idle_1s_bins_percent"] > 60


@pytest.mark.parametrize("kind", ["llm", "embedding"])
def test_shipped_corpora_build_exact_lengths(kind):
    from cpbench.prompts import CorpusPrompts, corpus_path, count_tokens, load_corpus
    texts = load_corpus(corpus_path(kind))
    assert len(texts) >= 40 and len(set(texts)) == len(texts)
    corpus = CorpusPrompts(texts, max_words=2048)
    for n, tag in ((1, 0), (7, 3), (250, 11), (2048, 5), (5000, 1)):
        prompt = corpus.build(n, tag)
        assert count_tokens(prompt) == n
    assert corpus.build(3, 1).split() == texts[1].split()[:3]
    assert corpus.build(0, 4) == ""


@pytest.mark.parametrize("kind", ["llm", "embedding"])
def test_shipped_corpora_are_package_data(kind):
    """The corpora live inside the package and are declared package data, so an installed
    wheel has them (.ci/run checks a real wheel from outside the checkout)."""
    from pathlib import Path

    try:
        import tomllib
    except ImportError:                 # Python 3.10
        import tomli as tomllib

    import cpbench
    from cpbench.prompts import corpus_path
    package = Path(cpbench.__file__).resolve().parent
    path = Path(corpus_path(kind)).resolve()
    assert path.is_file() and path.is_relative_to(package)
    with open(Path(ROOT) / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["tool"]["setuptools"]["package-data"]["cpbench"]
    assert any(path.relative_to(package).match(glob) for glob in declared)


def test_corpus_errors_are_one_line(tmp_path):
    from cpbench.prompts import load_corpus
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "wrong key"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_corpus(str(bad))


def test_ttft_deadline_applies_to_its_class_only():
    t = synthesize(rate_rps=10, requests=400, mode="hybrid", llm_ratio=0.5, seed=4,
                   slo_ttft_ms={"llm": 300.0}, slo_e2e_ms={"embedding": 250.0})
    kinds = np.array(t["kind"].to_pylist())
    ttft = np.array(t["slo_ttft_ms"].to_pylist(), dtype=object)
    assert set(ttft[kinds != "embedding"]) == {300.0}
    assert set(ttft[kinds == "embedding"]) == {None}
    assert set(t["slo_e2e_ms"].to_numpy()[kinds == "embedding"]) == {250.0}


def test_prefix_groups_and_sessions_are_reproducible_and_valid(tmp_path):
    """Prefix workloads: same seed, same bytes; groups share their leading blocks; session
    turns extend the previous turn by its answer and new text."""
    from cpbench.prompts import answer_blocks
    from cpbench.record.synth import synth_to_file
    from cpbench.trace import read_trace, trace_metadata

    kw = dict(rate_rps=20.0, requests=120, seed=11, prefix_groups=3, prefix_tokens=40,
              prefix_zipf=1.5, input_tokens="uniform:1,30")
    synth_to_file(str(tmp_path / "a.arrow"), **kw)
    synth_to_file(str(tmp_path / "b.arrow"), **kw)
    assert (tmp_path / "a.arrow").read_bytes() == (tmp_path / "b.arrow").read_bytes()
    table = read_trace(tmp_path / "a.arrow")
    meta = trace_metadata(table)
    assert meta["block_tokens"] == 16 and meta["params"]["prefix_groups"] == 3
    blocks = table.column("prefix_blocks").to_pylist()
    tin = table.column("input_tokens").to_pylist()
    groups = {tuple(b) for b in blocks}
    assert groups <= {(0, 1), (2, 3), (4, 5)}               # 40 tokens -> 2 whole blocks
    counts = sorted((sum(tuple(b) == g for b in blocks) for g in groups), reverse=True)
    assert counts[0] > counts[-1]                            # Zipf: the first group leads
    assert all(32 < n <= 62 for n in tin)

    synth_to_file(str(tmp_path / "s.arrow"), rate_rps=20.0, requests=40, seed=12, turns=4,
                  block_tokens=8, chat_share=0.5)
    t = read_trace(tmp_path / "s.arrow")
    rows = t.to_pylist()
    by_session: dict[str, list[dict]] = {}
    for r in rows:
        by_session.setdefault(r["session"], []).append(r)
    assert len(by_session) == 10 and all(len(v) == 4 for v in by_session.values())
    for turns in by_session.values():
        for prev, cur in zip(turns, turns[1:]):
            n = len(prev["prefix_blocks"])
            assert cur["prefix_blocks"][:n] == prev["prefix_blocks"]
            assert len(cur["prefix_blocks"]) > n + answer_blocks(prev["output_tokens"], 8)
            assert cur["input_tokens"] == 8 * len(cur["prefix_blocks"])


def test_prefix_flags_reject_bad_values():
    from cpbench.record.synth import synthesize
    with pytest.raises(ConfigError, match="--prefix-tokens must be at least one block"):
        synthesize(rate_rps=5.0, requests=10, seed=1, prefix_groups=2, prefix_tokens=3)
    with pytest.raises(ConfigError, match="--turns must be >= 1"):
        synthesize(rate_rps=5.0, requests=10, seed=1, turns=0)
