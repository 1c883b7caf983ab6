"""Shared test fixtures: the real TCIA samples beside the checkout (skipped with a reason when absent)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REALDATA = Path(os.environ.get("LUNGCAD_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Path of ../shared/realdata (LIDC-IDRI-0001 and Lung_Dx-A0001 samples)."""
    if not (REALDATA / "LIDC-IDRI").is_dir():
        pytest.skip(f"real TCIA samples not found at {REALDATA} (set LUNGCAD_REALDATA or place ../shared beside the checkout)")
    return REALDATA


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script("synth_ceiling")``: a script of ``benchmarks/`` imported as a module (they
    are scripts, not a package; registered in sys.modules so dataclasses and pickling work)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load
