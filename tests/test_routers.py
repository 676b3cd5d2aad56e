"""Real routers (vllm-router, sglang-router) in front of `cpbench sim --fleet 4`.

Everything runs in a network namespace the test creates (tools/routerlab.py: `unshare -n`,
loopback only), so whatever a router tries to reach stays on this host. Each router and the
fleet are stopped by their PIDs. A test skips, with the reason, when a router is not installed
(`pip install "cpbench[routers]"`), cannot start, or namespaces are not allowed here.
Counts (requests, prefix hits) come from the engines, never from timings.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import routerlab  # noqa: E402  (tools/ is not a package)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REQUESTS = 6 * 12
PREFIX_TRACE = ROOT / "traces" / "prefix.arrow"


@functools.lru_cache(maxsize=1)
def _netns_problem() -> str | None:
    return routerlab.netns_problem()


def _need(kind: str) -> None:
    reason = _netns_problem() or routerlab.router_missing(kind)
    if reason:
        pytest.skip(reason)


def _lab(spec: dict, out: Path) -> dict:
    lab = routerlab.run_lab(spec, out)
    assert "error" not in lab, lab.get("error")
    failed = {n: r["router_failed"] for n, r in lab["routers"].items() if "router_failed" in r}
    if failed:
        pytest.skip(f"router could not start: {failed}")
    return lab


def _trace(tmp_path: Path, salt: str) -> Path:
    return routerlab.write_prefix_trace(tmp_path / f"prefix-{salt}.arrow", groups=6,
                                        per_group=12, prefix_words=128, gap_ms=25, salt=salt)


def _replay(trace: Path, router: str, out: str) -> list[str]:
    return ["replay", str(trace), "--url", "{router:%s}" % router, "-o", "{out}/" + out,
            "--workers", "1", "--quiet", "--no-report"]


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_prefix_trace_through_the_router_completes_and_cache_aware_hits_more(tmp_path, kind):
    _need(kind)
    # One fleet, two routers; each run's prompts are new to the fleet (own salt), so each
    # step's prefix hits are that policy's alone.
    rr, ca = _trace(tmp_path, "a"), _trace(tmp_path, "b")
    lab = _lab({"fleet": 4, "routers": {"rr": [kind, "round_robin"], "ca": [kind, "cache_aware"]},
                "fleet_args": ["--decode-step-ms", "2"],
                "steps": [_replay(rr, "rr", "rr"), _replay(ca, "ca", "ca"),
                          # The shipped prefix trace (shared system prompts, multi-turn
                          # sessions), its first seconds, last: its prompts are not salted.
                          [*_replay(PREFIX_TRACE, "ca", "shipped"), "--duration", "4"],
                          # ... and the router's non-streaming path: one JSON body each.
                          [*_replay(PREFIX_TRACE, "rr", "unstreamed"), "--duration", "4",
                           "--no-stream"]]},
               tmp_path / "lab")
    ratios = {}
    for step, name in zip(lab["steps"], ("rr", "ca")):
        assert step["rc"] == 0, step["stderr"]
        summary = json.loads((tmp_path / "lab" / name / "summary.json").read_text())
        assert summary["requests"]["completed"] == REQUESTS
        assert summary["requests"]["errors"] == 0 and summary["requests"]["by_error_class"] == {}
        engines = step["engines"]
        assert sum(r["requests"] for r in engines["per_engine"]) == REQUESTS
        ratios[name] = engines["fleet_prefix_hit_ratio"]
    # round robin spreads every group over the 4 engines; cache-aware keeps a group on one.
    shipped = lab["steps"][2]
    assert shipped["rc"] == 0, shipped["stderr"]
    summary = json.loads((tmp_path / "lab" / "shipped" / "summary.json").read_text())
    assert summary["requests"]["sent"] > 0 and summary["requests"]["errors"] == 0
    assert summary["requests"]["completed"] == summary["requests"]["sent"]
    assert sum(r["requests"] for r in shipped["engines"]["per_engine"]) \
        == summary["requests"]["sent"]
    unstreamed = lab["steps"][3]
    assert unstreamed["rc"] == 0, unstreamed["stderr"]
    summary = json.loads((tmp_path / "lab" / "unstreamed" / "summary.json").read_text())
    assert summary["requests"]["sent"] > 0 and summary["requests"]["errors"] == 0
    assert summary["requests"]["completed"] == summary["requests"]["sent"]
    assert summary["run"]["options"]["stream"] is False
    assert summary["rates"]["output_tps"] > 0                    # tokens from usage
    rr_rows = lab["steps"][0]["engines"]["per_engine"]
    assert [r["requests"] for r in rr_rows] == [REQUESTS // 4] * 4
    assert ratios["ca"] > ratios["rr"], ratios


def test_compare_targets_through_vllm_router_writes_runs_paired_stats_and_report(tmp_path):
    _need("vllm")
    trace = _trace(tmp_path, "c")
    launch = ("ca=vllm-router --host 127.0.0.1 --port {port} --prometheus-host 127.0.0.1 "
              "--prometheus-port {metrics_port} --policy cache_aware --worker-urls "
              "{engine:0} {engine:1} {engine:2} {engine:3}")
    lab = _lab({"fleet": 4, "routers": {"rr": ["vllm", "round_robin"]},
                "fleet_args": ["--decode-step-ms", "2"],
                "steps": [["compare", str(trace), "--targets", "rr={router:rr}", "--launch",
                           launch, "--workers", "1", "--drain-s", "0", "--quiet",
                           "-o", "{out}/cmp"]]}, tmp_path / "lab")
    step = lab["steps"][0]
    assert step["rc"] == 0, step["stderr"]
    out = tmp_path / "lab" / "cmp"
    result = json.loads((out / "comparison.json").read_text())
    assert result["policies"] == ["rr", "ca"]
    for name in ("rr", "ca"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["requests"]["completed"] == REQUESTS
    diffs = [d for d in result["stats"]["differences"] if d["policy"] == "ca"]
    assert diffs and all("ci_low" in d for d in diffs)
    assert "vllm-router" in result["targets"]["ca"]["launch_command"]
    # The launched router's own page was scraped on the run's clock.
    monitor = (out / "ca" / "monitor.arrow").read_bytes()
    assert b"vllm_router_" in monitor
    html = (out / "report.html").read_text()
    assert "Paired differences" in html


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_engines_that_all_fail_give_classified_errors_and_exit_3(tmp_path, kind):
    _need(kind)
    # replay checks the ratio once 100 requests are done (runner.py), so send more than that.
    trace = routerlab.write_prefix_trace(tmp_path / "f.arrow", groups=2, per_group=75,
                                         prefix_words=32, gap_ms=4)
    lab = _lab({"fleet": 4, "routers": {"r": [kind, "round_robin"]},
                "fleet_args": ["--fault-error-percent", "100"],
                "steps": [["replay", str(trace), "--url", "{router:r}", "-o", "{out}/r",
                           "--workers", "1", "--quiet", "--no-report", "--timeout", "10",
                           "--max-error-ratio", "0.5"]]}, tmp_path / "lab")
    step = lab["steps"][0]
    assert step["rc"] == 3, step["stderr"]
    summary = json.loads((tmp_path / "lab" / "r" / "summary.json").read_text())
    by_class = summary["requests"]["by_error_class"]
    assert summary["requests"]["errors"] > 0 and by_class
    assert sum(by_class.values()) == summary["requests"]["errors"]
