"""The Dockerfile, read with Docker's own parser (no Docker engine here): its stages and
variants, the same install steps as `make install`, a non-root user, read-only-root layout,
the HEALTHCHECK (whose script runs here against a real server), ports and build context."""

from __future__ import annotations

import fnmatch
import shlex
import shutil
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest
from deploy_support import HEALTHCHECK, ROOT, run_tool, tool

from loadtests.server_process import ServeProcess, free_port

DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUNDLED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def values(self, cmd: str) -> list[tuple[str, ...]]:
        return [c.value for c in self.instructions if c.cmd == cmd]

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for value in self.values("ENV"):
            pairs.update(zip(value[::2], value[1::2], strict=True))
        return pairs


def parse() -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            base, _as, name = command.value
            assert _as.upper() == "AS", f"every stage is named: {command.original}"
            stages.append(Stage(name, base))
        elif stages:
            stages[-1].instructions.append(command)
        elif command.cmd == "ARG":
            key, _, default = command.value[0].partition("=")
            global_args[key] = default
    return global_args, stages


def stage(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def shell_commands(script: str) -> list[list[str]]:
    """A shell script's simple commands as words (split at `&&`, `||`, `;` and `|`)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(scripts: list[str]) -> list[list[str]]:
    """What each `pip install` installs (its non-option arguments), in order."""
    installs: list[list[str]] = []
    takes_value = {"--index-url", "-i", "--extra-index-url", "--target", "-c", "-r", "-t"}
    for script in scripts:
        for words in shell_commands(script.replace("$(PIP)", "pip")):
            if "pip" not in words or "install" not in words:
                continue
            args = words[words.index("install") + 1 :]
            targets, skip = [], False
            for word in args:
                if skip:
                    skip = False
                elif word in takes_value:
                    skip = True
                elif not word.startswith("-"):
                    targets.append(word)
            installs.append(targets)
    return installs


def make_install_recipe() -> list[str]:
    """The recipe of the stamp rule `make install` runs."""
    lines = MAKEFILE.read_text().splitlines()
    start = lines.index("$(STAMP): pyproject.toml")
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def project_root(target: str) -> str:
    """`.`, `.[dev]` and `-e .[dev]` all name the project at the context root."""
    return target.split("[", 1)[0]


def test_stages_select_cpu_by_default_and_cuda_by_build_arg() -> None:
    global_args, stages = parse()
    assert global_args["VARIANT"] == "cpu"
    names = [s.name for s in stages]
    assert names[-1] == "runtime", "the last stage is the image `docker build` produces"
    builder, runtime = stage(stages, "builder"), stage(stages, "runtime")
    assert builder.base == runtime.base == "variant-${VARIANT}"
    cpu, cuda = stage(stages, "variant-cpu").env(), stage(stages, "variant-cuda").env()
    assert cpu["HAGMOE_DEVICE"] == "cpu" and "/whl/cpu" in cpu["HAGMOE_TORCH_INDEX"]
    assert cuda["HAGMOE_DEVICE"] == "cuda" and "cpu" not in cuda["HAGMOE_TORCH_INDEX"]
    assert cuda["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in cuda["NVIDIA_DRIVER_CAPABILITIES"]


def test_install_steps_are_those_of_make_install() -> None:
    make = pip_installs(make_install_recipe())
    _, stages = parse()
    docker = pip_installs(list(v[0] for v in stage(stages, "builder").values("RUN")))
    assert len(make) == len(docker) == 3, (make, docker)
    assert make[0] == docker[0] == ["pip"]
    assert make[1] == docker[1], "the same torch pin, installed before the project"
    assert make[1][0].startswith("torch==")
    assert [project_root(t) for t in make[2]] == [project_root(t) for t in docker[2]] == ["."]


def test_bundled_model_ships_in_the_package_and_the_build_checks_it() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "assets/*" in pyproject["tool"]["setuptools"]["package-data"]["hagmoe"]
    _, stages = parse()
    runs = " ".join(v[0] for v in stage(stages, "builder").values("RUN"))
    assert "BUNDLED_MODEL" in runs
    assert all(name in runs for name in BUNDLED_FILES)


def test_runtime_is_non_root_serves_on_all_interfaces_and_exposes_both_ports() -> None:
    _, stages = parse()
    runtime = stage(stages, "runtime")
    user = runtime.values("USER")[-1][0]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root uid (runAsNonRoot can check it)"
    exposed = {port for value in runtime.values("EXPOSE") for port in value}
    assert exposed == {"8000", "50051"}
    env = runtime.env()
    assert env["HAGMOE_HOST"] == "0.0.0.0"
    assert (env["HAGMOE_PORT"], env["HAGMOE_GRPC_PORT"]) == ("8000", "50051")
    entrypoint = list(runtime.values("ENTRYPOINT")[-1]) + list(runtime.values("CMD")[-1])
    assert entrypoint[-2:] == ["hagmoe", "serve"]
    assert entrypoint[0] == "tini", "an init as PID 1 forwards SIGTERM (drain) and reaps"


def test_everything_written_lands_in_declared_volumes() -> None:
    _, stages = parse()
    runtime = stage(stages, "runtime")
    volumes = {v for value in runtime.values("VOLUME") for v in value}
    env = runtime.env()
    writable = [
        "HOME",
        "TMPDIR",
        "XDG_CACHE_HOME",
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "CUDA_CACHE_PATH",
        "HF_HOME",
    ]
    for key in writable:
        path = Path(env[key])
        assert any(path == Path(v) or Path(v) in path.parents for v in volumes), (key, path)
    assert stage(stages, "base").env()["PYTHONDONTWRITEBYTECODE"] == "1"


def test_healthcheck_runs_the_shipped_script() -> None:
    _, stages = parse()
    runtime = stage(stages, "runtime")
    (health,) = [c for c in runtime.instructions if c.cmd == "HEALTHCHECK"]
    assert health.value[0] == "CMD"
    script = health.value[-1]
    copies = {c.value[-1]: c.value[0] for c in runtime.instructions if c.cmd == "COPY"}
    assert (ROOT / copies[script]).resolve() == HEALTHCHECK
    flags = dict(flag.lstrip("-").split("=", 1) for flag in health.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= flags.keys()


def ignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def kept(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").replace("**/", "*")
        if any(fnmatch.fnmatchcase(p, glob) for p in prefixes):
            result = negate
    return result


def copy_sources(stages: list[Stage]) -> list[str]:
    """What the Dockerfile copies from the build context."""
    return [
        src
        for s in stages
        for c in s.instructions
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    ]


def test_dockerignore_keeps_every_copy_source_and_the_model() -> None:
    patterns = ignore_patterns()
    _, stages = parse()
    sources = copy_sources(stages)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert kept(source, patterns), f".dockerignore drops {source}, which the Dockerfile copies"
    for name in BUNDLED_FILES:
        assert kept(f"hagmoe/assets/{name}", patterns)
    for local in (".venv/bin/python", "runs/x", ".git/HEAD", "tests/unit/x.py", "a/__pycache__/b"):
        assert not kept(local, patterns), f"{local} would be sent to the build"


def test_the_builders_context_installs_the_package_with_its_model(tmp_path: Path) -> None:
    """The builder stage's `pip install .`, on exactly the files it COPYs past .dockerignore."""
    patterns = ignore_patterns()
    _, stages = parse()
    context = tmp_path / "context"
    builder_sources = copy_sources([stage(stages, "builder")])
    for source in builder_sources:
        origin = ROOT / source
        files = [origin] if origin.is_file() else [f for f in origin.rglob("*") if f.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if kept(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, context / relative)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    run_tool([*pip_wheel, "--no-build-isolation", "-w", str(wheels), str(context)])
    (wheel,) = wheels.glob("hagmoe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "server/_generated/generation_pb2.py" in names
    assert "hagmoe/cli.py" in names and "server/serve.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hagmoe = hagmoe.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assets = [f.relative_to(ROOT).as_posix() for f in (ROOT / "hagmoe" / "assets").glob("*")]
    missing = [a for a in assets if a not in names]
    assert not missing, f"the image would lack {missing}"


def test_hadolint_finds_nothing() -> None:
    run_tool([tool("hadolint"), str(DOCKERFILE)])


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_healthcheck_script_passes_on_a_live_server(live_server: ServeProcess, host: str) -> None:
    env = {"HAGMOE_HOST": host, "HAGMOE_PORT": str(live_server.port)}
    proc = run_tool([sys.executable, str(HEALTHCHECK)], ok=False, env=env)
    assert proc.returncode == 0, proc.stderr


def test_healthcheck_script_fails_without_a_server() -> None:
    env = {"HAGMOE_HOST": "127.0.0.1", "HAGMOE_PORT": str(free_port())}
    proc = run_tool([sys.executable, str(HEALTHCHECK)], ok=False, env=env)
    assert proc.returncode == 1
    assert "unhealthy" in proc.stderr
