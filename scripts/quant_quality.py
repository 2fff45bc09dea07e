"""Quality and speed of the CPU weight formats (float32, bf16, int8) side by side.

    python scripts/quant_quality.py [--tokens 256] [--repeats 3] [--heldout DIR] [--mid small]
    python scripts/quant_quality.py --config topk-m [--tokens 256]    # quality only

Quality on the bundled model: greedy-decode `--tokens` tokens in float32, then score that
sequence teacher-forced in each format: the max relative logit error (max |diff| / max |f32|
over all positions) and the share of positions whose argmax agrees with float32's; plus the
free-running greedy tokens' agreement with float32's. With `--heldout DIR` (the *.txt files of
docs/evaluation.md), bits per byte in each format (windows of 257 every 256).
Speed: decode tok/s at 1 and 32 streams through the offline engine (16-token prompts,
`--new` new tokens, greedy), formats alternating, medians of `--repeats` runs, on the bundled
model and on the `--mid` named config with 4 layers (random weights).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import named_config, random_model
from hagmoe.model.checkpoint import load_model
from hagmoe.model.model import HagMoEModel
from hagmoe.model.tokenizer import Tokenizer
from hagmoe.quantization.format import QUANTIZATIONS, WeightFormat
from hagmoe.quantization.serving import pack_for_serving, weight_bytes
from server.settings import BUNDLED_MODEL

PROMPT = "ROMEO: But soft, what light through yonder window breaks?"


def packed(model: HagMoEModel, name: str) -> HagMoEModel:
    return pack_for_serving(model, WeightFormat.named(name))


def quality(make: Callable[[], HagMoEModel], prompt: list[int], tokens: int) -> None:
    """The table of the module docstring for the models `make` returns (one per format)."""
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    models = {name: packed(make(), name) for name in QUANTIZATIONS}
    runs = {
        name: LLM(model, config=EngineConfig(max_num_seqs=1))
        .generate([prompt], params)[0]
        .token_ids
        for name, model in models.items()
    }
    seq = torch.tensor([prompt + runs["none"]])
    with torch.inference_mode():
        logits = {n: m.forward_full(seq).logits[0, len(prompt) - 1 :] for n, m in models.items()}
    ref = logits["none"]
    print(
        "| format | weight MB | max rel logit error | argmax agreement (teacher-forced) "
        "| free-run greedy agreement |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, model in models.items():
        got = logits[name]
        err = float((got - ref).abs().max() / ref.abs().max())
        agree = float((got[:-1].argmax(-1) == ref[:-1].argmax(-1)).float().mean())
        free = sum(a == b for a, b in zip(runs[name], runs["none"], strict=True)) / tokens
        print(
            f"| {name} | {weight_bytes(model) / 1e6:.1f} | {err:.4f} | {agree:.3f} | {free:.3f} |"
        )


def bits_per_byte(heldout: Path) -> None:
    from hagmoe.evaluation.scoring import evaluate_files

    tok = Tokenizer.load(BUNDLED_MODEL)
    files = sorted(heldout.glob("*.txt"))
    for name in QUANTIZATIONS:
        model = packed(load_model(BUNDLED_MODEL), name)
        with torch.inference_mode():
            report = evaluate_files(model, tok, files, context=257, stride=256)
        print(f"| {name} | {report.total.as_dict()['bpb']:.4f} |")


def decode_rate(model: HagMoEModel, streams: int, new: int) -> float:
    llm = LLM(model, config=EngineConfig(max_num_seqs=streams, num_blocks=streams * 16 + 8))
    g = torch.Generator().manual_seed(streams)
    prompts = [
        torch.randint(1, model.config.vocab_size, (16,), generator=g).tolist()
        for _ in range(streams)
    ]
    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    llm.generate(prompts, SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True))
    start = time.perf_counter()
    llm.generate(prompts, params)
    return streams * new / (time.perf_counter() - start)


def speed(label: str, make: object, repeats: int, new: int) -> None:
    models = {name: packed(make(), name) for name in QUANTIZATIONS}  # type: ignore[operator]
    for streams in (1, 32):
        rates: dict[str, list[float]] = {name: [] for name in QUANTIZATIONS}
        for _ in range(repeats):
            for name, model in models.items():
                rates[name].append(decode_rate(model, streams, new))
        row = " | ".join(f"{statistics.median(rates[n]):.1f}" for n in QUANTIZATIONS)
        print(f"| {label} | {streams} | {row} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--heldout", type=Path, default=None)
    parser.add_argument("--mid", default="small")
    parser.add_argument("--config", default=None, help="quality of this random named config")
    args = parser.parse_args()
    if args.config:  # a random model: a random prompt, no held-out text, no speed table
        cfg = named_config(args.config)
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(1, cfg.vocab_size, (16,), generator=g).tolist()
        quality(lambda: random_model(cfg, seed=0), prompt, args.tokens)
        return
    bundled_prompt = Tokenizer.load(BUNDLED_MODEL).encode(PROMPT)
    quality(lambda: load_model(BUNDLED_MODEL), bundled_prompt, args.tokens)
    if args.heldout:
        print("\n| format | bits per byte |\n| --- | ---: |")
        bits_per_byte(args.heldout)
    print(f"\n| model | streams | tok/s {' | tok/s '.join(QUANTIZATIONS)} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    speed("bundled", lambda: load_model(BUNDLED_MODEL), args.repeats, args.new)
    mid = named_config(args.mid, num_layers=4)
    speed(f"{args.mid}, 4 layers", lambda: random_model(mid, seed=0), args.repeats, args.new)


if __name__ == "__main__":
    main()
