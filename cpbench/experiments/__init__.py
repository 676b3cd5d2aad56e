"""Multi-run experiments: policy comparison, rate sweeps and the predefined experiments.

``stats`` holds the arithmetic (paired bootstrap, repeat spread, knee search), ``steady``
whether a probe of a rate search reached a steady state, ``control`` the
control plane as experiments see it (embedded sim, policy switch, drain, progress), ``runs``
what they all share (option lists, one replay into a run directory, a synthesized trace, JSON),
``compare``, ``sweep`` and ``named`` drive runs of ``cpbench.replaying.run`` against one control
plane and hand their result directories to ``cpbench.reporting``; ``targets`` and ``launch``
let ``compare`` replay against several deployments instead (``--targets``, ``--launch``).

What they write (beside one result directory per run and ``report.html``/``report.md``):

- ``comparison.json`` (``cpbench compare``; ``experiment.json`` for the latency and slo
  experiments): ``policies``, ``baseline``, ``repeat``, ``runs`` (policy → result dirs),
  ``answer.best_policy`` (``metric``, ``policy``, ``value``, ``runner_up``, ``diff``,
  ``ci_low``, ``ci_high``, ``verdict``, ``distinguishable``: the interval tells the best from
  the runner-up) and ``stats`` = ``stats.paired_comparison``:
  ``paired_rows``, ``unpaired_rows``, ``policies.<name>.groups[]`` (``kind``, ``priority``,
  ``requests``, ``metrics.<metric>`` = ``{n, mean, std, min, max}`` across repeats) and
  ``differences[]`` (``policy``, ``kind``, ``priority``, ``rows``, ``metric``, ``baseline``,
  ``candidate``, ``diff``, ``ci_low``, ``ci_high``, ``repeats_overlap``, ``verdict`` in
  better | worse | indistinguishable | insufficient data). Metrics: ``slo_attainment_pct``
  and ``{ttft,e2e}_from_intended_p{50,99}_ms``; kind and priority ``all`` pool the rows.
  With ``--targets``/``--launch`` the names are the deployments' and ``targets`` maps each
  to ``{url, launch_command}`` (command line with secrets redacted).
- ``comparison.md``: the same differences as a Markdown table.
- ``experiment.json`` of a sweep / throughput run: ``trace_rate_rps``, ``knee_by``,
  ``probe_s``, ``points[]`` (per rate: ``rate_rps``, ``rate_scale``, ``dir``, the metrics
  above and ``steady.ProbeHealth``: ``window_s``, ``median_e2e_ms``, ``keep_up_pct``,
  ``too_short``; ``client_saturated``, the one-line reason when the client could not send
  at that rate and stopped the probe, else null) and ``knee`` (``knee_rps``, ``low_rps``,
  ``high_rps``, ``converged``, ``probes[]`` of ``rate_rps``/``value_pct``/``passed``, ``note``, ``criterion``); the throughput
  experiment nests one such record per policy under ``policies`` and answers
  ``knee_rps`` per policy and ``best_policy``; mixed_ratio lists ``points[]`` per LLM ratio.
"""
from __future__ import annotations

# The knee search's vocabulary, here so the CLI's --help needs none of the heavy modules.
# What a probe must hold (--knee-by): SLO attainment (the deadlines users care about) or
# keep-up (the control plane completes what arrives: its capacity); the value is the point's key.
KNEE_CRITERIA = {"slo": "slo_attainment_pct", "throughput": "keep_up_pct"}
# Seconds of load per probe: several times the seconds an LLM request takes near capacity.
DEFAULT_PROBE_S = 30.0
