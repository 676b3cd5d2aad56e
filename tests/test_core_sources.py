"""Rules the compiled core's sources must keep that no behaviour test on today's NumPy sees.

Every ``cpbench/_core/*.pyx`` compiles with ``wraparound=False``. Cython then takes an index as
non-negative, on Python objects too: for a type that says it is a sequence it calls the type's
``sq_item`` slot with the index as written. NumPy 2.5 marks ``ndarray`` a sequence
(numpy/numpy#30653), so ``indptr[-1]`` in ``slo.pyx`` raised IndexError there and every replay's
summary fold failed, while the tests passed on NumPy 2.4. A negative literal index or slice
bound is the pattern; a computed index (``a[n - 1]``) is what to write instead.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "cpbench" / "_core"
SOURCES = sorted(CORE.glob("*.pyx"))
# Inside one pair of brackets: a minus sign opening the subscript or following ':' or ','.
SUBSCRIPT = re.compile(r"\[([^\[\]]*)\]")
NEGATIVE = re.compile(r"(^|[:,])\s*-\s*[\w(]")
STRING = re.compile(r"'[^']*'|\"[^\"]*\"")


def negative_subscripts(text: str) -> list[str]:
    """``line: code`` for each subscript in ``text`` that holds a negative literal bound."""
    hits = []
    for i, line in enumerate(text.splitlines(), 1):
        code = STRING.sub("''", line.split("#", 1)[0])
        if any(NEGATIVE.search(m.group(1)) for m in SUBSCRIPT.finditer(code)):
            hits.append(f"{i}: {line.strip()}")
    return hits


def test_the_pattern_is_found_where_it_was_and_not_in_sums():
    assert negative_subscripts("x = indptr[-1]\ny = a[:-2]\nz = m[i, -1]\n") == [
        "1: x = indptr[-1]", "2: y = a[:-2]", "3: z = m[i, -1]"]
    assert negative_subscripts("x = a[n - 1]\ny = a[k:n-1]  # a[-1]\ns = '[-1]'\n") == []


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_negative_index_where_wraparound_is_off(source):
    text = source.read_text(encoding="utf-8")
    assert "wraparound=False" in text.splitlines()[0], "the rule below assumes the directive"
    assert negative_subscripts(text) == []
