"""The report's facts and tables as plain strings, shared by the HTML and Markdown writers.

Owns formatting (milliseconds with sensible precision, percents, counts) so both outputs say
the same thing. Cells are raw text; each writer escapes them for its own format.
"""
from __future__ import annotations

from dataclasses import dataclass

from cpbench.calibration import calibration_fact, calibration_warnings
from cpbench.errors import ClientSaturated
from cpbench.reporting.load import RunData, attainment_pct, llm_share, run_facts

SUMMARY_PERCENTS = ("p50", "p90", "p95", "p99", "p99.9")
LATENCY_ROWS = (("TTFT", "ttft"), ("End-to-end", "e2e"))


@dataclass
class Table:
    """A titled table of display strings."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def stopped_note(run_info: dict) -> str:
    """What the header says after a run's duration when it stopped early, and why."""
    if not run_info.get("interrupted"):
        return ""
    why = run_info.get("stop_reason")
    if why == ClientSaturated.stop_reason:
        return (" — STOPPED: the client fell behind its schedule (--max-behind); what it sent "
                "measures the client as much as the target")
    return f" — interrupted ({why})" if why else " — interrupted"


def fmt_ms(value) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_num(value, digits: int = 1) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def fmt_pct(value) -> str:
    return f"{value:.2f} %" if isinstance(value, (int, float)) else "–"


def run_facts_rows(run: RunData) -> list[tuple[str, str]]:
    """The header facts of one run: what ran, against what, and what the client managed."""
    s, info = run.summary, run.run
    req, rates, lag = s.get("requests") or {}, s.get("rates") or {}, s.get("dispatch_lag_ms") or {}
    errors = req.get("by_error_class") or {}
    target = str(info.get("target", "–")) + (" (embedded sim)" if info.get("embedded_target")
                                             else "")
    trace = str(info.get("trace", "–"))
    if run.trace_info:
        trace += " (" + ", ".join(f"{k} {v}" for k, v in run.trace_info.items()) + ")"
    rows = [("Trace", trace), ("Target", target),
            ("Policy", str(info.get("policy") or "–")),
            ("Started (UTC)", str(info.get("started_utc", "–"))),
            ("Duration", f"{fmt_num(info.get('duration_s'), 1)} s" + stopped_note(info)),
            ("Requests", " · ".join(f"{k} {fmt_num(req.get(k))}" for k in
                                    ("scheduled", "sent", "completed", "errors", "warmup")
                                    if k in req)),
            ("Errors by class", ", ".join(f"{k}: {v:,}" for k, v in sorted(errors.items()))
             or "none"),
            ("Rates", f"scheduled {fmt_num(rates.get('scheduled_rps'))} req/s · achieved "
                      f"{fmt_num(rates.get('achieved_rps'))} req/s · completed "
                      f"{fmt_num(rates.get('completed_rps'))} req/s · output "
                      f"{fmt_num(rates.get('output_tps'))} tok/s"),
            ("SLO", f"attainment {fmt_pct(attainment_pct(s.get('slo')))} · goodput "
                    f"{fmt_num((s.get('slo') or {}).get('goodput_rps'))} req/s"),
            ("Dispatch lag (ms)", " · ".join(f"{k} {fmt_ms(lag.get(k))}" for k in
                                             ("p50", "p99", "p99.9", "max") if k in lag) or "–"),
            ("Workers", fmt_num(info.get("workers"))),
            ("Client calibration", calibration_fact(s)
             + "".join(f" — WARNING: {w}" for w in calibration_warnings(s))),
            ("cpbench version", str(s.get("cpbench_version", "–"))),
            ("Result directory", str(run.path))]
    cpu = (s.get("monitor") or {}).get("client_cpu") or {}
    if isinstance(cpu.get("mean_pct"), (int, float)):
        host = (f" · whole host busy {cpu['host_mean_pct']:.0f} % mean"
                if isinstance(cpu.get("host_mean_pct"), (int, float)) else "")
        rows.append(("Client CPU", f"cpbench {cpu['mean_pct']:.0f} % mean, "
                                   f"{cpu.get('max_pct', float('nan')):.0f} % max of the host"
                                   + host))
    if "prefix_cache" in s:
        from cpbench.monitor.prefix import format_prefix_cache
        rows.append(("Prefix cache", format_prefix_cache(s).split("  ", 1)[1]))
    # Options the run set; the policy has its own row (an unset option is not an option).
    options = {k: v for k, v in (info.get("options") or {}).items()
               if v is not None and k != "policy"}
    if options:
        rows.append(("Options", ", ".join(f"{k}={v}" for k, v in sorted(options.items()))))
    gpu = (s.get("monitor") or {}).get("gpu") or {}
    if gpu.get("available") is False:
        rows.append(("GPU monitoring", f"unavailable ({gpu.get('reason') or 'no reason'})"))
    if run.models:
        rows.append(("Models", ", ".join(f"{m} ({n:,})" for m, n in run.models)))
    return rows


def latency_table(run: RunData) -> Table:
    lat = run.summary.get("latency_ms") or {}
    rows = []
    for label, key in LATENCY_ROWS:
        for side in ("sent", "intended"):
            entry = lat.get(f"{key}_from_{side}") or {}
            rows.append([f"{label} from {side}", fmt_num(entry.get("count"))]
                        + [fmt_ms(entry.get(p)) for p in SUMMARY_PERCENTS]
                        + [fmt_ms(entry.get("max"))])
    itl = lat.get("itl") or {}
    if itl:
        rows.append(["Inter-token", fmt_num(itl.get("count"))]
                    + [fmt_ms(itl.get(p)) for p in SUMMARY_PERCENTS] + [fmt_ms(itl.get("max"))])
    return Table("Latency (ms)", ["metric", "count", *SUMMARY_PERCENTS, "max"], rows,
                 note="from sent = service latency; from intended = from the scheduled time, "
                      "client dispatch lag included.")


def class_table(title: str, entries: list[dict], with_priority: bool) -> Table:
    headers = ["kind"] + (["priority"] if with_priority else []) + [
        "requests", "completed", "errors", "TTFT met", "e2e met", "SLO met", "attainment",
        "goodput req/s", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms", "e2e p99 ms"]
    rows = []
    for e in entries:
        lat = e.get("latency_ms") or {}
        ttft, e2e = lat.get("ttft_from_intended") or {}, lat.get("e2e_from_intended") or {}
        rows.append([str(e.get("kind", "–"))] + ([str(e.get("priority", "–"))] if with_priority
                                                 else [])
                    + [fmt_num(e.get(k)) for k in ("requests", "completed", "errors", "ttft_met",
                                                   "e2e_met", "slo_met")]
                    + [fmt_pct(attainment_pct(e)), fmt_num(e.get("goodput_rps"), 2),
                       fmt_ms(ttft.get("p50")), fmt_ms(ttft.get("p99")), fmt_ms(e2e.get("p50")),
                       fmt_ms(e2e.get("p99"))])
    return Table(title, headers, rows, note="latency columns are from the intended time.")


def run_tables(run: RunData) -> list[Table]:
    """Every table of a one-run report, in display order."""
    tables = [latency_table(run)]
    if run.summary.get("by_kind"):
        tables.append(class_table("Per kind", run.summary["by_kind"], False))
    if run.summary.get("by_class"):
        tables.append(class_table("Per kind and priority", run.summary["by_class"], True))
    if run.batch_table:
        tables.append(Table("Embedding batch efficiency",
                            ["batch size", "requests", "e2e mean ms", "e2e p99 ms",
                             "ms per input", "inputs/s per stream"],
                            [[str(r["batch_size"]), fmt_num(r["requests"]),
                              fmt_ms(r["e2e_mean_ms"]), fmt_ms(r["e2e_p99_ms"]),
                              fmt_ms(r["per_input_ms"]), fmt_num(r["inputs_per_s_per_stream"])]
                             for r in run.batch_table]))
    if (nodes := node_table(run)) is not None:
        tables.append(nodes)
    if run.error_details:
        tables.append(Table("Most frequent errors", ["error detail", "count"],
                            [[d, f"{n:,}"] for d, n in run.error_details]))
    return tables


def node_table(run: RunData) -> Table | None:
    """A `--ray` run: per node its actors, clock offset to the driver and dispatch lag."""
    nodes = ((run.summary.get("run") or {}).get("cluster") or {}).get("nodes") or []
    if not nodes:
        return None
    rows = []
    for node in nodes:
        clock, lag = node.get("clock") or {}, node.get("dispatch_lag_ms") or {}
        offset, unc = clock.get("offset_ns"), clock.get("uncertainty_ns")
        rows.append([str(node.get("address", "–")), str(node.get("hostname", "–")),
                     fmt_num(node.get("actors")),
                     "–" if offset is None else f"{offset / 1e6:+,.3f}",
                     "–" if unc is None else f"{unc / 1e6:.3f}",
                     fmt_num(lag.get("count")), fmt_ms(lag.get("p50")), fmt_ms(lag.get("p99")),
                     fmt_ms(lag.get("max"))])
    return Table("Dispatch lag per Ray node",
                 ["node", "host", "actors", "clock offset ms", "± ms", "requests",
                  "lag p50 ms", "lag p99 ms", "lag max ms"], rows,
                 note="Each node's clock offset to the driver (minimum-RTT round trips; ± is half "
                      "that RTT) converts the start instant; lag is sent − intended on the "
                      "node's own clock.")


def comparison_table(runs: list[RunData], labels: list[str]) -> Table:
    """One row per run: what differs, what it achieved, how it treated latency and SLOs."""
    rows = []
    for run, label in zip(runs, labels):
        s = run.summary
        facts = run_facts(run)
        rates, lat = s.get("rates") or {}, s.get("latency_ms") or {}
        ttft, e2e = lat.get("ttft_from_intended") or {}, lat.get("e2e_from_intended") or {}
        rows.append([label, facts.get("policy", "–"), facts.get("rate", "–"),
                     fmt_num(llm_share(run), 2), fmt_num(rates.get("achieved_rps")),
                     fmt_num(rates.get("completed_rps")), fmt_num(rates.get("output_tps")),
                     fmt_num((s.get("requests") or {}).get("errors")),
                     fmt_ms(ttft.get("p50")), fmt_ms(ttft.get("p99")), fmt_ms(e2e.get("p99")),
                     fmt_pct(attainment_pct(s.get("slo"))),
                     fmt_num((s.get("slo") or {}).get("goodput_rps"), 2),
                     fmt_ms((s.get("dispatch_lag_ms") or {}).get("p99"))])
    return Table("Runs", ["run", "policy", "rate", "LLM share", "achieved req/s",
                          "completed req/s", "output tok/s", "errors", "TTFT p50 ms",
                          "TTFT p99 ms", "e2e p99 ms", "SLO attainment", "goodput req/s",
                          "lag p99 ms"], rows,
                 note="latency from the intended time.")
