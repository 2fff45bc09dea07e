"""rope_table (the serving path's cos / sin lookup) gives rope_cos_sin's values, for plain and
scaled rope, float32 and float64, as its table grows past its first TABLE_STEP positions."""

from __future__ import annotations

import pytest
import torch

from hagmoe.model.rope import TABLE_STEP, rope_cos_sin, rope_table

SCALINGS = [None, {"type": "linear", "factor": 4.0}, {"type": "yarn", "factor": 8.0}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scaling", SCALINGS, ids=["plain", "linear", "yarn"])
def test_rope_table_matches_rope_cos_sin(dtype: torch.dtype, scaling: dict | None) -> None:
    small = torch.tensor([0, 5, 3, 17])
    large = torch.tensor([2, TABLE_STEP + 7, 3 * TABLE_STEP - 1, 1])  # the table grows
    if scaling is not None and scaling["type"] == "yarn":
        scaling = {**scaling, "original_max_position": 512}
    for positions in (small, large, small):
        got = rope_table(positions, 32, 10_000.0, dtype, scaling)
        ref = rope_cos_sin(positions, 32, 10_000.0, dtype, scaling)
        for g, r in zip(got, ref, strict=True):
            assert g.dtype == dtype and g.shape == (4, 32)
            torch.testing.assert_close(g, r, rtol=0, atol=2e-7 if dtype == torch.float32 else 0)
    empty = rope_table(torch.zeros(0, dtype=torch.int64), 32, 10_000.0, dtype, scaling)
    assert all(t.shape == (0, 32) for t in empty)
