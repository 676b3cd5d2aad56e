"""``python -m cpbench`` is the same as the ``cpbench`` command."""
from __future__ import annotations

import sys

from cpbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
