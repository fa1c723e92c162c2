"""Which (teacher view, student view) pairs a multi-crop loss averages over."""

from __future__ import annotations

__all__ = ["PAIRINGS", "view_pairs"]

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
