"""Scraping a server's Prometheus ``/metrics`` during a run.

:class:`PrometheusScraper` fetches one URL every ``interval_s`` on a background thread, keeps
the series the user selected (metric-name globs) and stores them with source = the URL
without credentials and metric = ``name{label="value",...}`` (labels sorted). A target that
stops answering is counted and its last error kept; the run goes on.

The scrape runs in the dispatcher's process, so it must not hold the GIL for long: lines are
filtered by metric name with plain string operations first, and only the few selected lines
go through ``prometheus_client``'s parser.
"""
from __future__ import annotations

import base64
import fnmatch
import time
import urllib.error
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from cpbench.monitor.sampler import PeriodicSampler
from cpbench.redact import redact_url

# Queue depth, running requests and KV-cache use, as vLLM, SGLang and cpbench's embedded
# control plane (cpbench sim) name them; the sim's active policy too, so a policy switch
# shows on the time axis. vLLM renamed gpu_cache_usage_perc to
# kv_cache_usage_perc in v0.10; both are fractions in [0, 1] despite the name.
DEFAULT_SERIES: tuple[str, ...] = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:gpu_cache_usage_perc",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",      # the run's prefix hit ratio (monitor/prefix.py)
    "vllm:prefix_cache_hits_total",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "cpbench_sim_queue_depth",
    "cpbench_sim_running_sequences",
    "cpbench_sim_engine_waiting",
    "cpbench_sim_kv_cache_usage_percent",
    "cpbench_sim_policy",
) + (
    # Per-engine counters, so each engine's share of requests and tokens (a router's balance)
    # comes from the engines (vllm/v1/metrics/loggers.py).
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    # Routers' own series: vllm-router (vllm-project/router src/metrics.rs) and sglang-router
    # 0.3 (the SGLang Model Gateway, smg_*): requests per worker, in flight, errors.
    "vllm_router_requests_total",
    "vllm_router_processed_requests_total",
    "vllm_router_request_errors_total",
    "vllm_router_running_requests",
    "vllm_router_worker_load",
    "smg_router_requests_total",
    "smg_worker_requests_active",
    "smg_worker_cb_outcomes_total",
    "smg_http_responses_total",
)

# A /metrics page of a large vLLM deployment is a few hundred KB; more is a misconfiguration.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def metrics_url(url: str) -> str:
    """``url`` with ``/metrics`` appended when it has no path (``http://host:8000``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/metrics"))
    return url


def series_name(name: str, labels: dict[str, str]) -> str:
    """Flatten a sample to ``name{a="1",b="x"}`` (labels sorted, quotes escaped)."""
    if not labels:
        return name
    body = ",".join(
        '{}="{}"'.format(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in sorted(labels.items())
    )
    return f"{name}{{{body}}}"


class SeriesSelector:
    """Decide which sample names to keep: exact names or shell globs (``vllm:*``).

    A prefix is selected with a trailing ``*``. Matching is case-sensitive, as Prometheus
    names are; decisions are cached per name because a page repeats the same few hundred.
    """

    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        self.patterns = tuple(patterns)
        self._exact = {p for p in self.patterns if not any(c in p for c in "*?[")}
        self._globs = [p for p in self.patterns if p not in self._exact]
        self._cache: dict[str, bool] = {}
        # The literal text every selected name starts with, per pattern; None when some
        # pattern starts with a wildcard and any line may match.
        literal = [min((p.find(c) for c in "*?[" if c in p), default=len(p))
                   for p in self.patterns]
        heads = sorted(p[:n] for p, n in zip(self.patterns, literal))
        if any(not h for h in heads):
            self.prefixes: tuple[str, ...] | None = None
        else:  # drop heads another head already covers ("vllm:" covers "vllm:num_...")
            kept: list[str] = []
            for h in heads:
                if not kept or not h.startswith(kept[-1]):
                    kept.append(h)
            self.prefixes = tuple(kept)

    def __call__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            hit = name in self._exact or any(fnmatch.fnmatchcase(name, g) for g in self._globs)
            if len(self._cache) < 100_000:
                self._cache[name] = hit
        return hit


def _sample_name(line: str) -> str:
    end = len(line)
    for sep in ("{", " ", "\t"):
        i = line.find(sep)
        if 0 <= i < end:
            end = i
    return line[:end]


def _candidate_lines(text: str, prefixes: tuple[str, ...]) -> list[str]:
    """Lines of ``text`` that start with one of ``prefixes``, in page order.

    ``str.find`` runs in C over the page, so a scrape costs in proportion to the lines
    selected, not the page size: vLLM pages are mostly histogram buckets nobody asked for.
    """
    starts: set[int] = set()
    for prefix in prefixes:
        if text.startswith(prefix):
            starts.add(0)
        needle = "\n" + prefix
        i = text.find(needle)
        while i >= 0:
            starts.add(i + 1)
            i = text.find(needle, i + len(needle))
    lines = []
    for start in sorted(starts):
        end = text.find("\n", start)
        lines.append(text[start:] if end < 0 else text[start:end])
    return lines


def select_lines(text: str, keep: SeriesSelector) -> str:
    """The sample lines of an exposition whose metric name ``keep`` selects.

    Comment lines (HELP/TYPE) are dropped: without them the parser still yields each
    sample's name, labels and value, which is all a monitor stores. Sample lines are
    expected to start at the line start, as every exporter writes them.
    """
    if keep.prefixes is None:
        candidates = text.split("\n")
    else:
        candidates = _candidate_lines(text, keep.prefixes)
    out = []
    for line in candidates:
        line = line.rstrip("\r")
        if line and line[0] != "#" and keep(_sample_name(line)):
            out.append(line)
    return "\n".join(out) + "\n" if out else ""


def parse_selected(text: str, keep: SeriesSelector) -> list[tuple[str, float]]:
    """Parse an exposition into ``(series, value)`` pairs for the selected names.

    Raises
    ------
    ValueError
        The selected lines are not valid Prometheus text.
    """
    rows = []
    for family in text_string_to_metric_families(select_lines(text, keep)):
        for sample in family.samples:
            rows.append((series_name(sample.name, sample.labels), float(sample.value)))
    return rows


class PrometheusScraper(PeriodicSampler):
    """Scrape one Prometheus endpoint every ``interval_s``.

    Parameters
    ----------
    url : str
        The metrics URL (``/metrics`` is appended to a bare host). ``user:pass@`` in it is
        sent as HTTP Basic auth and removed from everything stored.
    interval_s : float
        Seconds between scrapes.
    clock_origin_ns : int
        ``time.monotonic_ns()`` of the run start.
    series : sequence of str, optional
        Metric-name patterns to keep; :data:`DEFAULT_SERIES` when None.
    timeout_s : float, optional
        Total time one scrape may take; defaults to ``min(max(interval_s, 0.5), 5)``.
    """

    def __init__(self, url: str, interval_s: float, clock_origin_ns: int,
                 series: list[str] | tuple[str, ...] | None = None,
                 timeout_s: float | None = None) -> None:
        super().__init__("prometheus", interval_s, clock_origin_ns)
        full = metrics_url(url)
        self.source = redact_url(full)
        self.timeout_s = timeout_s if timeout_s is not None else min(max(interval_s, 0.5), 5.0)
        self.selector = SeriesSelector(DEFAULT_SERIES if series is None else series)
        parts = urllib.parse.urlsplit(full)
        self._headers = {"Accept": "text/plain;version=0.0.4"}
        if parts.username is not None:
            cred = f"{urllib.parse.unquote(parts.username)}:" \
                   f"{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self._url = self.source
        # Like the dispatcher's own connections: no proxy from the environment, since a
        # scrape target is a server under test, never something to reach through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.last_success_ns: int | None = None
        self.last_failure_ns: int | None = None

    def _fetch(self) -> str:
        request = urllib.request.Request(self._url, headers=self._headers)
        deadline = time.monotonic() + self.timeout_s
        chunks, size = [], 0
        # The socket timeout bounds each read; the deadline bounds a server trickling bytes.
        with self._opener.open(request, timeout=self.timeout_s) as resp:
            while True:
                chunk = resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ValueError(f"response larger than {MAX_RESPONSE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"scrape took longer than {self.timeout_s:g} s")
                chunks.append(chunk)
            charset = resp.headers.get_content_charset() or "utf-8"
        return b"".join(chunks).decode(charset, errors="replace")

    def sample(self) -> None:
        start_ns = self.now_ns()
        try:
            text = self._fetch()
        except Exception:
            self.last_failure_ns = self.now_ns()
            raise
        # Stamp the middle of the request: the server read its counters somewhere in it.
        t_ns = (start_ns + self.now_ns()) // 2
        try:
            rows = parse_selected(text, self.selector)
        except Exception:
            self.last_failure_ns = self.now_ns()
            raise
        self.buffer.extend(t_ns, self.source, rows)
        self.last_success_ns = t_ns

    def status(self) -> dict:
        """One entry of the ``summary.json`` ``monitor.prometheus`` list."""
        return {
            "url": self.source,
            "scrapes": self.samples,
            "failures": self.failures,
            "last_error": self.last_error,
            "series": self.buffer.series_count(),
            "interval_s": self.interval_ns / 1e9,
            "last_success_s": None if self.last_success_ns is None
            else self.last_success_ns / 1e9,
            "last_failure_s": None if self.last_failure_ns is None
            else self.last_failure_ns / 1e9,
            "dropped_rows": self.buffer.dropped_rows,
        }
