"""The per-machine crossovers between the float32 kernels and torch's paths: their rule, their
cache beside the kernel library, and the choices the packed linear and experts make from them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hagmoe.kernels import cpu, tuning
from hagmoe.kernels.packed import PackedExperts, PackedLinear
from hagmoe.quantization.format import WeightFormat

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"
)


@given(st.lists(st.booleans(), min_size=len(tuning.ROW_STEPS), max_size=len(tuning.ROW_STEPS)))
def test_crossover_is_the_last_row_count_before_the_kernel_first_loses(wins: list[bool]) -> None:
    steps = tuning.ROW_STEPS
    won = dict(zip(steps, wins, strict=True))
    rows = tuning.crossover(lambda m: 1.0 if won[m] else 2.0, lambda m: 1.5, steps)
    lost = [i for i, m in enumerate(steps) if not won[m]]
    if not lost:
        assert rows == steps[-1]
    else:
        assert rows == (steps[lost[0] - 1] if lost[0] > 0 else steps[0])


def test_a_loss_timed_once_more_must_repeat_to_end_the_crossover() -> None:
    """A noisy loss at 32 rows (the next timing wins) does not stop the sweep; one at 128
    rows that repeats does."""
    timings = {32: [2.0, 1.0], 128: [2.0, 2.0]}
    rows = tuning.crossover(
        lambda m: timings[m].pop(0) if m in timings else 1.0, lambda m: 1.5, tuning.ROW_STEPS
    )
    assert rows == 64


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
        "moe_pairs": found.moe_pairs,
    }
    assert {found.panel_rows, found.plain_rows} <= set(tuning.ROW_STEPS)
    assert found.moe_pairs in tuning.PAIR_STEPS

    def no_measuring() -> tuning.Tuning:
        raise AssertionError("measured again")

    monkeypatch.setattr(tuning, "measure", no_measuring)
    tuning._tuning.cache_clear()
    assert tuning.tuning() == found


@pytest.mark.parametrize("rows", [16, 17])
def test_the_packed_linear_takes_the_kernel_up_to_the_crossover(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "_tuning", lambda threads: tuning.Tuning(16, 16, 32))
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


def test_an_older_cache_without_the_moe_crossover_is_measured_again(own_cache: Path) -> None:
    """A cache file written before the MoE crossover existed is replaced, not misread."""
    path = tuning._path(Path(cpu.library()._name), torch.get_num_threads())  # type: ignore[union-attr]
    path.write_text(json.dumps({"panel_rows": 16, "plain_rows": 16}))
    tuning._tuning.cache_clear()
    assert tuning.tuning().moe_pairs in tuning.PAIR_STEPS
    assert "moe_pairs" in json.loads(path.read_text())


@pytest.mark.parametrize("pairs", [32, 33])
def test_the_float32_experts_take_the_kernel_up_to_the_crossover(
    pairs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packed float32 experts run the kernel while their pairs per expert stay within the
    measured crossover (torch's path beyond), and the kernel gives the experts' output."""
    monkeypatch.setattr(tuning, "_tuning", lambda threads: tuning.Tuning(16, 16, 32))
    g = torch.Generator().manual_seed(pairs)
    e, d, f = 2, 32, 16
    w1, w2 = torch.randn(2, e, f, d, generator=g) * d**-0.5
    w3 = torch.randn(e, d, f, generator=g) * f**-0.5
    x = torch.randn(e * pairs, d, generator=g)
    chosen = (torch.arange(e * pairs) % e)[:, None]  # one expert a token, `pairs` an expert
    scores = torch.rand(e * pairs, 1, generator=g)
    packed = PackedExperts.from_weights(w1, w2, w3, WeightFormat.named("none"))
    with torch.inference_mode():
        assert packed.runs(x, chosen) == (pairs <= 32)
        out = packed(x, chosen, scores).double()
    a1, a2, a3 = (w[chosen[:, 0]].double() for w in (w1, w2, w3))
    x64 = x.double()
    h = F.silu(torch.einsum("td,tfd->tf", x64, a1)) * torch.einsum("td,tfd->tf", x64, a2)
    ref = torch.einsum("tf,tdf->td", h, a3) * scores.double()
    assert (out - ref).abs().max() / ref.abs().max() < 1e-5
