"""Length specs: distributions of token lengths and batch sizes, and their defaults.

``parse_length`` reads the command-line form (``fixed:N``, ``uniform:A,B``,
``lognormal:MEDIAN,SIGMA[,MAX]``, ``empirical:PATH[:COLUMN]``) into a :class:`LengthSpec` that
draws seeded samples. Synthesis (:mod:`cpbench.record.synth`) and the ServeGen importer
(:mod:`cpbench.record.importers`) both use it; it imports neither, so they do not import each
other for it. An empirical spec resamples a file's values: the caller, which knows how to read
trace files, hands :func:`with_pool` its reader.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cpbench.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

# The defaults of `record synth` (those of the shipped traces, traces/README.md), and of the
# ServeGen importer where a trace lacks lengths.
DEFAULT_LENGTHS: dict[str, str] = {
    "input_tokens": "lognormal:256,0.8,4096", "output_tokens": "lognormal:128,0.6,512",
    "embed_tokens": "lognormal:96,0.5,512", "embed_batch": "uniform:1,16"}


@dataclasses.dataclass(frozen=True)
class LengthSpec:
    """A distribution of positive integers: token lengths or batch sizes.

    ``dist`` is ``fixed`` (``a``), ``uniform`` (integers in [a, b]), ``lognormal`` (median
    ``a``, sigma ``b``) or ``empirical`` (resample the values of ``path``'s ``column``).
    Every draw is clipped to [``low``, ``high``].
    """

    dist: str
    a: float = 0.0
    b: float = 0.0
    low: int = 1
    high: int = 1_000_000
    path: str = ""
    column: str = "input_tokens"
    # An empirical spec's values, read by :func:`with_pool` (not part of the spec's identity).
    pool: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws as int64."""
        if self.dist == "fixed":
            values = np.full(n, self.a)
        elif self.dist == "uniform":
            values = rng.integers(int(self.a), int(self.b), size=n, endpoint=True)
        elif self.dist == "lognormal":
            values = np.rint(self.a * np.exp(self.b * rng.standard_normal(n)))
        else:
            if self.pool is None:
                raise ValueError(f"empirical:{self.path} was not read; pass the spec through "
                                 "with_pool first")
            values = self.pool[rng.integers(0, len(self.pool), size=n)]
        return np.clip(values, self.low, self.high).astype(np.int64)

    def describe(self) -> str:
        """The spec in the string form ``parse_length`` reads."""
        if self.dist == "fixed":
            return f"fixed:{self.a:g}"
        if self.dist == "uniform":
            return f"uniform:{self.a:g},{self.b:g}"
        if self.dist == "lognormal":
            return f"lognormal:{self.a:g},{self.b:g},{self.high}"
        return f"empirical:{self.path}:{self.column}"


def parse_length(text: str | LengthSpec, *, what: str, low: int = 1,
                 high: int = 1_000_000) -> LengthSpec:
    """Parse ``fixed:N``, ``uniform:A,B``, ``lognormal:MEDIAN,SIGMA[,MAX]`` or
    ``empirical:PATH[:COLUMN]`` (PATH: a cpbench trace, an Azure CSV or a Mooncake JSONL;
    COLUMN: ``input_tokens`` or ``output_tokens``). A bare integer means ``fixed``."""
    if isinstance(text, LengthSpec):
        return text
    raw = str(text).strip()
    name, _, rest = raw.partition(":")
    if not rest and name.isdigit():
        name, rest = "fixed", name
    head, sep, tail = rest.rpartition(":")
    if name == "empirical" and sep and head and not os.path.exists(rest) \
            and tail not in ("input_tokens", "output_tokens"):
        raise ConfigError(f"{what} empirical:PATH:COLUMN takes COLUMN input_tokens or "
                          f"output_tokens (cpbench's names, also for an Azure CSV's "
                          f"ContextTokens/GeneratedTokens); got {tail!r}")
    try:
        if name == "empirical":
            path, _, column = rest.rpartition(":") if rest.endswith(
                (":input_tokens", ":output_tokens")) else (rest, "", "")
            return LengthSpec("empirical", path=path or rest, column=column or "input_tokens",
                              low=low, high=high)
        nums = [float(x) for x in rest.split(",")] if rest else []
        if name == "fixed" and len(nums) == 1 and nums[0] >= low:
            return LengthSpec("fixed", nums[0], low=low, high=high)
        if name == "uniform" and len(nums) == 2 and low <= nums[0] <= nums[1]:
            return LengthSpec("uniform", nums[0], nums[1], low=low, high=high)
        if name == "lognormal" and len(nums) in (2, 3) and nums[0] > 0 and nums[1] >= 0:
            cap = int(nums[2]) if len(nums) == 3 else high
            return LengthSpec("lognormal", nums[0], nums[1], low=low, high=min(cap, high))
    except ValueError:
        pass
    raise ConfigError(f"{what} must be fixed:N, uniform:A,B, lognormal:MEDIAN,SIGMA[,MAX] or "
                      f"empirical:PATH[:COLUMN] with values >= {low}; got {raw!r}")


_POOLS: dict[tuple[str, str], np.ndarray] = {}


def with_pool(spec: LengthSpec, load_table: Callable[[str], "pa.Table"]) -> LengthSpec:
    """``spec`` ready to sample: an empirical one gets the values of its file's column, read
    once per file and column with ``load_table(path)``; any other is returned as it is."""
    if spec.dist != "empirical" or spec.pool is not None:
        return spec
    key = (os.path.abspath(spec.path), spec.column)
    if key not in _POOLS:
        table = load_table(spec.path)
        values = table.column(spec.column).drop_null().to_numpy()
        if values.size == 0:
            raise ConfigError(f"empirical length source {spec.path} has no {spec.column} values")
        _POOLS[key] = values.astype(np.int64)
    return dataclasses.replace(spec, pool=_POOLS[key])


__all__ = ["DEFAULT_LENGTHS", "LengthSpec", "parse_length", "with_pool"]
