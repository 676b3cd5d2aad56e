"""The control plane as experiments see it: start the embedded one, switch its policy, wait idle.

Experiments replay several runs against ONE control plane so policies differ only in the
policy. This module owns that server's life (``embedded_sim``: ``cpbench sim`` in a child
process, stopped by its PID), the policy switch through the admin API (``PolicyAdmin``, which
reads the policy back and refuses to go on when the switch did not take effect), the wait for
the server to drain between runs, and the progress line of multi-run work. It talks plain
HTTP/1.1 with ``urllib``: a handful of control requests need no event loop.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from cpbench.errors import ConfigError, TargetError
from cpbench.vocab import POLICY_PATH

_CONTROL_TIMEOUT_S = 10.0
_IDLE_GAUGES = ("cpbench_sim_queue_depth", "cpbench_sim_running_sequences",
                "cpbench_sim_engine_waiting")


@contextlib.contextmanager
def embedded_sim(*, config_path: str | Path | None = None, policy: str | None = None
                 ) -> Iterator[str]:
    """Run ``cpbench sim`` on 127.0.0.1 (port chosen by the OS) for the ``with`` block.

    Yields the server's URL. The child is stopped by its PID however the block ends
    (:class:`cpbench.replaying.target.EmbeddedSim`, the one way every command starts it).
    """
    from cpbench.replaying.target import EmbeddedSim

    with tempfile.TemporaryDirectory(prefix="cpbench-sim-") as tmp, \
            EmbeddedSim(Path(tmp), policy=policy, config_path=config_path) as sim:
        yield sim.url


def _request(url: str, *, body: dict | None = None, timeout_s: float = _CONTROL_TIMEOUT_S
             ) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TargetError(f"cannot reach the control plane at {url}: {reason}; is it "
                          f"running and is the URL right?") from exc


class PolicyAdmin:
    """The scheduling-policy switch of one control plane: ``POST``/``GET {url}{path}``."""

    def __init__(self, url: str, path: str = POLICY_PATH) -> None:
        if not path.startswith("/"):
            raise ConfigError(f"--policy-path must start with '/'; got {path!r}")
        self.endpoint = url.rstrip("/") + path

    def _no_endpoint(self, status: int) -> TargetError:
        return TargetError(f"the control plane has no policy switch at {self.endpoint} "
                           f"(HTTP {status}); pass --policy-path PATH for its admin API, or "
                           f"--no-switch to replay without switching policies")

    def get(self) -> str:
        """The active policy, as the control plane reports it."""
        status, body = _request(self.endpoint)
        if status in (404, 405, 501):
            raise self._no_endpoint(status)
        try:
            policy = json.loads(body)["policy"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TargetError(f"GET {self.endpoint} answered HTTP {status} without a "
                              f'{{"policy": NAME}} body: {body[:200]!r}') from exc
        return str(policy)

    def set(self, policy: str) -> str:
        """Switch to ``policy``, read it back, and raise ``TargetError`` unless it took effect."""
        status, body = _request(self.endpoint, body={"policy": policy})
        if status in (404, 405, 501):
            raise self._no_endpoint(status)
        if status >= 400:
            text = body[:300].decode("utf-8", errors="replace")
            raise TargetError(f"the control plane refused policy {policy!r} "
                              f"(POST {self.endpoint} → HTTP {status}: {text}); check the name")
        active = self.get()
        if active != policy:
            raise TargetError(f"policy switch did not take effect: asked for {policy!r}, the "
                              f"control plane reports {active!r} at {self.endpoint}")
        return active


_GAUGE_RE = re.compile(r"^(\w+)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)\s*$")


def wait_idle(url: str, *, drain_s: float, timeout_s: float = 60.0) -> bool:
    """Let the control plane drain after a run; True when it was seen idle.

    Waits ``drain_s``, then, where ``/metrics`` has the embedded control plane's queue and
    running gauges, polls until they are all 0 (at most ``timeout_s``). A control plane without
    those gauges gets the fixed wait only (returns False).
    """
    time.sleep(max(drain_s, 0.0))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = _request(url.rstrip("/") + "/metrics", timeout_s=5.0)
        except TargetError:
            return False
        if status != 200:
            return False
        busy, seen = 0.0, False
        for line in body.decode("utf-8", errors="replace").splitlines():
            m = _GAUGE_RE.match(line)
            if m and m.group(1) in _IDLE_GAUGES:
                seen = True
                busy += abs(float(m.group(2)))
        if not seen:
            return False
        if busy == 0.0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


class Progress:
    """``run i of n`` with an estimate of the time left, on stderr, for multi-run work."""

    def __init__(self, total: int, *, what: str = "run", stream: TextIO | None = None,
                 quiet: bool = False) -> None:
        self.total = max(int(total), 1)
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.done = 0
        self.started = time.monotonic()

    def start(self, label: str) -> None:
        """Announce the next run."""
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.done:
            left_s = elapsed / self.done * (self.total - self.done)
            eta = f", about {_fmt_s(left_s)} left"
        print(f"cpbench: {self.what} {self.done + 1} of {self.total}: {label} "
              f"({_fmt_s(elapsed)} elapsed{eta})", file=self.stream, flush=True)

    def finish(self) -> None:
        """Count one run as done."""
        self.done += 1

    def grow(self, extra: int) -> None:
        """More runs than planned (a search that needs more probes)."""
        self.total += extra


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])
