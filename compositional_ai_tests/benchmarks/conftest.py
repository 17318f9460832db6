"""The benchmarks package lives beside compositional_ai, outside the installed packages."""

import sys
from pathlib import Path

# `make bench` runs from the repository root, where `benchmarks` is importable; pytest's
# importlib mode does not put the root on sys.path, so these tests do.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
