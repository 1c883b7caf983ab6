"""Label rules: nodule-level malignancy from reader ratings, and patient-level unification.

See DESIGN.md section 5. Ratings are LIDC malignancy scores 1..5 (3 = indeterminate).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lungcad.errors import LungcadError

#: The paper: "malignant when at least three of four radiologists rated malignancy >= 3".
PAPER_MIN_READERS = 3
PAPER_MIN_RATING = 3


def lidc_nodule_label(ratings: Iterable[int | None], rule: str = "paper") -> int | None:
    """Binary malignancy of one nodule from its readers' ratings.

    'paper': 1 when at least 3 readers rate >= 3, otherwise 0 (so a nodule marked by only one
    or two readers is benign under this rule).
    'median': median > 3 -> 1, median < 3 -> 0, median == 3 -> None (excluded).
    Missing ratings (None) are ignored; a nodule with no rating at all -> None.
    """
    values = [int(r) for r in ratings if r is not None]
    if not values:
        return None
    if rule == "paper":
        return int(sum(r >= PAPER_MIN_RATING for r in values) >= PAPER_MIN_READERS)
    if rule == "median":
        median = float(np.median(values))
        if median > 3:
            return 1
        if median < 3:
            return 0
        return None
    raise LungcadError(f"unknown label rule {rule!r}; use 'paper' or 'median'")


def unify_patient(labels: Iterable[int | None]) -> int | None:
    """Patient label from its nodules' or series' labels: any malignant -> 1; else 0 if any
    benign; else None (nothing known, the patient is excluded). Negative values mean unknown,
    like None (the per-slice nodule_label convention)."""
    known = [int(v) for v in labels if v is not None and int(v) >= 0]
    if not known:
        return None
    return int(max(known) >= 1)
