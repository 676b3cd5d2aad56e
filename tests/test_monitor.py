"""Tests of cpbench.monitor: GPU sampling against a fake NVML, the real no-GPU path, client
CPU accounting, the sample buffer and monitor.arrow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types

import pyarrow as pa
import pytest

from cpbench.errors import ConfigError, OutputError
from cpbench.monitor import MONITOR_SCHEMA, MonitorSet, read_monitor
from cpbench.monitor.client import ClientCpuSampler, process_tree, read_proc_stat
from cpbench.monitor.gpu import GpuSampler
from cpbench.monitor.store import SampleBuffer, write_monitor
from support import wait_until




# --- a fake NVML -------------------------------------------------------------------------

class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 15: "GPU is lost", 9: "Driver Not Loaded"}.get(
            self.value, f"NVML error {self.value}")


def make_fake_nvml(n_devices: int = 2, *, init_error: int | None = None,
                   power_unsupported_on: int | None = None) -> types.ModuleType:
    """A stand-in for ``pynvml`` whose readings are a known function of a call counter.

    Device ``i`` at its ``k``-th reading reports utilisation ``10*i + k``, memory used
    ``(k + 1) * 2**20``, power ``(100 + k) * 1000`` mW, SM clock ``1000 + k``, temperature
    ``40 + i``. Every utilisation read is logged with its monotonic time.
    """
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_ERROR_NOT_SUPPORTED = 3
    m.NVML_CLOCK_SM = 1
    m.NVML_TEMPERATURE_GPU = 0
    m.calls = {"init": 0, "shutdown": 0}
    m.reads: dict[int, list[int]] = {i: [] for i in range(n_devices)}  # monotonic_ns per read
    m.lost = set()

    def init():
        m.calls["init"] += 1
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def k_of(h):
        return len(m.reads[h]) - 1

    def util(h):
        if h in m.lost:
            raise FakeNVMLError(15)
        m.reads[h].append(time.monotonic_ns())
        return types.SimpleNamespace(gpu=10 * h + k_of(h), memory=0)

    def power(h):
        if h == power_unsupported_on:
            raise FakeNVMLError(3)
        return (100 + k_of(h)) * 1000

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.__setitem__("shutdown", m.calls["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: n_devices
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: b"Fake GPU H100" if h == 0 else "Fake GPU A10"
    m.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h}"
    m.nvmlDeviceGetUtilizationRates = util
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=(k_of(h) + 1) * 2**20, total=80 * 2**30, free=0)
    m.nvmlDeviceGetPowerUsage = power
    m.nvmlDeviceGetClockInfo = lambda h, clock: 1000 + k_of(h) if clock == 1 else -1
    m.nvmlDeviceGetTemperature = lambda h, sensor: 40 + h if sensor == 0 else -1
    return m


def rows_of(table: pa.Table, source: str, metric: str) -> list[tuple[int, float]]:
    return [(r["t_ns"], r["value"]) for r in table.to_pylist()
            if r["source"] == source and r["metric"] == metric]


def test_fake_nvml_sampling_values_and_timestamps(monkeypatch):
    fake = make_fake_nvml(2, power_unsupported_on=1)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    origin = time.monotonic_ns()
    sampler = GpuSampler(0.02, origin)
    sampler.start()
    assert sampler.available and sampler.reason is None
    assert wait_until(lambda: len(fake.reads[1]) >= 5)
    assert sampler.stop()
    assert fake.calls == {"init": 1, "shutdown": 1}

    table = sampler.buffer.to_table()
    util0 = rows_of(table, "gpu0", "gpu_util_pct")
    util1 = rows_of(table, "gpu1", "gpu_util_pct")
    assert [v for _, v in util0] == [float(k) for k in range(len(fake.reads[0]))]
    assert [v for _, v in util1] == [float(10 + k) for k in range(len(fake.reads[1]))]
    # Each stamp is on the run clock, taken just before that device was read.
    for (t_ns, _), read_ns in zip(util0, fake.reads[0]):
        assert 0 <= t_ns <= read_ns - origin
    t0 = [t for t, _ in util0]
    assert t0 == sorted(t0) and len(set(t0)) == len(t0)
    # Units: bytes, watts from milliwatts, MHz, degrees C; all metrics share the stamp.
    assert rows_of(table, "gpu0", "power_w")[2] == (t0[2], 102.0)
    assert rows_of(table, "gpu0", "memory_used_bytes")[3] == (t0[3], 4.0 * 2**20)
    assert rows_of(table, "gpu0", "memory_total_bytes")[0][1] == 80.0 * 2**30
    assert rows_of(table, "gpu0", "sm_clock_mhz")[1] == (t0[1], 1001.0)
    assert {v for _, v in rows_of(table, "gpu1", "temperature_c")} == {41.0}
    # No power on gpu1, and no zeros standing in for it: the status says it is unsupported.
    assert rows_of(table, "gpu1", "power_w") == []
    status = sampler.status()
    assert [d["name"] for d in status["devices"]] == ["Fake GPU H100", "Fake GPU A10"]
    assert status["devices"][1]["unsupported_metrics"] == ["power_w"]
    assert status["devices"][0]["unsupported_metrics"] == []
    assert status["failures"] == 0 and status["samples"] >= 5


def test_fake_nvml_gpu_lost_mid_run_is_noted_not_fatal(monkeypatch):
    fake = make_fake_nvml(2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = GpuSampler(0.02, time.monotonic_ns())
    sampler.start()
    assert wait_until(lambda: len(fake.reads[0]) >= 3)
    fake.lost.add(1)
    n0 = len(fake.reads[0])
    assert wait_until(lambda: len(fake.reads[0]) >= n0 + 3)
    assert sampler.stop()
    status = sampler.status()
    assert status["failures"] >= 2
    assert "gpu1 gpu_util_pct: GPU is lost" in status["last_error"]
    # gpu0 kept sampling, gpu1's utilisation stopped at the loss: no invented readings.
    table = sampler.buffer.to_table()
    assert len(rows_of(table, "gpu0", "gpu_util_pct")) >= n0 + 3
    assert len(rows_of(table, "gpu1", "gpu_util_pct")) == len(fake.reads[1])


def test_fake_nvml_init_failure_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(init_error=9))
    monitors = MonitorSet(clock_origin_ns=time.monotonic_ns(), client_interval_s=0.05)
    monitors.start()
    monitors.stop()
    gpu = monitors.status()["gpu"]
    assert gpu["available"] is False
    assert gpu["reason"] == "NVML could not start: Driver Not Loaded"
    assert gpu["devices"] == [] and gpu["samples"] == 0
    assert not [r for r in monitors.table().to_pylist() if r["source"].startswith("gpu")]


def test_pynvml_missing_or_broken(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were absent
    sampler = GpuSampler(0.05, time.monotonic_ns())
    sampler.start()
    assert not sampler.running and not sampler.available
    assert sampler.reason.startswith("pynvml is not importable (")
    assert sampler.reason.endswith("install nvidia-ml-py")


def test_sampler_that_cannot_start_is_noted(monkeypatch):
    monitors = MonitorSet(gpu_interval_s=None, client_interval_s=0.05,
                          clock_origin_ns=time.monotonic_ns())

    def no_threads(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_threads)
    monitors.start()
    monkeypatch.undo()
    monitors.stop()
    assert monitors.status()["client_cpu"]["last_error"] == (
        "could not start: RuntimeError: can't start new thread")


def test_fake_nvml_no_devices(monkeypatch):
    fake = make_fake_nvml(0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = GpuSampler(0.05, time.monotonic_ns())
    sampler.start()
    assert not sampler.running
    assert sampler.status()["reason"] == "NVML started but found no GPU"
    assert fake.calls["shutdown"] == 1


def _nvml_start_error() -> str | None:
    import pynvml
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return str(exc)
    pynvml.nvmlShutdown()
    return None


def test_real_no_gpu_path():
    error = _nvml_start_error()
    if error is None:
        pytest.skip("NVML starts on this host: the no-GPU path cannot be exercised here")
    monitors = MonitorSet(gpu_interval_s=0.05, client_interval_s=0.05,
                          clock_origin_ns=time.monotonic_ns())
    monitors.start()
    assert wait_until(lambda: monitors.client.samples >= 3)
    monitors.stop()
    gpu = monitors.status()["gpu"]
    assert gpu["available"] is False
    assert gpu["reason"] == f"NVML could not start: {error}"
    sources = set(monitors.table().column("source").to_pylist())
    assert sources == {"client"}  # the run went on, with no GPU rows at all


@pytest.mark.gpu
def test_real_gpu_sampling():
    error = _nvml_start_error()
    if error is not None:
        pytest.skip(f"NVML cannot start: {error}")
    monitors = MonitorSet(gpu_interval_s=0.1, client_interval_s=0.1,
                          clock_origin_ns=time.monotonic_ns())
    monitors.start()
    assert wait_until(lambda: monitors.gpu.samples >= 3)
    monitors.stop()
    status = monitors.status()["gpu"]
    assert status["available"] and status["devices"]
    rows = [r for r in monitors.table().to_pylist() if r["source"] == "gpu0"]
    util = [r["value"] for r in rows if r["metric"] == "gpu_util_pct"]
    total = [r["value"] for r in rows if r["metric"] == "memory_total_bytes"]
    assert len(util) >= 3 and all(0 <= u <= 100 for u in util)
    assert total and total[0] > 2**30


def test_gpu_off_and_bad_intervals():
    monitors = MonitorSet(gpu_interval_s=None, clock_origin_ns=time.monotonic_ns())
    assert monitors.status()["gpu"] == {
        "available": False, "reason": "GPU monitoring turned off", "devices": []}
    for bad in ({"gpu_interval_s": 0}, {"metrics_interval_s": -1.0},
                {"client_interval_s": float("nan")}):
        with pytest.raises(ConfigError, match="must be a number of seconds > 0"):
            MonitorSet(clock_origin_ns=0, **bad)
    for bad in ("localhost:9000", "ftp://h/metrics", "http:///metrics"):
        with pytest.raises(ConfigError, match="--metrics-url must be an http"):
            MonitorSet(clock_origin_ns=0, metrics_urls=[bad])
    for bad in ([], [""]):
        with pytest.raises(ConfigError, match="--metrics-series must be metric names"):
            MonitorSet(clock_origin_ns=0, metrics_series=bad)
    with pytest.raises(ConfigError) as info:
        MonitorSet(clock_origin_ns=0, metrics_urls=["ftp://bob:hunter2@h/m"])
    assert "hunter2" not in str(info.value)


def test_import_has_no_side_effects():
    code = ("import sys, threading, cpbench.monitor; "
            "print('pynvml' in sys.modules, threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["False", "1"]


# --- client CPU --------------------------------------------------------------------------

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {cpu_s}: pass\n"


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
@pytest.mark.parametrize("rescan_s", [0.05, 3600.0])
def test_client_cpu_counts_children_alive_and_reaped(rescan_s):
    # rescan_s=3600: the child is never seen alive, and is still counted once reaped.
    sampler = ClientCpuSampler(0.05, time.monotonic_ns(), rescan_s=rescan_s)
    sampler.start()
    assert wait_until(lambda: sampler.samples >= 2)
    child = subprocess.Popen([sys.executable, "-c", BURN.format(cpu_s=0.6)])
    try:
        assert wait_until(lambda: child.pid in process_tree(os.getpid()), 10)
        n = sampler.samples
        assert wait_until(lambda: sampler.samples > n + 1)
        child.wait(timeout=60)  # reaped: its CPU moves into our cutime
    finally:
        child.kill()
        child.wait()
    n = sampler.samples
    assert wait_until(lambda: sampler.samples > n + 1)
    assert sampler.stop()
    status = sampler.status()
    # The child's 0.6 s of CPU is in the tree's total (minus at most one tick of 1/HZ s).
    assert status["cpu_s"] >= 0.6 - 0.02
    table = sampler.buffer.to_table()
    if rescan_s < 1:
        assert max(v for _, v in rows_of(table, "client", "processes")) >= 2
    for metric in ("cpu_tree_pct", "cpu_host_pct", "cpu_host_max_core_pct"):
        values = [v for _, v in rows_of(table, "client", metric)]
        assert values and all(0.0 <= v <= 100.0 for v in values), metric
    assert status["cores"] == len(read_proc_stat()) - 1
    assert 0 <= status["mean_pct"] <= status["max_pct"] <= 100


def test_sampler_failure_is_counted_and_stop_is_prompt():
    sampler = ClientCpuSampler(0.02, time.monotonic_ns())
    sampler.sample = lambda: (_ for _ in ()).throw(OSError("proc vanished"))
    sampler.start()
    assert wait_until(lambda: sampler.failures >= 3)
    assert sampler.running
    # A long interval does not delay stop: the wait is on an Event.
    slow = ClientCpuSampler(3600.0, time.monotonic_ns())
    slow.start()
    assert slow.stop(timeout_s=5.0) and not slow.running
    assert sampler.stop() and sampler.status()["last_error"] == "OSError: proc vanished"


# --- buffer and monitor.arrow ------------------------------------------------------------

def test_sample_buffer_bounded_and_counted():
    buf = SampleBuffer(max_rows=5)
    buf.extend(1, "a", [("x", 1.0), ("y", 2.0)])
    buf.append(2, "b", "x", 3)
    buf.extend(3, "a", [("x", 4.0), ("y", 5.0), ("z", 6.0)])
    assert len(buf) == 5 and buf.dropped_rows == 1
    assert buf.to_table().to_pylist()[-1] == {"t_ns": 3, "source": "a", "metric": "y",
                                              "value": 5.0}
    assert buf.series_count() == 3


def test_monitor_arrow_round_trip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(1))
    monitors = MonitorSet(gpu_interval_s=0.02, client_interval_s=0.02,
                          clock_origin_ns=time.monotonic_ns())
    monitors.start()
    assert wait_until(lambda: monitors.gpu.samples >= 3 and monitors.client.samples >= 3)
    monitors.stop()
    path = tmp_path / "monitor.arrow"
    monitors.write(path)
    table, status = read_monitor(path)
    assert table.schema.remove_metadata() == MONITOR_SCHEMA
    assert table.equals(monitors.table())
    t_ns = table.column("t_ns").to_pylist()
    assert t_ns == sorted(t_ns) and t_ns[0] >= 0
    assert {"gpu0", "client"} <= set(table.column("source").to_pylist())
    assert status == json.loads(json.dumps(monitors.status()))
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_monitor_arrow_errors(tmp_path):
    with pytest.raises(OutputError, match="cannot write monitor file"):
        write_monitor(MONITOR_SCHEMA.empty_table(), tmp_path / "missing" / "monitor.arrow")
    (tmp_path / "bad.arrow").write_bytes(b"not arrow")
    with pytest.raises(OutputError, match="cannot read monitor file"):
        read_monitor(tmp_path / "bad.arrow")


def test_table_while_running_is_consistent(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(4))
    monitors = MonitorSet(gpu_interval_s=0.001, client_interval_s=0.01,
                          clock_origin_ns=time.monotonic_ns())
    monitors.start()
    errors = []

    def read_tables():
        try:
            for _ in range(50):
                table = monitors.table()
                table.validate(full=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    reader = threading.Thread(target=read_tables)
    reader.start()
    reader.join(30)
    monitors.stop()
    assert not errors
