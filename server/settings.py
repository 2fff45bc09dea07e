"""The server's settings: what `hagmoe serve` flags and HAGMOE_* environment variables set."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import hagmoe
from hagmoe.engine.memory import DEFAULT_MEMORY_UTILIZATION

BUNDLED_MODEL = Path(hagmoe.__file__).resolve().parent / "assets"


class SettingsError(ValueError):
    """A setting is missing or inconsistent; the message says what to pass."""


@dataclass(slots=True)
class Settings:
    model: Path = BUNDLED_MODEL
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int = 50051  # 0 disables gRPC
    api_keys: list[str] = field(default_factory=list)
    max_concurrent_requests: int = 64
    max_queue: int = 256
    max_input_tokens: int | None = None  # default: max_model_len - 1
    max_total_tokens: int | None = None  # default: max_model_len
    max_body_bytes: int = 2 * 1024 * 1024
    request_timeout: float | None = None  # a ceiling on every request's deadline
    drain_timeout: float = 30.0
    header_timeout: float = 10.0  # a connection's request head must arrive within this (s)
    body_timeout: float = 30.0  # a request's body must arrive within this (s)
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_bytes: int | None = None
    memory_utilization: float = DEFAULT_MEMORY_UTILIZATION  # the KV cache's share of free memory
    available_memory_bytes: int | None = None  # None: measured once the weights are loaded
    max_model_len: int | None = None  # default: the model's max_position
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"  # or "priority": a request's `priority` orders it
    dtype: str = "float32"
    quantization: str = "none"  # CPU weights: none (float32), bf16 or int8
    device: str = "cpu"
    threads: int | None = None
    log_level: str = "info"
    served_model_name: str | None = None
    chat_template: str | None = None  # a file or Jinja source; None: the tokenizer's
    tool_call_parser: str | None = None  # "hermes": tool_choice auto reads calls from the text

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.name or "hagmoe"

    def check_model_folder(self) -> None:
        """Fail with a message that names the folder and the flag when no model is there."""
        if not (self.model / "config.json").is_file():
            bundled = " (the bundled default model is not installed)" if self._bundled else ""
            raise SettingsError(
                f"no model at {self.model}: config.json is missing{bundled}. "
                "Pass --model FOLDER (or set HAGMOE_MODEL) to a folder holding config.json, "
                "model.safetensors and the tokenizer."
            )

    @property
    def _bundled(self) -> bool:
        return self.model.resolve() == BUNDLED_MODEL

    def check(self) -> None:
        for name in ("max_concurrent_requests", "max_num_seqs", "block_size", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be > 0 seconds")
        if not 0.0 < self.memory_utilization <= 1.0:
            raise SettingsError("--memory-utilization must lie in (0, 1]")
        for name in ("available_memory_bytes", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_queue < 0:
            raise SettingsError("--max-queue must be >= 0")
        for port_name in ("port", "grpc_port"):
            if not 0 <= getattr(self, port_name) < 65536:
                raise SettingsError(f"--{port_name.replace('_', '-')} must lie in [0, 65535]")

    def chat_template_source(self, tokenizer_template: str | None) -> str | None:
        """--chat-template (a file's text, or the template itself), else the tokenizer's."""
        given = self.chat_template
        if not given:
            return tokenizer_template
        path = Path(given)
        try:
            if "{" not in given and path.is_file():
                return path.read_text()
        except OSError as exc:
            raise SettingsError(f"--chat-template {given}: cannot read it ({exc})") from exc
        if "{" not in given:
            raise SettingsError(f"--chat-template {given}: no such file, and not a Jinja template")
        return given

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        keys = [k for k in (args.api_key or []) if k]
        if args.api_key_file:
            keys += read_api_key_file(Path(args.api_key_file))
        settings = cls(
            model=Path(args.model),
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            api_keys=keys,
            max_concurrent_requests=args.max_concurrent_requests,
            max_queue=args.max_queue,
            max_input_tokens=args.max_input_tokens,
            max_total_tokens=args.max_total_tokens,
            max_body_bytes=args.max_body_bytes,
            request_timeout=args.request_timeout or None,
            drain_timeout=args.drain_timeout,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            block_size=args.block_size,
            num_blocks=args.num_blocks,
            kv_cache_bytes=args.kv_cache_bytes,
            memory_utilization=getattr(args, "memory_utilization", DEFAULT_MEMORY_UTILIZATION),
            available_memory_bytes=getattr(args, "available_memory_bytes", None),
            max_model_len=getattr(args, "max_model_len", None),
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=not args.no_prefix_caching,
            scheduling_policy=args.scheduling_policy,
            dtype=args.dtype,
            quantization=args.quantization,
            device=args.device,
            threads=args.threads,
            log_level=args.log_level,
            served_model_name=args.served_model_name,
            chat_template=args.chat_template,
            tool_call_parser=getattr(args, "tool_call_parser", None) or None,
        )
        settings.check()
        return settings


def read_api_key_file(path: Path) -> list[str]:
    """One key a line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SettingsError(f"cannot read --api-key-file {path}: {exc}") from exc
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]
