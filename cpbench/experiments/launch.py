"""Deployments cpbench starts itself: ``--launch NAME='COMMAND with {port}'``.

A launch is a command line that serves an OpenAI-compatible API on the port cpbench picks
(``{port}``), optionally with its Prometheus page on a second one (``{metrics_port}``, as
vllm-router and sglang-router take ``--prometheus-port``). This module owns its life: parse
the option, pick free loopback ports, start the process (no shell, its own process group),
wait until ``/health`` or ``/v1/models`` answers 200, and stop it by its PID (SIGTERM to its
group, SIGKILL after a grace period) however the experiment ends. A launch that exits or does
not answer in time is a ``LaunchError``: one line, exit status 1, with the last line of its
log. It hands on the base URL (and the metrics URL) of each running deployment, and the
command line with secrets redacted for the manifest.
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cpbench.errors import ConfigError, TargetError
from cpbench.redact import REDACTED, scrub

# Paths a deployment answers 200 on once it can take requests: vLLM and both routers serve
# /health; an OpenAI-compatible server without it still lists its models.
READY_PATHS = ("/health", "/v1/models")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_PLACEHOLDERS = ("{port}", "{metrics_port}")
_STOP_GRACE_S = 5.0


class LaunchError(TargetError):
    """A launched deployment exited or never answered (exit status 1, as a dead target)."""


@dataclass
class Launch:
    """One ``--launch NAME=COMMAND``: the name and the command as the user wrote it."""

    name: str
    command: str

    @property
    def wants_metrics_port(self) -> bool:
        """Whether the command takes ``{metrics_port}`` (then cpbench scrapes it)."""
        return "{metrics_port}" in self.command


@dataclass
class Running:
    """A started deployment: where it serves, where its metrics are, what was run."""

    name: str
    url: str
    metrics_url: str | None
    command: str  # redacted, for the manifest and comparison.json
    pid: int


def parse_launch(text: str) -> Launch:
    """``NAME=COMMAND`` as a :class:`Launch`; ``ConfigError`` naming what is wrong."""
    name, sep, command = str(text).partition("=")
    name, command = name.strip(), command.strip()
    if not sep or not name or not command:
        raise ConfigError(f"--launch takes NAME='COMMAND with {{port}}', like "
                          f"rr='vllm-router --port {{port}} --worker-urls ...'; got {text!r}")
    if not _NAME_RE.match(name):
        raise ConfigError(f"--launch name may hold letters, digits, '_', '.', '-'; got {name!r}")
    if "{port}" not in command:
        raise ConfigError(f"--launch {name}: the command must contain {{port}} (the port "
                          f"cpbench picks for it to serve on); got {command!r}")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--launch {name}: cannot split the command line: {exc}") from None
    if not argv:
        raise ConfigError(f"--launch {name}: the command is empty")
    return Launch(name, command)


def parse_launches(items: Sequence[str] | None) -> list[Launch]:
    """Every ``--launch`` option (repeatable); names must be unique."""
    launches = [parse_launch(x) for x in items or []]
    names = [x.name for x in launches]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"--launch names {dup} more than once; name each deployment once")
    return launches


def redact_argv(argv: Sequence[str]) -> str:
    """The command line as one string, with secrets replaced by ``<redacted>``.

    The value of an option named like a secret (``--api-key X``, ``--token=X``) or of such an
    environment assignment (``env HF_TOKEN=X cmd``) is replaced, as are URL credentials,
    bearer tokens and the values of secret-named environment variables (``cpbench.redact.scrub``).
    """
    return shlex.join(_redacted(argv)[0])


def _redacted(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the arguments with secrets replaced, the secret values found)."""
    out: list[str] = []
    hidden: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hidden.append(arg)
            hide_next = False
            continue
        flag, eq, value = arg.partition("=")
        secret = scrub("x", name=flag.lstrip("-")) == REDACTED
        if secret and eq:  # --token=X, or an environment assignment API_KEY=X (env ...)
            out.append(f"{flag}={REDACTED}")
            hidden.append(value)
            continue
        hide_next = secret and arg.startswith("-")
        out.append(str(scrub(arg)))
    return out, [h for h in hidden if h]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` now (the launched server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers(url: str, timeout_s: float) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in READY_PATHS:
        try:
            with opener.open(url + path, timeout=timeout_s) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return False


def _log_tail(log: Path, hidden: Sequence[str]) -> str:
    """The log's last line, without the secrets the command line carried (it may echo them)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    tail = lines[-1] if lines else ""
    for secret in sorted(hidden, key=len, reverse=True):
        tail = tail.replace(secret, REDACTED)
    return str(scrub(tail))[:300]


def stop_process(proc: subprocess.Popen, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM to the launched process's own group, then SIGKILL after ``grace_s``.

    The group is the one ``start`` created for this process (``start_new_session``), so a
    launcher that forks its server (``sglang-router`` does) is stopped with it, and nothing
    else is touched.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(launch: Launch, log_dir: Path, *, start_timeout_s: float = 60.0,
          host: str = "127.0.0.1") -> tuple[subprocess.Popen, Running]:
    """Start ``launch`` and wait until it answers; ``LaunchError`` when it does not."""
    port = free_port(host)
    metrics_port = free_port(host) if launch.wants_metrics_port else None
    argv = [arg.replace("{port}", str(port)).replace("{metrics_port}", str(metrics_port))
            for arg in shlex.split(launch.command)]
    log = log_dir / f"{launch.name}.log"
    try:
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise LaunchError(f"--launch {launch.name}: cannot start {argv[0]!r}: "
                          f"{exc.strerror or exc}; is it installed and on PATH?") from None
    url = f"http://{host}:{port}"
    shown, hidden = _redacted(argv)
    running = Running(launch.name, url,
                      f"http://{host}:{metrics_port}/metrics" if metrics_port else None,
                      shlex.join(shown), proc.pid)
    deadline = time.monotonic() + start_timeout_s
    while True:
        if proc.poll() is not None:
            tail = _log_tail(log, hidden)
            raise LaunchError(f"--launch {launch.name} exited with status {proc.returncode} "
                              f"before it answered on {url}" + (f": {tail}" if tail else ""))
        if _answers(url, timeout_s=1.0):
            return proc, running
        if time.monotonic() >= deadline:
            stop_process(proc)
            tail = _log_tail(log, hidden)
            raise LaunchError(f"--launch {launch.name} did not answer 200 on {url}/health or "
                              f"/v1/models within {start_timeout_s:g} s"
                              + (f"; last log line: {tail}" if tail else ""))
        time.sleep(0.1)


@contextlib.contextmanager
def launched(launches: Sequence[Launch], *, start_timeout_s: float = 60.0,
             log_dir: str | Path | None = None) -> Iterator[Mapping[str, Running]]:
    """Start every launch (in order) for the ``with`` block; each is stopped by its PID after.

    Logs go to ``log_dir/<name>.log`` (a temporary directory when None).
    """
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cpbench-launch-"))
        log_path = Path(log_dir)
        log_path.mkdir(parents=True, exist_ok=True)
        stack.callback(lambda: [stop_process(p) for p in reversed(procs)])
        running: dict[str, Running] = {}
        for launch in launches:
            proc, run = start(launch, log_path, start_timeout_s=start_timeout_s)
            procs.append(proc)
            running[launch.name] = run
        yield running
