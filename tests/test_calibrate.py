"""``cpbench calibrate`` end to end, the stored file, and the replay/report check that uses it."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from cpbench.calibrate import FixedResponder, find_max_rate, poisson_trace
from cpbench.calibration import (calibrated_rate_for_mix, calibration_path, calibration_warnings,
                                 load_calibration, save_calibration)
from cpbench.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def responder():
    r = FixedResponder()
    yield r
    r.stop()


def _calibration(chat_rps: float, embedding_rps: float) -> dict:
    return {"version": 1, "created_utc": "2026-01-01T00:00:00+00:00", "workers": 1,
            "target": "embedded fixed responder",
            "kinds": {"chat": {"max_rate_rps": chat_rps, "points": [{"rate_rps": 1.0}]},
                      "embedding": {"max_rate_rps": embedding_rps, "points": []}}}


def test_find_max_rate_brackets_then_bisects():
    probed = []

    def probe(rate):
        probed.append(rate)
        return rate <= 1234.0
    best = find_max_rate(probe, start_rps=100, max_rps=1e6, max_points=20, rel_tol=0.05)
    assert 1234.0 / 1.05 <= best <= 1234.0
    assert probed[:5] == [100, 200, 400, 800, 1600]          # doubling until the first failure
    assert find_max_rate(lambda r: False, start_rps=100, max_rps=1e6, max_points=4) == 0.0
    capped = []
    assert find_max_rate(lambda r: capped.append(r) or True, start_rps=100, max_rps=300,
                         max_points=10) == 300
    assert capped == [100, 200, 300]


def test_fixed_responder_answers_chat_sse_and_embeddings(responder):
    for path, marker in (("/v1/chat/completions", b"data: [DONE]"),
                         ("/v1/embeddings", b'"embedding":[')):
        req = urllib.request.Request(responder.url + path, data=b'{"model":"bench"}',
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        assert resp.status == 200 and marker in body
    emb = json.loads(body)
    assert len(emb["data"][0]["embedding"]) == 384


def test_calibrate_cli_end_to_end_stores_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CPBENCH_HOME", str(tmp_path / "home"))
    status = main(["calibrate", "--duration-s", "0.4", "--start-rps", "200", "--max-rps", "400",
                   "--max-points", "2", "--workers", "1", "--quiet"])
    assert status == 0
    path = tmp_path / "home" / "calibration.json"
    assert calibration_path() == path and str(path) in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["workers"] == 1
    assert data["criteria"] == {"lag_p99_ms": 1.0, "shortfall_pct": 1.0, "errors": 0}
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"]
    assert set(data["kinds"]) == {"chat", "embedding"}
    for kind, entry in data["kinds"].items():
        points = entry["points"]
        assert 1 <= len(points) <= 2
        for p in points:
            # The fixed responder answers every request: a probe fails on lag or rate only.
            assert p["errors"] == 0 and p["sent"] == p["requests"] > 0
            assert p["held"] == (p["shortfall_pct"] <= 1.0 and p["lag_p99_ms"] <= 1.0)
        held_rates = [p["rate_rps"] for p in points if p["held"]]
        assert entry["max_rate_rps"] == (max(held_rates) if held_rates else 0.0)
    assert [f.name for f in path.parent.iterdir()] == ["calibration.json"]   # no temp left
    loaded = load_calibration()
    assert loaded["path"] == str(path) and "points" not in loaded["kinds"]["chat"]


def test_a_probe_the_client_stopped_is_not_held_and_the_search_goes_on(tmp_path, monkeypatch,
                                                                      capsys):
    # Past the host's capacity a probe ends with the client's own stop (ClientSaturated, exit
    # 4 from `cpbench replay`); calibrate records it as not held and carries on. The stop is
    # simulated after a real run: a real one needs a rate this host cannot send.
    import cpbench.replaying.run as run_mod
    from cpbench.errors import ClientSaturated
    real = run_mod.run_replay

    def stopped_at_400(trace, **kwargs):
        out = real(trace, **kwargs)
        if "-1" in Path(kwargs["output"]).name:            # the second probe of each kind
            raise ClientSaturated("the client fell more than 1 s behind the schedule")
        return out

    monkeypatch.setattr(run_mod, "run_replay", stopped_at_400)
    monkeypatch.setenv("CPBENCH_HOME", str(tmp_path / "home"))
    status = main(["calibrate", "--duration-s", "0.4", "--start-rps", "200", "--max-rps", "400",
                   "--max-points", "2", "--workers", "1", "--kinds", "embedding"])
    assert status == 0
    points = json.loads((tmp_path / "home" / "calibration.json").read_text())[
        "kinds"]["embedding"]["points"]
    # Two probes whatever the first gives (200 held: 400 next; not held: 100 next).
    assert [p["client_saturated"] for p in points] == [False, True]
    assert points[1]["held"] is False
    assert "not held (client saturated: stopped)" in capsys.readouterr().err


def test_calibrate_rejects_bad_kinds_in_one_line(tmp_path, capsys):
    assert main(["calibrate", "--kinds", "chat,video", "-o", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kinds" in err[0]
    assert not (tmp_path / "c.json").exists()


def test_load_calibration_absent_or_corrupt_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CPBENCH_HOME", str(tmp_path))
    assert load_calibration() is None
    (tmp_path / "calibration.json").write_text("{not json")
    assert load_calibration() is None


def test_rate_for_a_kind_mix_is_the_harmonic_mean():
    cal = _calibration(1000.0, 4000.0)
    mix = [{"kind": "chat", "requests": 50}, {"kind": "embedding", "requests": 50}]
    assert calibrated_rate_for_mix(cal, mix) == pytest.approx(1 / (0.5 / 1000 + 0.5 / 4000))
    assert calibrated_rate_for_mix(cal, [{"kind": "completion", "requests": 3}]) == 1000.0
    assert calibrated_rate_for_mix(cal, []) is None


def _replay(tmp_path, url: str, name: str) -> dict:
    trace = tmp_path / f"{name}.arrow"
    poisson_trace(trace, "chat", 100.0, 0.5, seed=7)
    out = tmp_path / name
    assert main(["replay", str(trace), "--url", url, "-o", str(out), "--workers", "1",
                 "--quiet"]) == 0
    return json.loads((out / "summary.json").read_text())


def test_replay_carries_calibration_and_report_warns_near_it(tmp_path, monkeypatch, responder):
    home = tmp_path / "home"
    monkeypatch.setenv("CPBENCH_HOME", str(home))
    save_calibration(_calibration(chat_rps=50.0, embedding_rps=50.0))   # a run of 100 > 80 %
    summary = _replay(tmp_path, responder.url, "near")
    cal = summary["run"]["calibration"]
    assert cal["path"] == str(home / "calibration.json")
    assert cal["kinds"]["chat"]["max_rate_rps"] == 50.0
    warnings = calibration_warnings(summary)
    assert any("calibrated rate" in w for w in warnings)
    md = (tmp_path / "near" / "report.md").read_text()
    assert "Warning:" in md and "calibrated rate for this kind mix" in md
    assert "may have been the" in md and "bottleneck" in md
    html = (tmp_path / "near" / "report.html").read_text()
    assert "Client calibration" in html and "WARNING" in html

    # A host calibrated far above the run: no rate warning (a lag warning may still show on a
    # busy machine, and only with lag p99 > 1 ms).
    save_calibration(_calibration(chat_rps=1e6, embedding_rps=1e6))
    summary = _replay(tmp_path, responder.url, "far")
    assert not any("calibrated rate" in w for w in calibration_warnings(summary))
    md = (tmp_path / "far" / "report.md").read_text()
    assert "calibrated rate for this kind mix" not in md
    assert ("dispatch-lag p99 was" in md) == (summary["dispatch_lag_ms"]["p99"] > 1.0)

    # No stored calibration: null in the summary, and the report says how to get one.
    (home / "calibration.json").unlink()
    summary = _replay(tmp_path, responder.url, "none")
    assert summary["run"]["calibration"] is None
    assert "cpbench calibrate" in (tmp_path / "none" / "report.md").read_text()


def test_a_responder_that_never_says_its_port_is_given_up_on():
    """A responder that starts and hangs before printing its port: FixedResponder stops
    waiting at its deadline, kills it and says so, instead of blocking on ``readline()``."""
    import sys
    import threading

    from cpbench.errors import TargetError
    hang = [sys.executable, "-c", "import sys, time; sys.stderr.write('stuck\\n'); "
            "sys.stderr.flush(); time.sleep(3600)"]
    outcome: list[BaseException] = []

    def start():
        try:
            FixedResponder(ready_s=1.0, cmd=hang).stop()
        except BaseException as exc:        # noqa: BLE001 - handed to the test thread
            outcome.append(exc)
    t = threading.Thread(target=start, daemon=True)
    t.start()
    t.join(120)             # a liveness bound, not a timing assertion: the old code never returns
    assert not t.is_alive(), "FixedResponder is still waiting for a port"
    assert len(outcome) == 1 and isinstance(outcome[0], TargetError)
    assert "did not start: stuck" in str(outcome[0])
