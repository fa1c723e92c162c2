"""experiments/check_cpu_bf16_conv.py counts what it says (its counts themselves depend on the torch build)."""

from __future__ import annotations

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import check_cpu_bf16_conv


def test_fp32_passes_are_never_counted_and_bf16_passes_run():
    assert check_cpu_bf16_conv.bad_passes(3, bf16=False) == 0  # fp32: the gradient of a sum is always finite
    assert 0 <= check_cpu_bf16_conv.bad_passes(3, bf16=True, channels_last=True) <= 3
