"""Which (teacher view, student view) pairs a multi-crop loss averages over, and the one view-count
convention every loss follows.

Convention: a loss's `forward` takes the scores and, keyword-only and required, `num_teacher_views` (G:
how many views the teacher scored, stacked view-major in its rows) and `num_global` (how many of the
student's V views are global crops). Nothing is inferred: a one-view teacher is said to be one view.
`batch_and_views` derives B and V from those counts and refuses rows that do not divide."""

from __future__ import annotations

__all__ = ["PAIRINGS", "batch_and_views", "view_pairs"]

PAIRINGS = ("same_view", "swapped")


def view_pairs(num_teacher_views: int, num_student_views: int, num_global: int, pairing: str) -> list[tuple[int, int]]:
    """Pairs (i, v): teacher view i (a global crop) against student view v.

    Student views 0..num_global-1 are the global crops, the rest local.
    - `same_view` (RoB default): (i, i) and (i, every local); cross-global pairs skipped.
      With one teacher view, every student view pairs with it.
    - `swapped` (original DINO): every v != i.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got '{pairing}'")
    pairs = []
    for i in range(num_teacher_views):
        for v in range(num_student_views):
            swapped_ok = v != i
            same_ok = v == i or v >= num_global or num_teacher_views == 1
            if swapped_ok if pairing == "swapped" else same_ok:
                pairs.append((i, v))
    if not pairs:
        raise ValueError(
            f"no view pair: {num_teacher_views} teacher view(s), {num_student_views} student view(s), pairing '{pairing}'"
        )
    return pairs


def batch_and_views(teacher_rows: int, student_rows: int, num_teacher_views: int, what: str = "scores") -> tuple[int, int]:
    """(B, V) from the row counts: teacher rows = G * B, student rows = V * B. Raises ValueError."""
    if num_teacher_views < 1:
        raise ValueError(f"num_teacher_views must be >= 1, got {num_teacher_views}")
    if teacher_rows % num_teacher_views:
        raise ValueError(f"teacher {what} rows ({teacher_rows}) are not a multiple of {num_teacher_views} views")
    batch = teacher_rows // num_teacher_views
    if batch == 0 or student_rows % batch:
        raise ValueError(f"student {what} rows ({student_rows}) are not a multiple of batch {batch}")
    return batch, student_rows // batch
