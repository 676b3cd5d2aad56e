"""Deployments side by side: ``cpbench compare --targets NAME=URL,...`` and ``--launch``.

A router's policy is fixed when it starts, so comparing routing policies (or routers) means
comparing deployments: one URL per name. This module parses ``--targets``, joins them with
the ``--launch`` deployments started by ``launch``, and replays the trace once per target and
repeat into ``DIR/<name>/`` (interleaved like policies: a b a b, so host drift hits each
alike). Each run's ``manifest.json`` gains a ``deployment`` block (name, URL, and for a launch
its redacted command line). It hands ``compare`` the run directories per name; the paired
statistics and the report are the policies' own.
"""
from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cpbench.errors import ConfigError
from cpbench.experiments.control import Progress, wait_idle
from cpbench.experiments.launch import Launch, launched, parse_launches
from cpbench.manifest import read_manifest, write_manifest
from cpbench.redact import redact_url


def parse_targets(text: str | Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``NAME=URL,NAME=URL`` (or a TOML table/list of the same) as {name: base URL}."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        items = [f"{k}={v}" for k, v in text.items()]
    elif isinstance(text, str):
        items = [x for x in text.split(",") if x.strip()]
    else:
        items = [str(x) for x in text]
    from cpbench.experiments.runs import parse_list
    out: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        parts = urllib.parse.urlsplit(url) if sep else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--targets takes NAME=URL,NAME=URL like "
                              f"rr=http://127.0.0.1:8001,cache=http://127.0.0.1:8002; "
                              f"got {redact_url(item)!r}")
        parse_list(name, what="--targets")  # the same name rules as policies
        if name in out:
            raise ConfigError(f"--targets names {name!r} more than once; name each once")
        out[name] = url
    return out


def check_names(targets: Mapping[str, str], launches: Sequence[Launch]) -> list[str]:
    """Every deployment name in display order (targets, then launches); unique."""
    names = list(targets) + [x.name for x in launches]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{dup} named by both --targets and --launch; name each deployment "
                          f"once")
    return names


@contextlib.contextmanager
def deployments(targets: Mapping[str, str], launch_options: Sequence[str] | None, *,
                start_timeout_s: float = 60.0, log_dir: Path | None = None
                ) -> Iterator[dict[str, dict[str, Any]]]:
    """{name: {"url", "metrics_url", "command"}} of every target, launches started for the
    ``with`` block and stopped by their PIDs after it."""
    launches = parse_launches(launch_options)
    check_names(targets, launches)
    with launched(launches, start_timeout_s=start_timeout_s, log_dir=log_dir) as running:
        out: dict[str, dict[str, Any]] = {
            name: {"url": url, "metrics_url": None, "command": None}
            for name, url in targets.items()}
        for name, run in running.items():
            out[name] = {"url": run.url, "metrics_url": run.metrics_url,
                         "command": run.command, "pid": run.pid}
        yield out


def _stamp_manifest(result_dir: Path, name: str, info: Mapping[str, Any]) -> None:
    """Add which deployment a run measured to its ``manifest.json`` (scrubbed on write)."""
    try:
        manifest = read_manifest(result_dir)
    except ConfigError:  # a run that wrote no manifest keeps none
        return
    manifest["deployment"] = {"name": name, "url": redact_url(info["url"]),
                              "launch_command": info.get("command")}
    write_manifest(result_dir, manifest)


def run_targets(trace: Path, deployed: Mapping[str, Mapping[str, Any]], out_dir: Path, *,
                repeat: int, drain_s: float, replay_options: dict[str, Any],
                progress: Progress) -> dict[str, list[Path]]:
    """Replay ``trace`` once per deployment and repeat, interleaved; run dirs per name."""
    from cpbench.experiments.runs import replay_one, run_dir
    dirs: dict[str, list[Path]] = {name: [] for name in deployed}
    for r in range(repeat):
        for name, info in deployed.items():
            rep = f", repeat {r + 1}/{repeat}" if repeat > 1 else ""
            progress.start(f"target {name}{rep}")
            opts = dict(replay_options)
            if info.get("metrics_url"):  # the router's own page, beside every run's others
                opts["metrics_urls"] = [*(opts.get("metrics_urls") or []), info["metrics_url"]]
            result = replay_one(trace, run_dir(out_dir, name, r, repeat), url=info["url"],
                                policy=name, options=opts)
            _stamp_manifest(result, name, info)
            dirs[name].append(result)
            wait_idle(info["url"], drain_s=drain_s)
            progress.finish()
    return dirs


def target_names(targets: Mapping[str, str] | None, launch: Sequence[str] | None, *,
                 url: str | None, policies: Sequence[str]) -> list[str]:
    """The deployment names of ``--targets``/``--launch``, which replace ``--policies``."""
    if url is not None:
        raise ConfigError("--targets/--launch name every deployment; drop --url")
    if list(policies):
        raise ConfigError("--policies switches one control plane; --targets/--launch compare "
                          "deployments, whose policy is fixed at start: pass one or the other")
    return check_names(targets or {}, parse_launches(launch))


def compare_deployments(trace: Path, targets: Mapping[str, str], launch: Sequence[str] | None,
                        out: Path, *, repeat: int, drain_s: float, start_timeout_s: float,
                        replay_options: dict[str, Any], progress: Progress
                        ) -> tuple[dict[str, dict], dict[str, list[Path]]]:
    """Start the launches, replay against every deployment, stop the launches."""
    with deployments(targets, launch, start_timeout_s=start_timeout_s,
                     log_dir=out / "launch-logs" if launch else None) as deployed:
        dirs = run_targets(trace, deployed, out, repeat=repeat, drain_s=drain_s,
                           replay_options=replay_options, progress=progress)
    return deployed, dirs
