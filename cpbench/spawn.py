"""Command lines for the Python child processes cpbench starts (workers, the embedded sim).

``python -m cpbench...`` puts the working directory first on ``sys.path``. Started from a
source checkout of cpbench (the README's quick start runs there) after ``pip install .``, the
child would import the uncompiled source tree, which lacks the ``_core`` extensions, instead of
the installed package its parent runs. The child built here drops that entry before it imports
anything, so it runs the same cpbench as its parent; the working directory itself is unchanged,
so relative paths in its arguments still resolve.
"""
from __future__ import annotations

import sys

_BOOT = ("import os, runpy, sys\n"
         "if sys.path and sys.path[0] in ('', os.getcwd()):\n"
         "    del sys.path[0]\n"
         "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")


def python_module_cmd(module: str, *args: str) -> list[str]:
    """``[python, ...]`` that runs ``python -m module args`` without the working directory on
    ``sys.path`` (see the module docstring)."""
    return [sys.executable, "-c", _BOOT.format(module=module), *args]
