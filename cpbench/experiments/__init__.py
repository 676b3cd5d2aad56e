"""Multi-run experiments: policy comparison, rate sweeps and the predefined experiments.

``stats`` holds the arithmetic (paired bootstrap, repeat spread, knee search); ``compare`` and
``sweep`` drive runs of ``cpbench.replay`` against one control plane and hand their result
directories to ``cpbench.report``.
"""
from __future__ import annotations
