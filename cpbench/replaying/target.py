"""The replay's target: the embedded control plane on loopback, and the reachability check.

:class:`EmbeddedSim` starts ``cpbench sim`` in its own process on a free loopback port and stops
it by its PID; every command that needs an embedded control plane (replay, compare, sweep,
experiment) starts it through here.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from cpbench.errors import TargetError
from cpbench.redact import redact_url
from cpbench.replaying.wire import Target
from cpbench.spawn import python_module_cmd
from cpbench.vocab import POLICY_PATH

SIM_READY_S = 30.0
SIM_STOP_GRACE_S = 5.0


class EmbeddedSim:
    """``cpbench sim`` in its own process on a free loopback port, stopped by PID.

    The sim runs in its own session (process group), so a terminal's Ctrl-C reaches only the
    client: in-flight requests are drained and recorded as ``interrupted`` before the client
    stops the sim, instead of failing because the server died first. Also a context manager.

    Parameters
    ----------
    workdir
        Where its readiness file and log go (a temporary directory of the caller's).
    policy, config_path
        ``cpbench sim --policy`` / ``--config``.
    """

    def __init__(self, workdir: Path, *, policy: str | None = None,
                 config_path: str | Path | None = None) -> None:
        self.ready_file = workdir / "sim-ready.json"
        self.log = open(workdir / "sim.log", "w+b")
        # Any model name is served by the engine of its kind: imported traces (BurstGPT, your
        # own captures) carry their own model names, which the embedded plane cannot know.
        cmd = python_module_cmd("cpbench", "sim", "--host", "127.0.0.1", "--port", "0",
                                "--ready-file", str(self.ready_file), "--accept-any-model")
        if config_path is not None:
            cmd += ["--config", str(config_path)]
        if policy:
            cmd += ["--policy", policy]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = self._wait_ready()

    def __enter__(self) -> EmbeddedSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + SIM_READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode("utf-8", "replace").strip().splitlines()[-1:]
                self.stop()
                raise TargetError(f"the embedded control plane exited with status "
                                  f"{self.proc.returncode}: {' '.join(tail) or 'no message'}")
            if self.ready_file.exists():
                url = json.loads(self.ready_file.read_text())["url"]
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                        if resp.status == 200:
                            return url
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TargetError(f"the embedded control plane was not ready in {SIM_READY_S:g} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SIM_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        if not self.log.closed:
            self.log.close()


def check_reachable(url: str) -> None:
    """One TCP connect to the target; a refusal becomes one clear TargetError line."""
    t = Target.from_url(url)
    try:
        socket.create_connection((t.host, t.port), timeout=5).close()
    except OSError as exc:
        raise TargetError(f"cannot reach {redact_url(url)}: {exc.strerror or exc}; "
                          "start the server or fix --url") from None


def active_policy(url: str, timeout_s: float = 2.0) -> str | None:
    """The policy the target says it runs (``GET /admin/policy`` → ``{"policy": NAME}``), so
    a run against a URL is labelled with it when ``--policy`` is not given; None when the
    target has no such endpoint or does not answer in time (a router: its policy is fixed at
    start, and the run is labelled by name instead)."""
    t = Target.from_url(url)
    endpoint = (f"{'https' if t.tls else 'http'}://{t.host_header}{t.base_path}{POLICY_PATH}"
                f"{t.query}")
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout_s) as resp:
            policy = json.loads(resp.read(4096))["policy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return policy if isinstance(policy, str) and 0 < len(policy) <= 64 else None
