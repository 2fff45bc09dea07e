"""One short CUDA check: engine exactness on the GPU, then bfloat16 throughput.

Run on a machine with a CUDA GPU (its own python and torch; hagmoe importable from the
repository root):  python scripts/gpu_check.py [--out FILE.json]
Prints a table and writes JSON; record the numbers in docs/benchmarks.md with the card's name.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hagmoe.bench.offline import Workload, bench
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model import named_config, random_model


def exactness(router: str, position: str) -> float:
    """Worst relative logit error of engine decoding (chunked, batched) vs the full forward."""
    model = random_model(
        named_config("bench", router=router, position=position), seed=0, device="cuda"
    )
    engine = EngineCore(
        model,
        None,
        EngineConfig(device="cuda", keep_logits=True, max_num_batched_tokens=48, block_size=16),
    )
    rng = random.Random(0)
    reqs = {}
    for i in range(8):
        prompt = [rng.randrange(4096) for _ in range(rng.randint(5, 90))]
        reqs[f"r{i}"] = engine.add_request(
            f"r{i}", prompt, SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
        )
    worst = 0.0
    with torch.inference_mode():
        while engine.has_unfinished_requests():
            for out in engine.step():
                seq = reqs[out.request_id].all_token_ids[:-1]
                ref = model.forward_full(torch.tensor([seq], device="cuda")).logits[0, -1]
                got = engine.last_logits[out.request_id]
                worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--configs", nargs="+", default=["bench", "small"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    errors = {
        f"{r}/{p}": exactness(r, p) for r in ("attention", "linear") for p in ("learned", "rope")
    }
    report["exactness_max_rel_error_fp32"] = errors
    print(report["device"], "fp32 exactness (max rel):", errors)
    rows = []
    for name in args.configs:
        model = random_model(name, seed=0, dtype=torch.bfloat16, device="cuda")
        for concurrency in (1, 32):
            work = Workload.random(2 * concurrency, 64, 16, 128, model.config.vocab_size, 0)
            start = time.perf_counter()
            results = bench(
                model,
                work,
                concurrency,
                EngineConfig(device="cuda", dtype="bfloat16", max_num_batched_tokens=2048),
                naive_requests=concurrency,
            )
            for r in results:
                row = {"config": name, **r.as_dict()}
                rows.append(row)
                print(
                    f"{name:<7}{r.system:<18}conc={concurrency:<3} {r.tokens_per_second:9.1f} tok/s"
                )
            print(f"  ({time.perf_counter() - start:.0f}s)")
    report["throughput_bf16"] = rows
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    ok = all(e < 1e-4 for e in errors.values())
    print("exactness", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
