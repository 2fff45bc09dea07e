"""The per-machine crossover between the float32 linear kernel and MKL: its rule, its cache
beside the kernel library, and the choice the packed linear makes from it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hagmoe.kernels import cpu, tuning
from hagmoe.kernels.packed import PackedLinear
from hagmoe.quantization.format import WeightFormat

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"
)


@given(st.lists(st.booleans(), min_size=len(tuning.ROW_STEPS), max_size=len(tuning.ROW_STEPS)))
def test_crossover_is_the_last_row_count_before_the_kernel_first_loses(wins: list[bool]) -> None:
    steps = tuning.ROW_STEPS
    won = dict(zip(steps, wins, strict=True))
    rows = tuning.crossover(lambda m: 1.0 if won[m] else 2.0, lambda m: 1.5)
    lost = [i for i, m in enumerate(steps) if not won[m]]
    if not lost:
        assert rows == steps[-1]
    else:
        assert rows == (steps[lost[0] - 1] if lost[0] > 0 else tuning.MIN_ROWS)


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The built library copied into an empty kernel cache, which the tests then use."""
    lib = cpu.library()
    assert lib is not None
    shutil.copy(lib._name, tmp_path / Path(lib._name).name)
    monkeypatch.setenv("HAGMOE_KERNEL_CACHE", str(tmp_path))
    cpu.library.cache_clear()
    tuning._tuning.cache_clear()
    yield tmp_path
    cpu.library.cache_clear()
    tuning._tuning.cache_clear()


def test_measured_once_and_cached_beside_the_library(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = tuning.tuning()
    files = list(own_cache.glob(f"*.tuning-{torch.get_num_threads()}t.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text()) == {
        "panel_rows": found.panel_rows,
        "plain_rows": found.plain_rows,
    }
    assert {found.panel_rows, found.plain_rows} <= set(tuning.ROW_STEPS)

    def no_measuring() -> tuning.Tuning:
        raise AssertionError("measured again")

    monkeypatch.setattr(tuning, "measure", no_measuring)
    tuning._tuning.cache_clear()
    assert tuning.tuning() == found


@pytest.mark.parametrize("rows", [16, 17])
def test_the_packed_linear_takes_the_kernel_up_to_the_crossover(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "_tuning", lambda threads: tuning.Tuning(16, 16))
    calls = {"kernel": 0}
    kernel = cpu.linear

    def counted(*args: object) -> torch.Tensor:
        calls["kernel"] += 1
        return kernel(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(cpu, "linear", counted)
    g = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    x = torch.randn(rows, 24, generator=g)
    packed = PackedLinear.from_weight(weight, WeightFormat.named("none"))
    with torch.inference_mode():
        out = packed(x, bias)
    assert calls["kernel"] == (1 if rows <= 16 else 0)
    expected = x.double() @ weight.double().T + bias.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
