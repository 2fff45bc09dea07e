"""`hagmoe serve`: its flags (each also the environment variable HAGMOE_<FLAG>) and its command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from hagmoe.engine.config import DTYPES, SCHEDULING_POLICIES
from hagmoe.engine.memory import DEFAULT_MEMORY_UTILIZATION
from hagmoe.quantization.format import QUANTIZATIONS
from server.settings import BUNDLED_MODEL, Settings, SettingsError
from server.tool_calls import PARSERS

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TRUE = ("1", "true", "yes", "on")


def env_name(flag: str) -> str:
    """`--max-queue` -> `HAGMOE_MAX_QUEUE`."""
    return "HAGMOE_" + flag.lstrip("-").replace("-", "_").upper()


def _flag(
    group: argparse._ArgumentGroup,
    flag: str,
    default: Any,
    help: str,
    type: Callable[[str], Any] = str,
    **kwargs: Any,
) -> None:
    """A flag whose default comes from its environment variable (parsed like the flag)."""
    env = env_name(flag)
    value = os.environ.get(env)
    shown = "none" if default is None else default
    group.add_argument(
        flag,
        type=type,
        default=value if value not in (None, "") else default,
        help=f"{help} [env {env}; default {shown}]",
        **kwargs,
    )


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none", "auto") else int(text)


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over REST (FastAPI) and gRPC in one process",
        description="Serve a model over REST and gRPC. Every flag is also read from the "
        "environment variable HAGMOE_<FLAG> (for example HAGMOE_PORT, HAGMOE_API_KEY).",
    )
    _server_flags(p.add_argument_group("server"))
    _limit_flags(p.add_argument_group("limits"))
    _engine_flags(p.add_argument_group("engine"))
    p.set_defaults(func=cmd_serve)


def _server_flags(g: argparse._ArgumentGroup) -> None:
    _flag(g, "--model", str(BUNDLED_MODEL), "model folder (config.json, weights, tokenizer)")
    _flag(g, "--served-model-name", None, "model name in /v1 and /info (default: folder name)")
    _flag(g, "--chat-template", None, "Jinja chat template: a file, or the template itself")
    _flag(
        g,
        "--tool-call-parser",
        None,
        "read tool calls from generated text (tool_choice auto): hermes",
        choices=list(PARSERS),
    )
    _flag(g, "--host", "0.0.0.0", "REST bind address (gRPC binds the same host)")
    _flag(g, "--port", 8000, "REST port", type=int)
    _flag(g, "--grpc-port", 50051, "gRPC port; 0 disables gRPC", type=int)
    env_keys = os.environ.get(env_name("--api-key"), "")
    g.add_argument(
        "--api-key",
        action="append",
        default=[k.strip() for k in env_keys.split(",") if k.strip()] or None,
        help="accepted API key (repeat for several) [env HAGMOE_API_KEY, comma-separated]",
    )
    _flag(g, "--api-key-file", None, "file of API keys, one a line")
    _flag(g, "--log-level", "info", "log level", choices=LOG_LEVELS, type=str.lower)
    _flag(g, "--drain-timeout", 30.0, "seconds in-flight requests get after SIGTERM", type=float)


def _limit_flags(g: argparse._ArgumentGroup) -> None:
    _flag(g, "--max-concurrent-requests", 64, "requests generating at once", type=int)
    _flag(g, "--max-queue", 256, "requests waiting for a slot; beyond: 429", type=int)
    _flag(g, "--max-input-tokens", None, "prompt tokens (default: max_model_len - 1)", type=int)
    _flag(
        g, "--max-total-tokens", None, "prompt + max_new_tokens (default: max_model_len)", type=int
    )
    _flag(g, "--max-body-bytes", 2 * 1024 * 1024, "largest request body; beyond: 413", type=int)
    _flag(g, "--request-timeout", None, "ceiling on every request's deadline (s)", type=float)
    _flag(g, "--header-timeout", 10.0, "s a connection gets to send a request head", type=float)
    _flag(g, "--body-timeout", 30.0, "s a request gets to send its body; beyond: 408", type=float)


def _engine_flags(g: argparse._ArgumentGroup) -> None:
    _flag(g, "--device", "cpu", "torch device")
    _flag(g, "--dtype", "float32", "weights and cache dtype", choices=sorted(DTYPES))
    _flag(
        g,
        "--quantization",
        "none",
        "CPU weight format, quantised at load: none (float32), bf16, int8 (weight-only)",
        choices=list(QUANTIZATIONS),
    )
    _flag(g, "--block-size", 16, "KV cache block size in tokens", type=int)
    _flag(g, "--num-blocks", None, "KV cache size in blocks", type=_optional_int)
    _flag(g, "--kv-cache-bytes", None, "KV cache size in bytes (wins over --num-blocks)", type=int)
    _flag(
        g,
        "--memory-utilization",
        DEFAULT_MEMORY_UTILIZATION,
        "share of the memory free after the weights that the KV cache may take; the default "
        "cache is what it holds, at most max-num-seqs full sequences (docs/operations.md)",
        type=float,
    )
    _flag(
        g,
        "--available-memory-bytes",
        None,
        "bytes free after the weights, instead of measuring them (MemAvailable, cgroup, CUDA)",
        type=_optional_int,
    )
    _flag(g, "--max-model-len", None, "longest sequence (default: the model's)", type=_optional_int)
    _flag(g, "--max-num-seqs", 64, "sequences the engine batches", type=int)
    _flag(g, "--max-num-batched-tokens", 512, "tokens per engine step", type=int)
    _flag(
        g,
        "--scheduling-policy",
        "fcfs",
        "fcfs, or priority (requests' `priority` field: lower runs first)",
        choices=list(SCHEDULING_POLICIES),
    )
    _flag(g, "--threads", None, "torch CPU threads (default: torch's choice)", type=int)
    prefix_env = os.environ.get(env_name("--no-prefix-caching"), "").lower() in TRUE
    g.add_argument(
        "--no-prefix-caching",
        action="store_true",
        default=prefix_env,
        help="disable prefix caching [env HAGMOE_NO_PREFIX_CACHING=1]",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_args(args)
        settings.check_model_folder()
    except SettingsError as exc:
        print(f"hagmoe serve: error: {exc}", file=sys.stderr)
        return 2
    from server.serve import serve

    return serve(settings)
