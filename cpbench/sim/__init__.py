"""The embedded control plane (``cpbench sim``): an OpenAI-compatible server in front of modelled
LLM and embedding engines, with switchable scheduling policies, fault injection and Prometheus
metrics. It sits at the bottom of cpbench's layers and imports only ``cpbench.errors`` and
``cpbench.prompts`` from the rest of the package.

Public API::

    from cpbench.sim import SimConfig, build_app, running_sim, SimThread, load_config
    async with running_sim(SimConfig(policy="priority")) as sim:   # 127.0.0.1, free port
        ...  # sim.url == "http://127.0.0.1:PORT"

Modules: ``config`` (parameters and defaults), ``parse`` (request validation), ``policies``,
``scheduler``, ``engines``, ``wire`` (responses and SSE), ``faults``, ``metrics``, ``server``.
"""
from __future__ import annotations

import importlib
from typing import Any

# Attributes load their module on first use (PEP 562), so `cpbench --help` and a plain
# `import cpbench.sim.config` do not pay for aiohttp, numpy and prometheus_client.
_EXPORTS = {
    "POLICY_NAMES": "config", "EmbeddingEngineConfig": "config", "FaultConfig": "config",
    "LLMEngineConfig": "config", "SimConfig": "config", "config_from_dict": "config",
    "load_config": "config", "resolve_config": "config",
    "SimServer": "server", "SimThread": "server", "build_app": "server", "running_sim": "server",
    "start_sim": "server", "stop_sim": "server", "serve": "server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cpbench.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cpbench.sim.{module}"), name)
