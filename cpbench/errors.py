"""The one exception hierarchy of cpbench.

Every error a user can cause (bad trace, bad option, unreachable target) is a ``CpbenchError``;
the CLI prints it as one line on stderr and exits with ``exit_status`` (2 for bad input).
Subclasses also inherit the fitting builtin so plain ``except ValueError`` still works.
"""
from __future__ import annotations


class CpbenchError(Exception):
    """Base class of every error cpbench reports to the user as one line."""

    exit_status = 2


class TraceError(CpbenchError, ValueError):
    """A trace file is unreadable or breaks the trace schema."""


class ConfigError(CpbenchError, ValueError):
    """An option or configuration value is invalid."""


class TargetError(CpbenchError, ConnectionError):
    """The control plane cannot be reached or does not behave as required."""

    exit_status = 1


class OutputError(CpbenchError, OSError):
    """Results cannot be written (full disk, permissions)."""

    exit_status = 1


class ClientSaturated(CpbenchError):
    """The client stayed more than ``--max-behind`` behind its schedule and stopped the run:
    it cannot send this trace at this rate. Everything up to the stop is written, with
    ``run.stop_reason`` set to :attr:`stop_reason`."""

    exit_status = 4
    stop_reason = "client-saturated"
