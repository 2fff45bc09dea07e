"""The offline engine (hagmoe.bench.offline.run_engine) on the server's workload: the same engine
with no HTTP, no event loop and no tokenizer, to see what the serving layer costs."""

from __future__ import annotations

from collections.abc import Sequence

from hagmoe.bench.offline import BenchResult, Workload, run_engine
from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.model.model import HagMoEModel
from hagmoe.quantization.serving import FLOAT32, pack_for_serving

OFFLINE = "hagmoe offline engine"


def offline_engine(
    model: HagMoEModel,
    prompts: Sequence[list[int]],
    lens: Sequence[int],
    concurrency: int,
    num_blocks: int,
) -> BenchResult:
    """All requests queued at once, `concurrency` sequences batched, over the model packed in
    place as `hagmoe serve` holds it (float32). Warmed up first on a batch of the workload's shape
    (reversed prompts, so its prefix cache holds none of the requests)."""
    config = EngineConfig(max_num_seqs=concurrency, num_blocks=num_blocks)
    engine = EngineCore(pack_for_serving(model, FLOAT32), None, config)
    warm = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts[:concurrency]):
        engine.add_request(f"warmup-{i}", list(reversed(prompt)), warm)
    while engine.has_unfinished_requests():
        engine.step()
    result = run_engine(engine, Workload([list(p) for p in prompts], list(lens)), concurrency)
    result.system = OFFLINE
    return result
