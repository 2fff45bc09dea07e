"""The training loop: data, model, objective, schedules, validation, checkpoints and the final
model folder.

A run folder (`out_dir`) ends up holding:
```
model/             the serving format: config.json, model.safetensors, tokenizer.json
train_log.jsonl    one JSON object per line: start / train / eval / checkpoint / resume / done
train_config.toml  the resolved training config
checkpoints/       step_XXXXXXXX/trainer_state.pt (exact resume, at any world size)
data/              tokenizer and token shards (unless data.data_dir points elsewhere)
tensorboard/       TensorBoard event files (hagmoe.training.tracking; when installed)
```
Under torchrun (hagmoe.training.distributed) every rank runs this loop on its slice of each
global batch; rank 0 alone writes the log, the trackers, the checkpoints and model/.
Legend: B sequences (the global batch), T tokens per sequence.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hagmoe.model.checkpoint import load_model, save_model
from hagmoe.model.factory import init_weights
from hagmoe.model.forward_context import TrainingOptions
from hagmoe.model.model import HagMoEModel
from hagmoe.training.checkpointing import TrainerState, checkpoint_dir, load_state, save_state
from hagmoe.training.config import TrainConfig
from hagmoe.training.dataset import TOKENIZER_FILE, TokenData, prepare_data, sample_batch
from hagmoe.training.distributed import Runtime
from hagmoe.training.errors import InitFromError
from hagmoe.training.evaluation import EvalResult, evaluate
from hagmoe.training.objective import LossTerms, objective
from hagmoe.training.optim import build_optimizer, clip_gradients
from hagmoe.training.schedules import (
    k_override_at,
    loss_weights,
    lr_at,
    phase_at,
    scored_positions,
    update_entropy_means,
)
from hagmoe.training.tracking import Trackers, open_trackers, router_stats

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.toml"
MODEL_DIR = "model"
DATA_DIR = "data"
_AT_STEP_END = ("start", "eval", "checkpoint", "resume")


@dataclass(slots=True)
class TrainResult:
    """What one call of Trainer.train did."""

    losses: dict[int, float] = field(default_factory=dict)  # step -> total loss
    evals: dict[int, EvalResult] = field(default_factory=dict)  # step after which it ran
    model_dir: Path | None = None
    seconds: float = 0.0
    tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """Trains a HAG-MoE (or linear-router) model as a TrainConfig says; resumable exactly."""

    def __init__(
        self, config: TrainConfig, state: TrainerState | None = None, runtime: Runtime | None = None
    ) -> None:
        """A fresh run (state None: weights from init_weights(seed), or from config.init_from),
        or one continuing `state`; `runtime` places it among torchrun's ranks (default: one
        process on the CPU)."""
        self.config = config
        self.runtime = runtime or Runtime()
        self.out_dir = Path(config.out_dir)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.runtime.check_batch(config.batch_size, "batch_size")
        for i, phase in enumerate(config.curriculum):
            self.runtime.check_batch(phase.batch_size, f"curriculum[{i}].batch_size")
        self.data: TokenData = self._prepare_data()
        model_config = config.model_config(self.data.vocab_size, self.data.tokenizer.eos_token_id)
        self.model = HagMoEModel(model_config)
        init_weights(self.model, config.seed)
        if state is not None:
            self.model.load_state_dict(state.model)
        elif config.init_from:
            self._load_init_weights(Path(config.init_from))
        self.model.train()
        self.forward = self.runtime.wrap(self.model)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.trackers = Trackers()
        self.step = 0
        self.tokens_seen = 0
        if state is None:
            torch.manual_seed(config.seed)
            self._start_log()
        else:
            self._restore(state)

    @classmethod
    def resume(
        cls,
        path: str | Path,
        config: TrainConfig | None = None,
        runtime: Runtime | None = None,
        **changes: Any,
    ) -> Trainer:
        """Continue from a checkpoint folder (or a run folder's newest checkpoint) with the config
        saved in it, or with `config` (e.g. more steps; the data and model must be the same),
        with top-level keys changed by `changes` (e.g. threads, progress), at any world size."""
        state = load_state(path)
        config = config or TrainConfig.from_dict(state.config)
        return cls(config.replace(**changes) if changes else config, state, runtime)

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_FILE

    def train(self, until_step: int | None = None) -> TrainResult:
        """Run steps from the current one up to until_step (default: config.steps), validating
        and checkpointing on their intervals; at config.steps, validate and save the model folder.
        Stopping early (until_step < steps) leaves a checkpoint to resume from."""
        cfg = self.config
        end = min(cfg.steps, until_step if until_step is not None else cfg.steps)
        result = TrainResult()
        start_time = time.perf_counter()
        bar = tqdm(
            total=self._tokens_until(cfg.steps),
            initial=self.tokens_seen,
            unit="tok",
            unit_scale=True,
            disable=not (cfg.progress and self.runtime.is_main),
            dynamic_ncols=True,
        )
        params = {k: v for k, v in cfg.to_dict().items() if not isinstance(v, dict | list)}
        self.trackers = open_trackers(
            cfg.tracking, self.out_dir, params, self.step, self.runtime.is_main
        )
        try:
            self._run(end, result, bar)
        finally:
            self.trackers.close()
        result.seconds = time.perf_counter() - start_time
        if self.step == cfg.steps:
            self.save_checkpoint()
            result.model_dir = self.save_model()
            self._log({"event": "done", "step": self.step, "tokens": self.tokens_seen})
        elif cfg.checkpoint_interval <= 0 or self.step % cfg.checkpoint_interval != 0:
            self.save_checkpoint()
        self.runtime.barrier()
        return result

    def _run(self, end: int, result: TrainResult, bar: tqdm[Any]) -> None:
        cfg = self.config
        with bar:
            while self.step < end:
                record = self.train_step()
                result.losses[record["step"]] = record["loss"]
                result.tokens += record["tokens"]
                bar.update(record["tokens"])
                bar.set_postfix(step=record["step"], loss=f"{record['loss']:.3f}", refresh=False)
                if cfg.log_interval > 0 and record["step"] % cfg.log_interval == 0:
                    self._log(record)
                last = self.step == cfg.steps
                if last or (cfg.eval_interval > 0 and self.step % cfg.eval_interval == 0):
                    result.evals[self.step] = self.validate()
                interval = cfg.checkpoint_interval
                if not last and interval > 0 and self.step % interval == 0:
                    self.save_checkpoint()

    def train_step(self) -> dict[str, Any]:
        """One optimisation step on this rank's slice of the global batch; returns its log record
        (loss terms, router statistics, lr, mu_H, tokens/s), every value the global batch's."""
        cfg, step, reduce = self.config, self.step, self.runtime.reduce
        began = time.perf_counter()
        phase = phase_at(step, cfg.curriculum)
        batch = phase.batch_size or cfg.batch_size
        inputs, targets = self.runtime.shard(
            *sample_batch(self.data.train, batch, phase.seq_len, cfg.seed, step)
        )
        lr = lr_at(step, cfg.optimizer, cfg.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        weights = loss_weights(step, cfg.objective)
        k_override = k_override_at(step, self.model.config, cfg.schedule.k_warmup_steps)
        out = self.forward(inputs, TrainingOptions(k_override=k_override))
        terms = objective(self.model, out, targets, weights, reduce=reduce)
        scored = scored_positions(inputs.shape[0], phase.seq_len, inputs.device)
        stats = router_stats(self.model, out.routing, scored, reduce)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        grad_norm = clip_gradients(self.model, cfg.optimizer)
        self.optimizer.step()
        mu = update_entropy_means(
            self.model,
            out.routing,
            scored,
            cfg.schedule.mu_momentum,
            initialise=step == 0 and not cfg.init_from,  # fine-tuning keeps the model's mu_H
            reduce=reduce,
        )
        tokens = batch * phase.seq_len
        self.step += 1
        self.tokens_seen += tokens
        seconds = time.perf_counter() - began
        values = _averaged(terms, self.runtime)
        return {
            "event": "train",
            "step": step,
            "loss": values.pop("total"),
            **values,
            "lr": lr,
            "seq_len": phase.seq_len,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "grad_norm": grad_norm,
            "k_override": k_override,
            **stats,
            "mu_h": mu,
        }

    def validate(self) -> EvalResult:
        """Validation loss, bits per byte and mean K now; logged. Every rank scores the whole
        validation split (FSDP's forward is collective); rank 0 logs."""
        cfg = self.config
        result = evaluate(
            self.model,
            self.data.val,
            self.data.token_bytes,
            cfg.eval_window,
            cfg.eval_batch_size or cfg.batch_size,
            cfg.eval_tokens,
        )
        self._log({"event": "eval", "step": self.step, **result.as_dict()})
        return result

    def save_checkpoint(self) -> Path:
        """A resumable checkpoint of the current step: full model and optimizer state in the
        one-process layout (gathered from every rank; rank 0 writes)."""
        model = self.runtime.model_state(self.model)
        optimizer = self.runtime.optimizer_state(self.model, self.optimizer)
        folder = checkpoint_dir(self.out_dir, self.step)
        if self.runtime.is_main:
            state = TrainerState(
                step=self.step,
                tokens_seen=self.tokens_seen,
                model=model,
                optimizer=optimizer,
                torch_rng=torch.get_rng_state(),
                config=self.config.to_dict(),
            )
            folder = save_state(self.out_dir, state, self.config.keep_checkpoints)
            self._log({"event": "checkpoint", "step": self.step, "path": str(folder)})
        self.runtime.barrier()
        return folder

    def save_model(self, folder: str | Path | None = None) -> Path:
        """The model folder in the serving format (config.json, model.safetensors,
        tokenizer.json), by default <out_dir>/model; written by rank 0 from the full weights."""
        target = Path(folder) if folder is not None else self.out_dir / MODEL_DIR
        model = self.model
        if self.runtime.mode == "fsdp":
            full = self.runtime.model_state(self.model)
            model = HagMoEModel(self.model.config)
            if self.runtime.is_main:
                model.load_state_dict(full)
        if self.runtime.is_main:
            save_model(model, target, self.data.tokenizer)
        self.runtime.barrier()
        return target

    def _tokens_until(self, steps: int) -> int:
        total = 0
        for step in range(steps):
            phase = phase_at(step, self.config.curriculum)
            total += (phase.batch_size or self.config.batch_size) * phase.seq_len
        return total

    def _prepare_data(self) -> TokenData:
        """The token data, built by rank 0 while the others wait, then read by every rank;
        fine-tuning encodes with the init folder's tokenizer."""
        cfg = self.config
        folder = Path(cfg.data.data_dir or self.out_dir / DATA_DIR)
        tokenizer = Path(cfg.init_from) / TOKENIZER_FILE if cfg.init_from else None
        if tokenizer is not None and not tokenizer.is_file():
            raise InitFromError(f"--init-from {cfg.init_from}: the folder has no {TOKENIZER_FILE}")
        if self.runtime.is_main:
            data = prepare_data(cfg.data, folder, tokenizer)
        self.runtime.barrier()
        if not self.runtime.is_main:
            data = prepare_data(cfg.data, folder, tokenizer)
        return data

    def _load_init_weights(self, folder: Path) -> None:
        """The weights (and mu_H buffers) of the serving folder being fine-tuned."""
        if self.data.vocab_size > self.model.config.vocab_size:
            raise InitFromError(
                f"--init-from {folder}: its tokenizer has {self.data.vocab_size} tokens, the "
                f"model's embedding {self.model.config.vocab_size}"
            )
        loaded = load_model(folder, dtype=self.model.dtype)
        self.model.load_state_dict(loaded.state_dict())

    def _start_log(self) -> None:
        if not self.runtime.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / CONFIG_FILE).write_text(self.config.to_toml())
        self.log_path.write_text("")
        params = sum(p.numel() for p in self.model.parameters())
        self._log(
            {
                "event": "start",
                "step": 0,
                "params": params,
                "model": self.model.config.to_dict(),
                "data": self.data.meta,
            }
        )

    def _restore(self, state: TrainerState) -> None:
        """Optimizer, RNG and step of `state` (the model was loaded before wrapping)."""
        self.runtime.load_optimizer_state(self.model, self.optimizer, state.optimizer)
        torch.set_rng_state(state.torch_rng)
        self.step, self.tokens_seen = state.step, state.tokens_seen
        if not self.runtime.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / CONFIG_FILE).write_text(self.config.to_toml())
        kept: list[str] = []
        if self.log_path.is_file():
            for line in self.log_path.read_text().splitlines():
                record = json.loads(line)
                step, event = int(record.get("step", 0)), record.get("event")
                if step < self.step or (step == self.step and event in _AT_STEP_END):
                    kept.append(line)
        self.log_path.write_text("".join(line + "\n" for line in kept))
        self._log({"event": "resume", "step": self.step})

    def _log(self, record: dict[str, Any]) -> None:
        if not self.runtime.is_main:
            return
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.trackers.log_record(record)


def _averaged(terms: LossTerms, runtime: Runtime) -> dict[str, float]:
    """Each loss term as a float, averaged over the ranks: the global batch's value."""
    names = ("total", "lm", "group", "expert", "div", "gamma", "z")
    stacked = torch.stack([getattr(terms, n).detach().float() for n in names])
    return dict(zip(names, runtime.reduce.average(stacked).tolist(), strict=True))
