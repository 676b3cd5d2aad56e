"""cpbench: trace-replay benchmark for LLM serving control planes.

The public Python API (numpydoc on each name, implemented in ``cpbench.api``)::

    load_trace, synthesize, replay, replay_async, compare, report, Trace, Run, Comparison

Importing cpbench has no side effects: no event loop, no NVML, no file writes, and none of
aiohttp, uvloop, pyarrow or pynvml is imported until an API name is first used.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = ("Comparison", "Run", "Trace", "compare", "load_trace", "replay", "replay_async",
        "report", "synthesize")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # Lazy: the API module pulls in pyarrow and the replay stack, which `import cpbench` must not.
    if name in _API:
        from cpbench import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cpbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
