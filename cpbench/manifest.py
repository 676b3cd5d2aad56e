"""The reproducibility manifest: ``manifest.json`` in every result directory.

It records what a rerun needs to be the same run (the trace's SHA-256, the seed, the full
resolved options) and what explains a different number (tool and library versions, git
revision, host CPU and kernel, clock source, the server's ``/v1/models`` answer and ``Server``
header, start time in UTC). ``verify`` compares the *workload* part of two manifests.

Nothing secret is written: URLs lose ``user:password@`` and key/token/secret query parameters,
options whose names look secret are replaced, and the value of every secret-looking
environment variable (``OPENAI_API_KEY``) is scrubbed from every string. Probing the server
and asking git are best effort and never fail a run. This module imports nothing of cpbench
above ``errors`` and ``trace`` and starts no event loop (the probe is plain ``urllib``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError, OutputError
from cpbench.redact import redact_url, scrub

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
LIBRARIES = ("numpy", "scipy", "pyarrow", "aiohttp", "uvloop", "bokeh", "jinja2",
             "nvidia-ml-py", "prometheus_client", "Cython")
# Options that say where output goes, which target was measured, how chatty the run is or
# how the client spreads its work (workers default to the host's cores): they change neither
# which requests are sent nor when, so `verify` does not call them a different workload.
NON_WORKLOAD_OPTIONS = frozenset({
    "output", "out", "output_dir", "out_dir", "o", "config", "quiet", "verbose", "progress",
    "open", "no_report", "report", "url", "func", "command", "workers", "loop", "connections",
    "grace_s", "realtime",
})


# --- what the manifest records ----------------------------------------------------------------

def tool_info() -> dict[str, Any]:
    """cpbench's version and, when the package is a git checkout, its revision."""
    from cpbench import __version__

    info: dict[str, Any] = {"name": "cpbench", "version": __version__,
                            "git_revision": None, "git_dirty": None}
    root = Path(__file__).resolve().parent.parent
    # Only ask git about a checkout we are part of: an installed wheel under some user's
    # repository must not report that repository's revision.
    if not (root / ".git").exists():
        return info
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            info["git_revision"] = rev.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                 "--", "cpbench"], capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0:
                info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape a run (None when absent).

    Read from package metadata, so nothing is imported (no NVML, no event loop).
    """
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict[str, Any]:
    """CPU model, core counts, kernel and OS of this (the client) host."""
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu_model": cpu_model or platform.processor() or None,
            "cores": os.cpu_count(), "usable_cores": usable,
            "kernel": platform.release(), "os": platform.system(),
            "machine": platform.machine()}


def clock_info() -> dict[str, Any]:
    """The monotonic clock cpbench times with, and the kernel's clock source."""
    mono = time.get_clock_info("monotonic")
    source = None
    try:
        source = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource"
                      ).read_text().strip() or None
    except OSError:
        pass
    return {"monotonic": {"implementation": mono.implementation,
                          "resolution_ns": round(mono.resolution * 1e9, 3),
                          "adjustable": mono.adjustable},
            "clocksource": source}


def probe_server(url: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """Ask the control plane at ``url`` for ``/v1/models``; never raises.

    Returns
    -------
    dict
        ``status`` (HTTP status or None), ``server`` (the ``Server`` header or None),
        ``models`` (the parsed JSON answer, or None) and ``error`` (None, or one line saying
        why there is no answer). Sends ``Authorization: Bearer $OPENAI_API_KEY`` when set; the
        key is never returned.
    """
    out: dict[str, Any] = {"status": None, "server": None, "models": None, "error": None}
    try:
        parts = urllib.parse.urlsplit(url)
        # No credentials and no query string in the probe: only the base path is the server's.
        path = parts.path.rstrip("/")
        path += "/models" if path.endswith("/v1") else "/v1/models"
        netloc = parts.netloc.rsplit("@", 1)[-1]
        endpoint = urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))
        request = urllib.request.Request(endpoint, headers={"Accept": "application/json"})
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            out["status"] = resp.status
            out["server"] = resp.headers.get("Server")
            body = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        out.update(status=exc.code, server=exc.headers.get("Server") if exc.headers else None,
                   error=f"HTTP {exc.code} from /v1/models")
        return out
    except Exception as exc:  # noqa: BLE001 - a probe must never fail the run
        reason = getattr(exc, "reason", None) or exc
        out["error"] = scrub(f"no answer from /v1/models: {type(exc).__name__}: {reason}")
        return out
    try:
        out["models"] = json.loads(body)
    except ValueError:
        out["error"] = "/v1/models did not answer JSON"
    return out


def build_manifest(*, options: Mapping[str, Any], trace_path: str | os.PathLike[str] | None,
                   seed: int | None, target_url: str | None,
                   server_info: Mapping[str, Any] | None,
                   trace_sha256: str | None = None) -> dict[str, Any]:
    """Everything needed to rerun, or explain, one run.

    Parameters
    ----------
    options
        The full resolved options of the run (``vars(args)`` of the command, or the API's
        keyword arguments after defaults). Secret-named options are redacted.
    trace_path
        The trace replayed; its SHA-256 is recorded (None when it cannot be read).
    seed
        The seed the workload was built with (the trace's, or the run's own).
    target_url
        The control plane's URL; stored without credentials.
    server_info
        ``probe_server(target_url)``'s answer, or None when not probed.
    trace_sha256
        The trace's SHA-256 when the caller has it already (a replay records the same value
        in summary.run); None: computed here.

    Returns
    -------
    dict
        JSON-able: ``manifest_version``, ``started_utc``, ``tool``, ``python``, ``libraries``,
        ``host``, ``clock``, ``workload`` {``trace``, ``trace_sha256``, ``seed``, ``options``},
        ``target`` {``url``, ``server``}.
    """
    from cpbench.trace import sha256_file

    digest = trace_sha256
    if digest is None and trace_path is not None:
        try:
            digest = sha256_file(trace_path)
        except OSError:
            digest = None
    opts = {k: v for k, v in options.items() if k not in ("func",)}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "tool": tool_info(),
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "libraries": library_versions(),
        "host": host_info(),
        "clock": clock_info(),
        "workload": {"trace": None if trace_path is None else os.fspath(trace_path),
                     "trace_sha256": digest, "seed": seed, "options": opts},
        "target": {"url": redact_url(target_url), "server": dict(server_info or {}) or None},
    }
    return scrub(manifest)


def trace_seed(path: str | os.PathLike[str]) -> int | None:
    """The seed stored in a trace's schema metadata, read without loading its rows."""
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        name = os.fspath(path)
        try:
            with pa.memory_map(name) as source:
                schema = ipc.open_file(source).schema
        except (pa.ArrowInvalid, OSError):
            import pyarrow.parquet as pq
            schema = pq.read_schema(name)
        text = (schema.metadata or {}).get(b"cpbench.seed", b"").decode("utf-8", "replace")
        return int(text) if text.lstrip("-").isdigit() else None
    except Exception:  # noqa: BLE001 - an unreadable trace is reported by the replay itself
        return None


def record_run(out_dir: str | os.PathLike[str], *, options: Mapping[str, Any],
               trace_path: str | os.PathLike[str] | None, target_url: str | None,
               seed: int | None = None, probe_timeout_s: float = 2.0,
               trace_sha256: str | None = None) -> Path:
    """Probe the target, build the manifest and write ``OUT_DIR/manifest.json``: one call.

    This is what every command that writes a result directory calls once, after the target is
    up and before the first request. ``seed`` defaults to the one stored in the trace. Only
    ``OutputError`` (the directory cannot be written) escapes; the probe never fails.
    """
    if seed is None and trace_path is not None:
        seed = trace_seed(trace_path)
    server = probe_server(target_url, probe_timeout_s) if target_url else None
    manifest = build_manifest(options=options, trace_path=trace_path, seed=seed,
                              target_url=target_url, server_info=server,
                              trace_sha256=trace_sha256)
    return write_manifest(out_dir, manifest)


def write_manifest(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` (scrubbed again) as ``DIR/manifest.json``, atomically; its path."""
    target = Path(directory) / MANIFEST_NAME
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, json.dumps(scrub(manifest), indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a result directory (or of a ``manifest.json`` path)."""
    source = Path(path)
    if source.is_dir():
        source = source / MANIFEST_NAME
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source} does not exist; give a result directory written by "
                          "cpbench replay/run/compare (it holds manifest.json)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}"
                          ) from None
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("workload"), dict):
        raise ConfigError(f"{source} is not a cpbench manifest (no 'workload' object)")
    return data


def _manifests(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Manifests under ``root`` by run: ``{"": m}`` for one run, ``{"fifo": ...}`` for a tree."""
    path = Path(root)
    if path.is_file() or (path / MANIFEST_NAME).is_file() or not path.is_dir():
        return {"": path}
    # `cpbench run` keeps its replay in DIR/run/, compare in DIR/<policy>[/repeat-K]/.
    found = {p.parent.relative_to(path).as_posix(): p
             for depth in ("*", "*/*", "*/*/*") for p in path.glob(f"{depth}/{MANIFEST_NAME}")}
    if not found:
        read_manifest(path)  # raises: neither a run nor a directory of runs
    return found


def verify(dir_a: str | os.PathLike[str], dir_b: str | os.PathLike[str]) -> list[str]:
    """What differs in the workload of two runs: trace hash, seed and options.

    Either side may be a result directory, its ``manifest.json``, or a directory of runs
    (``cpbench run``, ``compare``, ``experiment``): runs are then matched by relative path
    and each difference is prefixed with it. Options that only say where output goes, which
    target was measured or how the client spreads its work (``NON_WORKLOAD_OPTIONS``) are not
    compared. An empty list means the same workload.

    Raises
    ------
    ConfigError
        A directory without a readable manifest.
    """
    runs_a, runs_b = _manifests(dir_a), _manifests(dir_b)
    out: list[str] = []
    for name in sorted(set(runs_a) ^ set(runs_b)):
        side = "A" if name in runs_a else "B"
        out.append(f"run {name or '.'}: only in {side}")
    for name in sorted(set(runs_a) & set(runs_b)):
        prefix = f"{name}: " if name else ""
        out += [prefix + line for line in _verify_one(runs_a[name], runs_b[name])]
    return out


def _verify_one(path_a: Path, path_b: Path) -> list[str]:
    a, b = read_manifest(path_a)["workload"], read_manifest(path_b)["workload"]
    out: list[str] = []
    if a.get("trace_sha256") != b.get("trace_sha256"):
        out.append(f"trace_sha256: {a.get('trace_sha256')} ({a.get('trace')}) != "
                   f"{b.get('trace_sha256')} ({b.get('trace')})")
    if a.get("seed") != b.get("seed"):
        out.append(f"seed: {a.get('seed')!r} != {b.get('seed')!r}")
    opts_a, opts_b = a.get("options") or {}, b.get("options") or {}
    for key in sorted(set(opts_a) | set(opts_b)):
        if key in NON_WORKLOAD_OPTIONS:
            continue
        missing = object()
        va, vb = opts_a.get(key, missing), opts_b.get(key, missing)
        if va != vb:
            show_a = "(absent)" if va is missing else json.dumps(va)
            show_b = "(absent)" if vb is missing else json.dumps(vb)
            out.append(f"options.{key}: {show_a} != {show_b}")
    return out
