"""hagmoe.analysis: statistics against hand-computed values, the divergence hook against the
training forward's KL, `hagmoe analyze` end to end on tiny HAG-MoE and linear-router models,
and the server-responses input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hagmoe.analysis.plots import FIGURES
from hagmoe.analysis.records import (
    LayerRecords,
    RoutingRecords,
    collect_from_model,
    divergences,
)
from hagmoe.analysis.statistics import compute_statistics, position_curve
from hagmoe.cli import main
from hagmoe.model import TrainingOptions, random_model
from hagmoe.model.checkpoint import save_model
from hagmoe.model.config import named_config
from hagmoe.model.tokenizer import Tokenizer

torch.set_num_threads(1)

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet."


def _synthetic() -> RoutingRecords:
    """6 tokens, N = 4 experts in G = 2 groups of 2 (experts 0, 1 | 2, 3)."""
    experts = np.array([[0, 1], [0, -1], [2, 3], [3, 2], [1, -1], [0, -1]])  # [T, K]
    layer = LayerRecords(
        experts=experts,
        k=np.array([2, 1, 2, 2, 1, 1]),
        group=np.array([0, 0, 1, 1, 0, 0]),
        entropy=np.array([0.0, 0.5, 0.6, 0.0, 0.4, 0.8]),
        js=np.array([0.0, 0.1, 0.2, 0.0, 0.3, 0.6]),
        kl=np.array([0.0, 0.5, 1.0, 2.0, 0.0, 0.0]),
    )
    return RoutingRecords(
        router="attention",
        num_experts=4,
        num_groups=2,
        k_range=(1, 3),
        positions=np.array([0, 1, 2, 0, 1, 2]),
        tokens=["a", "b", "a", "c", "b", "a"],
        layers=[layer],
    )


def test_statistics_match_hand_computed_values() -> None:
    stats = compute_statistics(_synthetic(), position_bins=8, top=20, min_count=1)
    s = stats.layers[0]
    assert s.expert_tokens == [3, 2, 2, 2]
    assert s.load_cv == pytest.approx(math.sqrt(0.1875) / 2.25)  # std 0.433 / mean 2.25
    assert (s.busiest, s.max_over_mean) == (0, pytest.approx(3 / 2.25))
    assert s.group_tokens == [4, 2] and s.group_cv == pytest.approx(1 / 3)
    assert s.k_histogram == {"1": 3, "2": 3, "3": 0} and s.mean_k == 1.5
    assert s.k_by_position is not None and s.k_by_position.mean == [2.0, 1.0, 1.5]
    assert s.entropy_by_position is not None
    assert s.entropy_by_position.mean == pytest.approx([0.0, 0.45, 0.7])
    assert s.coactivation[0] == [3, 1, 0, 0] and s.coactivation[2][3] == 2
    assert s.coactivation_given[0][1] == pytest.approx(1 / 3)
    assert s.coactivation_given[1][0] == 0.5 and s.coactivation_given[2][3] == 1.0
    assert s.top_pairs == [
        {"experts": [2, 3], "tokens": 2, "lift": pytest.approx(3.0)},  # 2 * 6 / (2 * 2)
        {"experts": [0, 1], "tokens": 1, "lift": pytest.approx(1.0)},  # 1 * 6 / (3 * 2)
    ]
    assert s.divergence is not None
    assert s.divergence.mean_js == pytest.approx(0.2)
    assert s.divergence.mean_kl == pytest.approx(3.5 / 6)
    assert s.divergence.share_at_cap == pytest.approx(2 / 6)  # KL >= 1 nat
    assert s.top_tokens is not None
    # expert 0: P(e0) = 3/6; "a" 2 of 3 -> (2/3) / (1/2) = 4/3; "b" 1 of 2 -> 1; "c" never
    assert [(t.token, t.count, t.routed) for t in s.top_tokens[0]] == [("a", 3, 2), ("b", 2, 1)]
    assert [t.lift for t in s.top_tokens[0]] == pytest.approx([4 / 3, 1.0])
    # expert 3: P(e3) = 2/6; "c" 1 of 1 -> 3; "a" 1 of 3 -> 1
    assert [(t.token, t.lift) for t in s.top_tokens[3]] == [("c", 3.0), ("a", 1.0)]
    assert stats.not_applicable == {}
    assert len(compute_statistics(_synthetic(), min_count=3).layers[0].top_tokens[0]) == 1


def test_position_bins_and_divergences() -> None:
    curve = position_curve(np.arange(10.0), np.arange(10), num_bins=4)
    assert (curve.starts, curve.width, curve.count) == ([0, 3, 6, 9], 3, [3, 3, 3, 1])
    assert curve.mean == [1.0, 4.0, 7.0, 9.0]
    js, kl = divergences(torch.tensor([[1.0, 0.0], [0.3, 0.7]]), torch.tensor([[0.5, 0.5]] * 2))
    m = (0.75, 0.25)
    want = 0.5 * (math.log(1 / m[0]) + 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert float(js[0]) == pytest.approx(want) and float(kl[0]) == pytest.approx(math.log(2))
    assert 0 < float(js[1]) < float(js[0])


def _tiny_folder(tmp_path: Path, **overrides: object) -> Path:
    folder = tmp_path / "model"
    config = named_config("tiny", vocab_size=259, max_position=64, **overrides)
    save_model(random_model(config, seed=3), folder, Tokenizer.byte_level())
    return folder


def test_records_agree_with_the_forward_and_its_training_divergence(tmp_path: Path) -> None:
    config = named_config("tiny", vocab_size=259, max_position=64)
    model = random_model(config, seed=3, dtype=torch.float64)
    tokenizer = Tokenizer.byte_level()
    (tmp_path / "a.txt").write_text(TEXT)
    records = collect_from_model(model, tokenizer, [tmp_path / "a.txt"], context=40)
    ids = [tokenizer.bos_token_id, *tokenizer.encode(TEXT)]
    assert records.num_tokens == len(ids) and records.source["windows"] == 3  # 40 + 40 + 9
    assert records.positions.tolist() == [*range(40), *range(40), *range(len(ids) - 80)]
    assert records.tokens is not None and records.tokens[1:6] == list("ROMEO")
    with torch.no_grad():
        out = model.forward_full(torch.tensor([ids[:40]]), training=TrainingOptions())
    for layer, routing in zip(records.layers, out.routing, strict=True):
        assert np.array_equal(layer.experts[:40], routing.experts.numpy())
        assert np.array_equal(layer.k[:40], routing.k.numpy())
        assert routing.divergence is not None and layer.kl is not None and layer.js is not None
        np.testing.assert_allclose(layer.kl[:40], routing.divergence.numpy(), atol=1e-9)
        assert (layer.js >= 0).all() and (layer.js <= math.log(2) + 1e-12).all()


def _analyze(tmp_path: Path, *args: str) -> tuple[dict, str, Path]:
    out = tmp_path / "out"
    assert main(["analyze", *args, "--out", str(out), "--min-count", "2"]) == 0
    stats = json.loads((out / "statistics.json").read_text())
    return stats, (out / "report.html").read_text(encoding="utf-8"), out


def test_cli_on_a_tiny_hagmoe_model_writes_every_plot(tmp_path: Path) -> None:
    folder = _tiny_folder(tmp_path)
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": TEXT[::-1]}) + "\n")
    data = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    stats, page, out = _analyze(tmp_path, str(folder), "--data", *data, "--context", "32")
    assert all((out / f"{name}.png").stat().st_size > 1000 for name in FIGURES)
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert "n/a" not in page.split("<h2>summary")[1].split("</table>")[1]  # no section is n/a
    assert stats["router"] == "attention" and stats["not_applicable"] == {}
    assert stats["tokens"] == 2 * (len(TEXT) + 1)
    keys = {"expert_tokens", "load_cv", "group_tokens", "group_cv", "k_histogram", "mean_k"}
    keys |= {"k_by_position", "entropy_by_position", "divergence", "coactivation", "top_tokens"}
    for layer in stats["layers"]:
        assert keys <= set(layer)
        assert sum(layer["expert_tokens"]) == sum(
            int(k) * n for k, n in layer["k_histogram"].items()
        )
        assert sum(layer["group_tokens"]) == stats["tokens"]
        assert len(layer["top_tokens"]) == 8 and 0 <= layer["divergence"]["mean_js"] <= math.log(2)


def test_cli_on_a_tiny_linear_router_model_marks_the_missing_sections(tmp_path: Path) -> None:
    folder = _tiny_folder(tmp_path, router="linear", top_k=2)
    (tmp_path / "a.txt").write_text(TEXT)
    stats, page, out = _analyze(tmp_path, str(folder), "--data", str(tmp_path / "a.txt"))
    assert set(stats["not_applicable"]) == {"groups", "k", "entropy", "divergence"}
    drawn = {"expert_load", "load_cv", "coactivation"}
    assert {p.stem for p in out.glob("*.png")} == drawn
    assert page.count("data:image/png;base64,") == len(drawn) and page.count("n/a: ") == 5
    for layer in stats["layers"]:
        assert layer["group_tokens"] is None and layer["k_histogram"] is None
        assert layer["divergence"] is None and layer["top_tokens"] is not None
        assert sum(layer["expert_tokens"]) == 2 * stats["tokens"]


def _entry(layer: int, group: int, experts: list[int]) -> dict[str, object]:
    scores = [0.5] * len(experts)
    return {"layer": layer, "group": group, "experts": experts, "scores": scores,
            "k": len(experts), "entropy": 0.25}  # fmt: skip


def test_cli_reads_server_responses(tmp_path: Path) -> None:
    tgi = {
        "generated_text": "ab",
        "details": {
            "input_length": 5,
            "tokens": [
                {"id": 97, "text": "a", "routing": [_entry(0, 1, [2, 3]), _entry(1, 0, [0])]},
                {"id": 98, "text": "b", "routing": [_entry(0, 1, [3]), _entry(1, 0, [1, 0])]},
            ],
        },
    }
    openai = {
        "choices": [{"text": "a", "routing": [[_entry(0, 0, [0]), _entry(1, 1, [3])]]}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    path = tmp_path / "responses.jsonl"
    path.write_text(json.dumps(tgi) + "\n\n" + json.dumps(openai) + "\n")
    stats, page, out = _analyze(tmp_path, "--responses", str(path))
    assert (stats["router"], stats["num_experts"], stats["num_groups"]) == ("attention", 4, 2)
    assert stats["tokens"] == 3 and stats["k_range"] == [1, 2]
    assert stats["layers"][0]["expert_tokens"] == [1, 0, 1, 2]
    assert stats["layers"][1]["group_tokens"] == [2, 1]
    assert stats["layers"][0]["k_by_position"]["count"][5:7] == [1, 1]  # 5, 6 (after the prompt)
    assert set(stats["not_applicable"]) == {"divergence", "top_tokens"}  # openai: no token texts
    assert (out / "k_by_position.png").exists() and not (
        out / "divergence_by_position.png"
    ).exists()
    assert "responses do not carry them" in page
    path.write_text(json.dumps(tgi) + "\n")
    stats, _, _ = _analyze(tmp_path, "--responses", str(path))
    assert [t["token"] for t in stats["layers"][0]["top_tokens"][3]] == []  # min count 2
