"""A fleet of independent simulated engine servers, for routers to route across without GPUs.

``cpbench sim --fleet N`` starts N servers in one process (one event loop), each on its own
loopback port and each like one vLLM instance: one LLM engine (the config's first LLM model,
one instance), continuous batching, fifo admission, its own prefix cache and its own
``/metrics`` (vLLM names) and ``/get_load`` (SGLang's shape). Nothing is shared between them,
so a router in front sees N engines whose load and cache state differ by what it sent them.
Embedding engines are not part of a fleet (a vLLM instance serves one model).

It hands on the servers' URLs: printed one per line and written to ``--ready-file`` as
``{"urls": [...], "pid": ...}``.
"""
from __future__ import annotations

import asyncio
import copy
import os
import signal

import numpy as np

from cpbench.errors import ConfigError
from cpbench.sim.config import SimConfig
from cpbench.sim.server import SimServer, start_sim, stop_sim, write_ready_file

MAX_FLEET = 256


def fleet_configs(config: SimConfig, n: int) -> list[SimConfig]:
    """The config of each of ``n`` engine servers, derived from ``config``.

    Each keeps the first LLM model with one instance, no embedding engine, the fifo policy,
    and a fault seed of its own drawn from ``SeedSequence(config.seed).spawn(n)`` (so faults
    are independent across engines and reproducible from the one seed).
    """
    if not 1 <= n <= MAX_FLEET:
        raise ConfigError(f"--fleet must be 1..{MAX_FLEET} engine servers; got {n}")
    if not config.llm:
        raise ConfigError("--fleet needs an LLM engine; the config defines none")
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(config.seed).spawn(n)]
    out = []
    for seed in seeds:
        cfg = copy.deepcopy(config)
        cfg.llm = [cfg.llm[0]]
        cfg.llm[0].instances = 1
        cfg.embedding = []
        cfg.policy = "fifo"
        cfg.seed = seed
        out.append(cfg.validate())
    return out


async def start_fleet(config: SimConfig, n: int, host: str = "127.0.0.1",
                      port: int = 0) -> list[SimServer]:
    """Start ``n`` engine servers on the running loop: ports ``port .. port + n - 1``, or free
    ports when ``port`` is 0. Stop them with :func:`stop_fleet`."""
    servers: list[SimServer] = []
    try:
        for i, cfg in enumerate(fleet_configs(config, n)):
            servers.append(await start_sim(cfg, host, port + i if port else 0))
    except BaseException:
        await stop_fleet(servers)
        raise
    return servers


async def stop_fleet(servers: list[SimServer]) -> None:
    """Stop every server (their waiting and running requests are aborted)."""
    for server in servers:
        await stop_sim(server)


async def serve_fleet(config: SimConfig, n: int, host: str = "127.0.0.1", port: int = 0,
                      ready_file: str | None = None) -> None:
    """Run a fleet until SIGINT or SIGTERM; announce the URLs on stdout and in ``ready_file``."""
    servers = await start_fleet(config, n, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        urls = [s.url for s in servers]
        if ready_file:
            write_ready_file(ready_file, {"urls": urls, "pid": os.getpid()})
        print("\n".join(urls), flush=True)
        await stop.wait()
    finally:
        await stop_fleet(servers)


def run_fleet(config: SimConfig, n: int, host: str = "127.0.0.1", port: int = 0,
              ready_file: str | None = None) -> int:
    """The CLI entry point of ``cpbench sim --fleet N``: uvloop, serve, return 0."""
    import gc

    import uvloop

    fleet_configs(config, n)          # a bad --fleet fails before anything listens
    gc.freeze()
    uvloop.run(serve_fleet(config, n, host, port, ready_file))
    return 0
