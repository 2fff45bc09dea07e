"""Benchmark requests: random text, Shakespeare passages, or prompts sharing a prefix.

Prompts are plain ASCII text, so the byte-level tokenizer of the bench models gives one token per
character; with another tokenizer the counts differ and the server's reported counts are used."""

from __future__ import annotations

import functools
import random
import string
import sys
from dataclasses import dataclass

ALPHABET = string.ascii_letters + string.digits + " .,;:!?'-"
DATASETS = ("random", "shakespeare", "shared-prefix")


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request: the prompt text and the exact number of tokens to generate."""

    prompt: str
    output_len: int


@dataclass(frozen=True, slots=True)
class Dataset:
    """The requests of a run and the source they came from (after any fallback)."""

    source: str
    requests: list[BenchRequest]


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What to generate; output lengths are `output_len` or uniform in [output_len, output_max]."""

    name: str = "random"
    num_requests: int = 16
    input_len: int = 64
    output_len: int = 64
    output_max: int | None = None
    prefix_len: int = 256
    num_prefixes: int = 1
    seed: int = 0


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def output_lens(rng: random.Random, spec: DatasetSpec) -> list[int]:
    hi = spec.output_max if spec.output_max is not None else spec.output_len
    if not 1 <= spec.output_len <= hi:
        raise ValueError(f"output lengths must satisfy 1 <= {spec.output_len} <= {hi}")
    return [rng.randint(spec.output_len, hi) for _ in range(spec.num_requests)]


def random_dataset(spec: DatasetSpec) -> Dataset:
    rng = random.Random(spec.seed)
    prompts = [random_text(rng, spec.input_len) for _ in range(spec.num_requests)]
    return _zip("random", prompts, output_lens(rng, spec))


def shared_prefix_dataset(spec: DatasetSpec) -> Dataset:
    """`num_prefixes` long prefixes (a system prompt, a document), each request one of them
    followed by its own `input_len` characters: the prefix cache's workload."""
    rng = random.Random(spec.seed)
    prefixes = [random_text(rng, spec.prefix_len) for _ in range(max(1, spec.num_prefixes))]
    prompts = [
        prefixes[i % len(prefixes)] + random_text(rng, spec.input_len)
        for i in range(spec.num_requests)
    ]
    return _zip("shared-prefix", prompts, output_lens(rng, spec))


def shakespeare_dataset(spec: DatasetSpec) -> Dataset:
    """Passages of `input_len` characters from random places in Shakespeare's works; random
    text (source "random (shakespeare unavailable)") when the corpus cannot be loaded."""
    text = shakespeare_text()
    if text is None or len(text) <= spec.input_len:
        fallback = random_dataset(spec)
        return Dataset("random (shakespeare unavailable)", fallback.requests)
    rng = random.Random(spec.seed)
    starts = [rng.randrange(len(text) - spec.input_len) for _ in range(spec.num_requests)]
    prompts = [text[s : s + spec.input_len] for s in starts]
    return _zip("shakespeare", prompts, output_lens(rng, spec))


@functools.cache
def shakespeare_text() -> str | None:
    """The works as one ASCII string, or None (with a note on stderr) when unavailable."""
    try:
        from hagmoe.training.corpus import shakespeare_documents

        documents = shakespeare_documents()
    except Exception as exc:  # DataError, ImportError, OSError: any of them means "use random"
        print(f"bench: Shakespeare corpus unavailable ({exc}); using random text", file=sys.stderr)
        return None
    joined = "\n".join(d.text for d in documents)
    return joined.encode("ascii", errors="ignore").decode("ascii")


def make_dataset(spec: DatasetSpec) -> Dataset:
    if spec.num_requests < 1 or spec.input_len < 1:
        raise ValueError("num_requests and input_len must be >= 1")
    builders = {
        "random": random_dataset,
        "shakespeare": shakespeare_dataset,
        "shared-prefix": shared_prefix_dataset,
    }
    if spec.name not in builders:
        raise ValueError(f"unknown dataset {spec.name!r}; choose one of {DATASETS}")
    return builders[spec.name](spec)


def _zip(source: str, prompts: list[str], lens: list[int]) -> Dataset:
    return Dataset(source, [BenchRequest(p, n) for p, n in zip(prompts, lens, strict=True)])
