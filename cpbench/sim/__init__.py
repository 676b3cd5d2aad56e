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

from cpbench.sim.config import (
    POLICY_NAMES,
    EmbeddingEngineConfig,
    FaultConfig,
    LLMEngineConfig,
    SimConfig,
    config_from_dict,
    load_config,
)
from cpbench.sim.server import SimServer, SimThread, build_app, running_sim, start_sim, stop_sim

__all__ = [
    "POLICY_NAMES", "EmbeddingEngineConfig", "FaultConfig", "LLMEngineConfig", "SimConfig",
    "SimServer", "SimThread", "build_app", "config_from_dict", "load_config", "running_sim",
    "start_sim", "stop_sim",
]
