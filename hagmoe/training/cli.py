"""`hagmoe train --config FILE` and `hagmoe train --resume DIR`, in one process or under
`torchrun ... -m hagmoe.cli train --parallel ddp|fsdp` (hagmoe.training.distributed), and
fine-tuning with `--init-from MODEL_DIR`."""

from __future__ import annotations

import argparse

from hagmoe.training.config import DEVICES, PARALLEL_MODES, TrainConfig


def add_train_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `train` subcommand to the `hagmoe` command's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a TOML training config (see configs/)",
        description="Train a HAG-MoE model; the run folder ends with model/ in the serving format.",
    )
    p.add_argument("--config", default=None, help="training config (TOML)")
    p.add_argument(
        "--resume",
        default=None,
        help="a run folder (its newest checkpoint) or a checkpoint folder; with --config, that "
        "config replaces the saved one (e.g. more steps)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="fine-tune a serving model folder (its config, weights and tokenizer)",
    )
    p.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default="none",
        help="data parallelism under torchrun: DistributedDataParallel or FSDP2",
    )
    p.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: CUDA (LOCAL_RANK) when present"
    )
    p.add_argument("--until-step", type=int, default=None, help="stop (and checkpoint) here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """Run the `train` subcommand; prints the final validation and the model folder."""
    from hagmoe.training.distributed import Runtime
    from hagmoe.training.trainer import Trainer

    if args.config is None and args.resume is None:
        raise SystemExit("hagmoe train: give --config FILE or --resume DIR")
    if args.init_from and args.resume:
        raise SystemExit("hagmoe train: --init-from starts a run; --resume continues one")
    if args.init_from and not args.config:
        raise SystemExit("hagmoe train: --init-from needs --config FILE (steps, data, ...)")
    config = TrainConfig.from_file(args.config, args.init_from) if args.config else None
    changes: dict[str, object] = {}
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.no_progress:
        changes["progress"] = False
    runtime = Runtime.start(args.parallel, args.device)
    try:
        if args.resume:
            trainer = Trainer.resume(args.resume, config, runtime, **changes)
        else:
            assert config is not None
            trainer = Trainer(config.replace(**changes) if changes else config, runtime=runtime)
        result = trainer.train(until_step=args.until_step)
    finally:
        runtime.close()
    if not runtime.is_main:
        return 0
    for step, ev in sorted(result.evals.items()):
        print(f"step {step}: val loss {ev.loss:.4f}  bpb {ev.bpb:.4f}  mean K {ev.mean_k:.2f}")
    print(f"{result.tokens} tokens in {result.seconds:.1f}s ({result.tokens_per_second:.0f} tok/s)")
    if result.model_dir is not None:
        print(f"model: {result.model_dir}")
    else:
        print(f"stopped at step {trainer.step}; resume with --resume {trainer.out_dir}")
    return 0
