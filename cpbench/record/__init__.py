"""Three ways to get a trace: ``synth`` (a spec), ``importers`` (public traces), ``capture``
(a recording proxy). Each hands back a table that ``cpbench.trace.write_trace`` stores."""
from __future__ import annotations
