"""GPU sampling through NVML (``pynvml``, from the ``nvidia-ml-py`` distribution).

:class:`GpuSampler` samples every visible NVIDIA GPU on a background thread: utilisation,
memory used/total, power, SM clock and temperature, stamped on the run clock, source
``gpu<index>``. ``pynvml`` is imported and NVML initialised only in :meth:`GpuSampler.start`,
never at import. Without a driver or a GPU the sampler records *why* (NVML's own error text)
and takes no samples: a missing reading is absent, never a zero.
"""
from __future__ import annotations

from typing import Any, Callable

from cpbench.monitor.sampler import PeriodicSampler

_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED, in case the module lacks the constant


def _memory(nvml: Any, handle: Any) -> list[tuple[str, float]]:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)  # one call for both readings
    return [("memory_used_bytes", info.used), ("memory_total_bytes", info.total)]


def _metric_queries(nvml: Any) -> dict[str, Callable[[Any], list[tuple[str, float]]]]:
    """Query name -> function of a device handle returning ``(metric, value)`` pairs."""
    clock_sm = getattr(nvml, "NVML_CLOCK_SM", 1)
    temp_gpu = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    return {
        "gpu_util_pct": lambda h: [
            ("gpu_util_pct", nvml.nvmlDeviceGetUtilizationRates(h).gpu)],
        "memory": lambda h: _memory(nvml, h),
        # NVML reports milliwatts.
        "power_w": lambda h: [("power_w", nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)],
        "sm_clock_mhz": lambda h: [
            ("sm_clock_mhz", nvml.nvmlDeviceGetClockInfo(h, clock_sm))],
        "temperature_c": lambda h: [
            ("temperature_c", nvml.nvmlDeviceGetTemperature(h, temp_gpu))],
    }


GPU_METRICS: tuple[str, ...] = (
    "gpu_util_pct", "memory_used_bytes", "memory_total_bytes", "power_w", "sm_clock_mhz",
    "temperature_c",
)


def _text(value: Any) -> str:
    # Older pynvml releases return bytes for names and UUIDs.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuSampler(PeriodicSampler):
    """Sample all NVIDIA GPUs through NVML every ``interval_s``.

    Parameters
    ----------
    interval_s : float
        Seconds between samples.
    clock_origin_ns : int
        ``time.monotonic_ns()`` of the run start.

    Attributes
    ----------
    available : bool
        NVML started and found at least one GPU.
    reason : str or None
        Why GPU monitoring is unavailable (NVML's error text), else None.
    """

    def __init__(self, interval_s: float, clock_origin_ns: int) -> None:
        super().__init__("gpu", interval_s, clock_origin_ns)
        self.available = False
        self.reason: str | None = "not started"
        self._nvml: Any = None
        self._devices: list[dict] = []
        self._handles: list[Any] = []
        self._queries: dict[str, Callable[[Any], list[tuple[str, float]]]] = {}
        self._unsupported: list[set[str]] = []

    def setup(self) -> bool:
        try:
            import pynvml  # lazily: no NVML work at cpbench import time
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
            self.reason = f"pynvml is not importable ({exc}); install nvidia-ml-py"
            return False
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError subclasses, OSError on odd hosts
            self.reason = f"NVML could not start: {exc}"
            return False
        self._nvml = pynvml
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._devices = [self._describe(i, h) for i, h in enumerate(self._handles)]
        except Exception as exc:  # noqa: BLE001
            self.reason = f"NVML could not list GPUs: {exc}"
            self._shutdown()
            return False
        if not self._handles:
            self.reason = "NVML started but found no GPU"
            self._shutdown()
            return False
        self._queries = _metric_queries(pynvml)
        self._unsupported = [set() for _ in self._handles]
        self.available, self.reason = True, None
        return True

    def _describe(self, index: int, handle: Any) -> dict:
        nvml = self._nvml
        info: dict = {"index": index, "name": _text(nvml.nvmlDeviceGetName(handle))}
        try:
            info["uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
        except Exception:  # noqa: BLE001 - the UUID is a label, not a reading
            info["uuid"] = None
        return info

    def sample(self) -> None:
        nvml_error = getattr(self._nvml, "NVMLError", Exception)
        not_supported = getattr(self._nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED)
        errors: list[str] = []
        for index, handle in enumerate(self._handles):
            t_ns = self.now_ns()
            rows: list[tuple[str, float]] = []
            skip = self._unsupported[index]
            for query_name, query in self._queries.items():
                if query_name in skip:
                    continue
                try:
                    rows.extend((m, float(v)) for m, v in query(handle))
                except nvml_error as exc:
                    if getattr(exc, "value", None) == not_supported:
                        # This board never reports it (power on some cards): stop asking,
                        # and say so in the status instead of writing zeros.
                        skip.add(query_name)
                    else:
                        errors.append(f"gpu{index} {query_name}: {exc}")
            self.buffer.extend(t_ns, f"gpu{index}", rows)
        if errors:
            raise RuntimeError("; ".join(errors))

    def _shutdown(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - nothing to do about a failing shutdown
                pass
            self._nvml = None

    def teardown(self) -> None:
        self._shutdown()

    def status(self) -> dict:
        """The ``summary.json`` ``monitor.gpu`` entry."""
        devices = []
        for dev, unsupported in zip(self._devices, self._unsupported or
                                    [set()] * len(self._devices)):
            devices.append({**dev, "unsupported_metrics": sorted(unsupported)})
        return {
            "available": self.available,
            "reason": self.reason,
            "devices": devices,
            "interval_s": self.interval_ns / 1e9,
            "samples": self.samples,
            "failures": self.failures,
            "last_error": self.last_error,
            "dropped_rows": self.buffer.dropped_rows,
        }
