"""One worker's share of a replay (a :class:`Plan`) and its on-disk form.

The parent reads the trace once, builds each worker's plan (:func:`cpbench.workers.build_plan`)
and saves it as a folder of raw columns (:func:`save_plan`, native byte order: the same host
reads them back); the worker memory-maps it
(:func:`load_plan`). So no worker reads or validates the trace again, none holds a copy of
the whole table, and none imports pyarrow: with 10^6 requests that is the difference between
about 200 MB and under 100 MB of resident memory per worker. NumPy only.
"""
from __future__ import annotations

import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Column name -> dtype of a saved plan; the dispatcher reads them through memoryviews.
COLUMNS = {
    "rows": np.int64,            # trace row index
    "intended_ns": np.int64,     # offset from the run start
    "kind": np.int32,            # code into KIND_VALUES
    "priority": np.int32,        # code into PRIORITY_VALUES
    "model": np.int32,           # code into models
    "input_tokens": np.int32,
    "output_tokens": np.int32,   # -1 = none asked
    "batch_size": np.int32,
    "slo_ttft_ms": np.float64,   # defaults applied
    "slo_e2e_ms": np.float64,    # defaults applied
    "warmup": np.int32,          # 0/1
}


class PromptColumn:
    """Literal prompts by plan position: UTF-8 bytes, offsets, and which are given.

    ``column[j]`` is the prompt text of plan row ``j``, or None where the trace has none (the
    dispatcher then builds one from ``input_tokens``).
    """

    def __init__(self, data, offsets: np.ndarray, valid: np.ndarray) -> None:
        self.data = data                  # bytes-like (bytes or an mmap)
        self.offsets = offsets            # int64, len(valid) + 1
        self.valid = valid                # bool

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, j: int) -> str | None:
        if not self.valid[j]:
            return None
        return self.data[int(self.offsets[j]):int(self.offsets[j + 1])].decode("utf-8")

    @classmethod
    def from_texts(cls, texts: list[str | None]) -> "PromptColumn":
        """From Python strings (None = no literal prompt)."""
        encoded = [b"" if t is None else t.encode("utf-8") for t in texts]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets, np.array([t is not None for t in texts], bool))


@dataclass
class Plan:
    """This worker's share of the trace, in send order (NumPy arrays, one entry per request)."""

    rows: np.ndarray
    intended_ns: np.ndarray
    kind: np.ndarray
    priority: np.ndarray
    model: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    batch_size: np.ndarray
    slo_ttft_ms: np.ndarray
    slo_e2e_ms: np.ndarray
    warmup: np.ndarray
    prompts: PromptColumn | None       # None: every prompt is built from input_tokens
    models: list[str] = field(default_factory=list)
    # Chat rows continuing a session: the JSON array of their messages (prompts.render_rows).
    messages: PromptColumn | None = None

    def __len__(self) -> int:
        return len(self.rows)


def save_plan(plan: Plan, folder: Path) -> None:
    """Write ``plan`` under ``folder`` (created): one raw file per column, prompts, models.

    Raw columns, not ``.npy``: nothing to parse on the way back (and no pickle path).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, dtype in COLUMNS.items():
        _save(folder / f"{name}.bin", getattr(plan, name), dtype)
    meta = {"rows": len(plan), "models": plan.models, "prompts": plan.prompts is not None,
            "messages": plan.messages is not None}
    for name in ("prompts", "messages"):
        texts = getattr(plan, name)
        if texts is not None:
            stem = name[:-1]               # prompt_*, message_*
            (folder / f"{name}.bin").write_bytes(bytes(texts.data))
            _save(folder / f"{stem}_offsets.bin", texts.offsets, np.int64)
            _save(folder / f"{stem}_valid.bin", texts.valid, np.bool_)
    (folder / "plan.json").write_text(json.dumps(meta))


def load_plan(folder: Path) -> Plan:
    """Memory-map a plan written by :func:`save_plan`: pages are read as the run reaches them."""
    meta = json.loads((folder / "plan.json").read_text())
    n = int(meta["rows"])
    cols = {name: _map(folder / f"{name}.bin", dtype, n) for name, dtype in COLUMNS.items()}
    texts: dict[str, PromptColumn | None] = {}
    for name in ("prompts", "messages"):
        texts[name] = None
        if not meta.get(name):
            continue
        stem = name[:-1]
        data: bytes | mmap.mmap = b""
        if (folder / f"{name}.bin").stat().st_size:
            with open(folder / f"{name}.bin", "rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        texts[name] = PromptColumn(data, _map(folder / f"{stem}_offsets.bin", np.int64, n + 1),
                                   _map(folder / f"{stem}_valid.bin", np.bool_, n))
    return Plan(**cols, **texts, models=list(meta["models"]))


def _save(path: Path, values: np.ndarray, dtype) -> None:
    np.ascontiguousarray(values, dtype=dtype).tofile(path)


def _map(path: Path, dtype, n: int) -> np.ndarray:
    if n == 0:
        return np.empty(0, dtype)           # an empty file cannot be mapped
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))
