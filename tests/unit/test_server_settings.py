"""`hagmoe serve` flags, their HAGMOE_* environment variables, and the limits they resolve to."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hagmoe.cli import build_parser
from hagmoe.engine.client import ModelInfo
from server.cli import cmd_serve, env_name
from server.errors import InvalidInput
from server.limits import Limits
from server.settings import BUNDLED_MODEL, Settings, SettingsError


def settings(*argv: str) -> Settings:
    return Settings.from_args(build_parser().parse_args(["serve", *argv]))


def info(max_model_len: int = 512) -> ModelInfo:
    return ModelInfo(
        "m",
        "hagmoe",
        "attention",
        320,
        2,
        8,
        2,
        3,
        max_model_len,
        16,
        64,
        1104,
        "cpu",
        "float32",
        8,
        512,
    )


def test_env_name() -> None:
    assert env_name("--max-queue") == "HAGMOE_MAX_QUEUE"
    assert env_name("--api-key") == "HAGMOE_API_KEY"


def test_defaults_use_the_bundled_model_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("HAGMOE_")]:
        monkeypatch.delenv(key)
    s = settings()
    assert s.model == BUNDLED_MODEL and s.device == "cpu" and s.dtype == "float32"
    assert (s.port, s.grpc_port, s.api_keys) == (8000, 50051, [])
    assert s.enable_prefix_caching and s.request_timeout is None


def test_environment_sets_every_kind_of_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "HAGMOE_PORT": "9001",
        "HAGMOE_GRPC_PORT": "0",
        "HAGMOE_API_KEY": "a, b",
        "HAGMOE_MAX_QUEUE": "3",
        "HAGMOE_DTYPE": "bfloat16",
        "HAGMOE_NO_PREFIX_CACHING": "true",
        "HAGMOE_DRAIN_TIMEOUT": "2.5",
        "HAGMOE_NUM_BLOCKS": "100",
        "HAGMOE_LOG_LEVEL": "DEBUG",
        "HAGMOE_SERVED_MODEL_NAME": "mine",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = settings()
    assert (s.port, s.grpc_port, s.max_queue, s.num_blocks) == (9001, 0, 3, 100)
    assert s.api_keys == ["a", "b"] and s.dtype == "bfloat16" and not s.enable_prefix_caching
    assert s.drain_timeout == 2.5 and s.log_level == "debug" and s.model_name == "mine"
    assert settings("--port", "9002").port == 9002


def test_bad_environment_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAGMOE_PORT", "eighty")
    with pytest.raises(SystemExit):
        settings()


def test_api_keys_from_flags_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAGMOE_API_KEY", raising=False)
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\nk3\n  k4  \n")
    s = settings("--api-key", "k1", "--api-key", "k2", "--api-key-file", str(keys))
    assert s.api_keys == ["k1", "k2", "k3", "k4"]
    with pytest.raises(SettingsError, match="api-key-file"):
        settings("--api-key-file", str(tmp_path / "missing"))


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(SettingsError, match="max-queue"):
        settings("--max-queue", "-1")
    with pytest.raises(SettingsError, match="max-concurrent-requests"):
        settings("--max-concurrent-requests", "0")


def test_missing_model_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--model", str(tmp_path)])
    assert cmd_serve(args) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "--model" in err and "config.json" in err


def test_bundled_model_message() -> None:
    s = Settings()
    if (BUNDLED_MODEL / "config.json").is_file():
        pytest.skip("the bundled model is installed")
    with pytest.raises(SettingsError, match="bundled default model is not installed"):
        s.check_model_folder()


def test_limits_default_to_the_model_length_and_name_numbers() -> None:
    limits = Limits.resolve(Settings(), info())
    assert (limits.max_input_tokens, limits.max_total_tokens) == (511, 512)
    with pytest.raises(InvalidInput, match="600 tokens; max_input_tokens is 511"):
        limits.check(600, 1)
    with pytest.raises(InvalidInput, match=r"<= 512; given 100 input tokens and 500"):
        limits.check(100, 500)
    limits.check(100, 412)
    assert limits.room(500) == 12 and limits.room(600) == 1
    with pytest.raises(SettingsError, match="max-total-tokens"):
        Limits.resolve(Settings(max_total_tokens=1000), info())
    with pytest.raises(SettingsError, match="max-input-tokens"):
        Limits.resolve(Settings(max_input_tokens=300, max_total_tokens=300), info())


def test_deadline_is_the_nearer_of_request_and_server_timeouts() -> None:
    limits = Limits(10, 20, 100, request_timeout=5.0)
    now = time.monotonic()
    deadline = limits.deadline(1.0)
    assert deadline is not None and now + 0.9 < deadline < now + 1.5
    ceiling = limits.deadline(None)
    assert ceiling is not None and ceiling > now + 4
    assert Limits(10, 20, 100).deadline(None) is None
    with pytest.raises(InvalidInput, match="timeout"):
        limits.deadline(-1)
