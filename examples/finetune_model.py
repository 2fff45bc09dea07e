"""Fine-tune a model folder (default: the bundled one) on a UTF-8 text file with the trainer
(the same as `hagmoe train --config FILE --init-from DIR`; docs/training.md).

    python examples/finetune_model.py FILE [--model DIR] [--out DIR] [--steps 50 --seq-len 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hagmoe.training.config import (
    DataConfig,
    ObjectiveConfig,
    OptimizerConfig,
    Phase,
    ScheduleConfig,
    TrainConfig,
)
from hagmoe.training.trainer import Trainer

BUNDLED = Path(__file__).resolve().parents[1] / "hagmoe" / "assets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path, help="UTF-8 text to fine-tune on")
    parser.add_argument("--model", type=Path, default=BUNDLED, help="model folder")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune"), help="run folder")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        init_from=str(args.model),
        model={},  # the folder's config
        out_dir=str(args.out),
        progress=False,
        eval_interval=0,
        eval_tokens=4096,
        data=DataConfig(source="text", path=str(args.file), val_fraction=0.2),
        optimizer=OptimizerConfig(lr=args.lr, min_lr=args.lr / 10, warmup_steps=0),
        objective=ObjectiveConfig(ramp_steps=0),  # the model is trained: full lam weights
        schedule=ScheduleConfig(k_warmup_steps=0),  # and its mu_H is settled: dynamic K now
        curriculum=[Phase(until_step=0, seq_len=args.seq_len)],
    )
    trainer = Trainer(config)
    before = trainer.validate()
    result = trainer.train()
    after = result.evals[args.steps]
    print(f"validation loss {before.loss:.4f} -> {after.loss:.4f} after {args.steps} steps")
    print(f"fine-tuned model: {result.model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
