"""cpbench: trace-replay benchmark for LLM serving control planes.

Importing cpbench has no side effects: no event loop, no NVML, no file writes.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
