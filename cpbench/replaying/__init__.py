"""The replay engine: a trace in, a results directory out.

Data flows one way through these modules:

- ``options``  — :class:`ReplayOptions`, every replay setting defined once (flags, config keys,
  API keywords, dispatcher settings derive from it);
- ``planning`` — which trace rows are sent when, each worker's share as a ``plan``;
- ``plan``     — a worker's share as raw NumPy columns the parent saves and the child maps;
- ``target``   — the embedded control plane, the reachability check;
- ``pool``     — the parent's side of the worker processes; ``child`` — a worker's body;
- ``dispatch`` — the open-loop send loop (``timer``: its timerfd); each HTTP/1.1 connection
  and the row a request becomes are compiled (:mod:`cpbench._core.conn`); ``wire`` — request
  bytes and response checks, ``rows`` — the packed result row's fields;
- ``run``      — orchestration: :func:`run_replay`; ``console`` — what a run prints.

The child process imports neither pyarrow nor the trace reader (``tests/test_spawn.py``).
Named ``replaying`` (like ``reporting``) so that importing it never replaces the public API
function ``cpbench.replay`` on the package.
"""
