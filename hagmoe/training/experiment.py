"""The router comparison: HAG-MoE (dynamic K) vs HAG-MoE with fixed K (k_min = k_max) vs the
standard linear top-k router, trained on the same tokens for the same steps.

Every variant shares the base run's data folder (same tokenizer, same shards) and seed (same
batches). The fixed-K and linear variants use K = the full model's measured mean K per token
(rounded, within [k_min, k_max]) unless given, so the three spend about the same expert compute;
the linear variant has no feedback (feedback_dim = 0) and unnormalised top-k scores, as OLMoE.

    python -m hagmoe.training.experiment configs/compare_routers.toml
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hagmoe.training.config import TrainConfig
from hagmoe.training.trainer import DATA_DIR, Trainer

VARIANTS = ("hagmoe", "fixed_k", "linear")
RESULTS_FILE = "comparison.json"


@dataclass(slots=True)
class VariantResult:
    """One variant's outcome at the end of training."""

    name: str
    router: str
    k: str  # "k_min..k_max" (dynamic), "K" (fixed) or "top-K" (linear)
    params: int
    val_loss: float
    val_bpb: float
    mean_k: float  # measured on the validation windows
    tokens_per_second: float
    model_dir: str


def variant_config(base: TrainConfig, name: str, k: int) -> TrainConfig:
    """The base config turned into one variant, in its own out_dir, sharing the base data."""
    model = dict(base.model)
    if name == "fixed_k":
        model.update(router="attention", k_min=k, k_max=k)
    elif name == "linear":
        model.update(router="linear", top_k=k, normalize_topk=False, feedback_dim=0)
    elif name != "hagmoe":
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
    data = base.data
    shared = data.data_dir or str(Path(base.out_dir) / DATA_DIR)
    return base.replace(
        model=model,
        data=type(data)(**{**asdict(data), "data_dir": shared}),
        out_dir=str(Path(base.out_dir) / name),
    )


def compare_routers(base: TrainConfig, fixed_k: int | None = None) -> list[VariantResult]:
    """Train the three variants in turn; write <out_dir>/comparison.json and return the results."""
    results = [_run("hagmoe", variant_config(base, "hagmoe", 1))]
    if fixed_k is None:
        full = base.model_config(base.data.vocab_size)
        fixed_k = min(full.k_max, max(full.k_min, round(results[0].mean_k)))
    for name in VARIANTS[1:]:
        results.append(_run(name, variant_config(base, name, fixed_k)))
    out = Path(base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return results


def format_results(results: Sequence[VariantResult]) -> str:
    """A fixed-width table of the results."""
    lines = [f"{'variant':<10}{'router':<11}{'K':<8}{'params':>10}{'val bpb':>10}{'mean K':>8}"]
    lines += [
        f"{r.name:<10}{r.router:<11}{r.k:<8}{r.params:>10}{r.val_bpb:>10.4f}{r.mean_k:>8.2f}"
        for r in results
    ]
    return "\n".join(lines)


def _run(name: str, config: TrainConfig) -> VariantResult:
    trainer = Trainer(config)
    result = trainer.train()
    final = result.evals[config.steps]
    cfg = trainer.model.config
    if cfg.router == "linear":
        k = f"top-{cfg.top_k}"
    elif cfg.k_min == cfg.k_max:
        k = str(cfg.k_min)
    else:
        k = f"{cfg.k_min}..{cfg.k_max}"
    return VariantResult(
        name=name,
        router=cfg.router,
        k=k,
        params=sum(p.numel() for p in trainer.model.parameters()),
        val_loss=final.loss,
        val_bpb=final.bpb,
        mean_k=final.mean_k,
        tokens_per_second=result.tokens_per_second,
        model_dir=str(result.model_dir),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="base training config (TOML)")
    parser.add_argument("--fixed-k", type=int, default=None, help="K of the fixed and linear runs")
    args = parser.parse_args(argv)
    results = compare_routers(TrainConfig.from_file(args.config), args.fixed_k)
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
