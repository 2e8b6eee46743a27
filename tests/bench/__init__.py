"""Tests of the benchmarks (bench/ and `idcheck bench`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_script(name: str) -> ModuleType:
    """The script bench/<name>.py as a module (bench/ is not a package; it is on the path while the script is
    imported, so that one script can import another)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
