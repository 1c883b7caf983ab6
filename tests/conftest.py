"""Shared test fixtures: the real TCIA samples beside the checkout (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REALDATA = Path(os.environ.get("LUNGCAD_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Path of ../shared/realdata (LIDC-IDRI-0001 and Lung_Dx-A0001 samples)."""
    if not (REALDATA / "LIDC-IDRI").is_dir():
        pytest.skip(f"real TCIA samples not found at {REALDATA} (set LUNGCAD_REALDATA or place ../shared beside the checkout)")
    return REALDATA
