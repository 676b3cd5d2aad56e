"""Monitoring during a run: GPUs (NVML), server metrics (Prometheus), the client's CPU.

:class:`MonitorSet` starts one background sampler per source, stamps every sample on the
run's monotonic clock and hands on a long-format Arrow table (``monitor.arrow``: ``t_ns``,
``source``, ``metric``, ``value``) and a status dict for ``summary.json``'s ``"monitor"``
key. Nothing here can end a run: an absent GPU, a failing NVML call or a scrape target that
stops answering is recorded in the status with its reason.

Importing this package has no side effects: ``pynvml`` is imported and NVML initialised only
in :meth:`MonitorSet.start`.
"""
from __future__ import annotations

import os
import time
import urllib.parse

import pyarrow as pa

from cpbench.errors import ConfigError
from cpbench.monitor.client import ClientCpuSampler
from cpbench.monitor.gpu import GPU_METRICS, GpuSampler
from cpbench.monitor.prometheus import DEFAULT_SERIES, PrometheusScraper, redact_url
from cpbench.monitor.store import MONITOR_SCHEMA, concat_sorted, read_monitor, write_monitor

__all__ = [
    "DEFAULT_SERIES", "GPU_METRICS", "MONITOR_SCHEMA", "MonitorSet", "read_monitor",
    "redact_url", "write_monitor",
]


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact_url(url) if isinstance(url, str) else url
        raise ConfigError(f"--metrics-url must be an http(s) URL such as "
                          f"http://127.0.0.1:8000/metrics; got {shown!r}")
    return url


def _check_interval(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise ConfigError(f"{name} must be a number of seconds > 0; got {value!r}")
    return float(value)


class MonitorSet:
    """All monitors of one run.

    Parameters
    ----------
    gpu_interval_s : float or None
        Seconds between GPU samples; None turns GPU monitoring off.
    metrics_urls : list of str
        Prometheus endpoints to scrape (``/metrics`` is appended to a bare host).
    metrics_interval_s : float
        Seconds between scrapes of each URL.
    metrics_series : list of str or None
        Metric-name patterns to keep (exact names or globs such as ``vllm:*``); None keeps
        :data:`DEFAULT_SERIES` (vLLM, SGLang and ``cpbench sim`` queue/running/KV series).
    client_interval_s : float
        Seconds between samples of the client host's CPU use.
    clock_origin_ns : int
        ``time.monotonic_ns()`` at the run start; every ``t_ns`` is relative to it.

    Raises
    ------
    ConfigError
        An interval is not a positive number, a metrics URL is not http(s), or the series
        selection is empty.
    """

    def __init__(self, *, gpu_interval_s: float | None = 0.5, metrics_urls: list[str] = (),
                 metrics_interval_s: float = 1.0, metrics_series: list[str] | None = None,
                 client_interval_s: float = 0.5, clock_origin_ns: int) -> None:
        self.clock_origin_ns = int(clock_origin_ns)
        self.gpu = (None if gpu_interval_s is None else
                    GpuSampler(_check_interval("--gpu-interval", gpu_interval_s),
                               self.clock_origin_ns))
        interval = _check_interval("--metrics-interval", metrics_interval_s)
        if metrics_series is not None and (
                not metrics_series or not all(isinstance(p, str) and p for p in metrics_series)):
            raise ConfigError(f"--metrics-series must be metric names or globs such as "
                              f"'vllm:*'; got {list(metrics_series)!r}")
        self.scrapers = [
            PrometheusScraper(url, interval, self.clock_origin_ns, series=metrics_series)
            for url in map(_check_url, metrics_urls)
        ]
        self.client = ClientCpuSampler(_check_interval("--client-interval", client_interval_s),
                                       self.clock_origin_ns)
        self._started = False

    def _samplers(self) -> list:
        return [s for s in (self.gpu, *self.scrapers, self.client) if s is not None]

    def start(self) -> None:
        """Start every sampler (NVML is initialised here); returns at once."""
        if self._started:
            return
        self._started = True
        for sampler in self._samplers():
            try:
                sampler.start()
            except Exception as exc:  # noqa: BLE001 - no thread left (ulimit): note, go on
                sampler.failures += 1
                sampler.last_error = f"could not start: {type(exc).__name__}: {exc}"

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop every sampler, waiting at most about ``timeout_s`` for all threads together.

        A thread still stuck in a call after that (a scrape past its timeout) is left
        behind as a daemon; its rows so far are kept.
        """
        for sampler in self._samplers():
            sampler.signal_stop()  # all first, so they wind down in parallel
        deadline = time.monotonic() + timeout_s
        for sampler in self._samplers():
            sampler.stop(max(0.0, deadline - time.monotonic()))

    def table(self) -> pa.Table:
        """Every sample so far, sorted by ``t_ns``, with :data:`MONITOR_SCHEMA`."""
        return concat_sorted([s.buffer.to_table() for s in self._samplers()])

    def status(self) -> dict:
        """The ``summary.json`` ``"monitor"`` entry: what ran, what did not and why."""
        if self.gpu is None:
            gpu = {"available": False, "reason": "GPU monitoring turned off", "devices": []}
        else:
            gpu = self.gpu.status()
        return {
            "gpu": gpu,
            "prometheus": [s.status() for s in self.scrapers],
            "client_cpu": self.client.status(),
        }

    def write(self, path: str | os.PathLike) -> None:
        """Write the samples to ``path`` (``monitor.arrow``), with the status as metadata.

        Raises
        ------
        OutputError
            The file cannot be written.
        """
        write_monitor(self.table(), path, status=self.status())
