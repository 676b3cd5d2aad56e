"""Compiled kernels (Cython): arrival schedules, histograms, SLO counters.

Private and fast: parameters are validated in each module's Python-facing functions, and the
kernels behind them run without the GIL.
"""
