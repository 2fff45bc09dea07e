"""The numbers of a trained run's model card: validation bits per byte against a unigram model of
the same tokenizer, mean K, and greedy / sampled generations through the engine.

    python scripts/model_card.py runs/bundled [--out runs/bundled/card.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hagmoe.engine.llm import LLM
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.checkpoint import load_model
from hagmoe.training.dataset import load_data
from hagmoe.training.evaluation import evaluate, unigram_bits_per_byte

PROMPTS = ["ROMEO:\n", "To be, or not to be", "KING HENRY:\nOnce more unto the"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    folder = args.run / "model"
    data = load_data(args.run / "data")
    model = load_model(folder)
    result = evaluate(model, data.val, data.token_bytes, args.seq_len, batch_size=16)
    unigram = unigram_bits_per_byte(data.train, data.val, data.token_bytes, data.vocab_size)
    llm = LLM(folder)
    greedy = llm.generate(PROMPTS, SamplingParams(max_new_tokens=60, temperature=0.0))
    sampled = llm.generate(
        PROMPTS, SamplingParams(max_new_tokens=60, temperature=0.8, top_p=0.95, seed=0)
    )
    card = {
        "validation": result.as_dict(),
        "unigram_bpb": unigram,
        "samples_greedy": {p: c.text for p, c in zip(PROMPTS, greedy, strict=True)},
        "samples_t0.8_top_p0.95_seed0": {p: c.text for p, c in zip(PROMPTS, sampled, strict=True)},
    }
    text = json.dumps(card, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
