"""Offline generation with hagmoe's engine: greedy and sampled completions of a few prompts,
with each generated token's routing (group, experts, K) in the first layer.

    python examples/offline_generation.py [--model DIR] [--max-new-tokens 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams

BUNDLED = Path(__file__).resolve().parents[1] / "hagmoe" / "assets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=BUNDLED, help="model folder")
    parser.add_argument("--prompt", nargs="+", default=["ROMEO:\n", "To be, or not to be"])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    llm = LLM(args.model)
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    sampled = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=0.8,
        top_p=0.95,
        seed=0,
        return_routing=True,
    )
    for prompt, g, s in zip(
        args.prompt,
        llm.generate(args.prompt, greedy),
        llm.generate(args.prompt, sampled),
        strict=True,
    ):
        print(f"--- {prompt!r}\ngreedy:  {g.text!r}\nsampled: {s.text!r}")
        print(f"first generated token, layer 0 routing: {s.routing[0][0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
