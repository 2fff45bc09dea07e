"""One short CUDA check (under 8 minutes on an H100/H200) of the engine on the Triton kernels.

Run on a machine with a CUDA GPU (its own python and torch, triton installed; hagmoe importable
from the repository root):  python scripts/gpu_check.py [--out FILE.json] [--quick]
Reports, as a table and JSON:
  1. float32 exactness of the CUDA engine against the full forward (incremental decoding,
     chunked prefill, batched serving, a prefix-cache hit, preemption), both routers, and how
     often each Triton kernel ran;
  2. bfloat16 greedy agreement with float32;
  3. bfloat16 throughput at batch 1, 16 and 64 on the OLMoE-1B-7B shape (random weights) for
     HAG-MoE and the linear router, Hugging Face generate() on the same shape (skipped when
     transformers is absent), and the batch-1 fraction of the memory-bandwidth floor
     (bytes touched per decode step / measured device copy bandwidth).
Record the numbers in docs/benchmarks.md with the card's name.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.kernels.triton import dispatch
from hagmoe.model import HagMoEModel, named_config, random_model
from hagmoe.model.config import ModelConfig

TOL = 1e-4  # MODEL.md's numerical contract
REQUEST_IDS = itertools.count()
PROMPT, NEW = 128, 32  # throughput workload: prompt and generated tokens per request
BATCHES = (1, 16, 64)
OLMOE = dict(  # OLMoE-1B-7B: 6.9 B parameters, 64 experts, top-8
    vocab_size=50304,
    hidden_size=2048,
    num_layers=16,
    num_heads=16,
    ffn_size=1024,
    position="rope",
    norm="rmsnorm",
    attn_bias=False,
    qk_norm_type="projection",
    tie_embeddings=False,
    max_position=4096,
)
ROUTERS: dict[str, dict[str, Any]] = {
    "linear": dict(router="linear", num_groups=1, experts_per_group=64, top_k=8, feedback_dim=0),
    "attention": dict(router="attention", num_groups=8, experts_per_group=8, k_min=4, k_max=8),
}


def count_kernel_calls() -> dict[str, int]:
    """Wrap dispatch's kernel calls to count them (the layers look them up at call time)."""
    calls: dict[str, int] = {}
    for name in ("paged_attention", "route_sums", "route_decide", "moe"):
        original = getattr(dispatch, name)
        calls[name] = 0

        def spy(*args: Any, _name: str = name, _original: Callable[..., Any] = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        setattr(dispatch, name, spy)
    return calls


def prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def checked_run(engine: EngineCore, batch: list[list[int]], new: int) -> float:
    """Serve the prompts greedily; worst relative logit error against forward_full."""
    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    live = {(rid := f"c{next(REQUEST_IDS)}"): engine.add_request(rid, p, params) for p in batch}
    worst = 0.0
    while engine.has_unfinished_requests():
        for out in engine.step():
            seq = live[out.request_id].all_token_ids[:-1]
            ref = engine.model.forward_full(torch.tensor([seq], device="cuda")).logits[0, -1]
            got = engine.last_logits[out.request_id].to(ref.dtype)
            worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
    return worst


def exactness(router: str) -> dict[str, float]:
    """float32 engine vs full forward in each serving situation (bench config, GQA, rope)."""
    cfg = named_config("bench", router=router, position="rope", num_kv_heads=4)
    model = random_model(cfg, seed=0, device="cuda")
    vocab = cfg.vocab_size

    def engine(**options: Any) -> EngineCore:
        base: dict[str, Any] = dict(device="cuda", keep_logits=True, block_size=16)
        return EngineCore(model, None, EngineConfig(**{**base, **options}))

    shared = prompts(1, 40, 40, vocab, 9)[0]
    hit = engine()
    checked_run(hit, [shared], 2)
    result = {
        "incremental": checked_run(engine(), prompts(1, 40, 40, vocab, 1), 16),
        "chunked": checked_run(engine(max_num_batched_tokens=7), prompts(3, 20, 50, vocab, 2), 6),
        "batched": checked_run(engine(max_num_batched_tokens=512), prompts(8, 5, 90, vocab, 3), 8),
        "prefix_hit": checked_run(hit, [[*shared[:36], 1, 2, 3]], 6),
        "preemption": checked_run(engine(num_blocks=8), prompts(6, 20, 40, vocab, 4), 12),
    }
    return result


def greedy_tokens(
    model: HagMoEModel, dtype: str, batch: list[list[int]], new: int
) -> list[list[int]]:
    engine = EngineCore(model, None, EngineConfig(device="cuda", dtype=dtype))
    params = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    reqs = [engine.add_request(f"g{i}", p, params) for i, p in enumerate(batch)]
    while engine.has_unfinished_requests():
        engine.step()
    return [r.output_token_ids for r in reqs]


def bf16_agreement(router: str) -> dict[str, float]:
    """Share of greedy tokens bf16 produces equal to f32's before the first divergence, and the
    share of sequences identical throughout (bench config)."""
    cfg = named_config("bench", router=router, position="rope")
    batch = prompts(16, 16, 64, cfg.vocab_size, 5)
    ref = greedy_tokens(random_model(cfg, seed=0, device="cuda"), "float32", batch, 32)
    low = random_model(cfg, seed=0, dtype=torch.bfloat16, device="cuda")
    got = greedy_tokens(low, "bfloat16", batch, 32)
    prefix = [
        next((i for i, (a, b) in enumerate(zip(r, g, strict=True)) if a != b), len(r))
        for r, g in zip(ref, got, strict=True)
    ]
    return {
        "prefix_agreement": sum(prefix) / sum(map(len, ref)),
        "identical_sequences": sum(p == len(r) for p, r in zip(prefix, ref, strict=True))
        / len(ref),
    }


def olmoe_config(router: str) -> ModelConfig:
    return named_config("small", **OLMOE, **ROUTERS[router])


def olmoe_model(router: str) -> HagMoEModel:
    """Random bf16 weights drawn on the device (random_model draws on the CPU: minutes here)."""
    with torch.device("meta"):
        model = HagMoEModel(olmoe_config(router))
    model = model.to_empty(device="cuda").to(torch.bfloat16)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            elif name.endswith(("entropy_mean", "gamma")):
                t.fill_(0.5)
            elif t.dim() >= 2:
                t.normal_(0.0, 1.0 if name.startswith("embed") else t.shape[-1] ** -0.5)
            else:
                t.zero_()
    return model.eval()


def throughput(model: HagMoEModel, batch: int) -> dict[str, float]:
    """Greedy decode of `batch` requests of PROMPT tokens, NEW new tokens each, all in flight."""
    cfg = EngineConfig(
        device="cuda", dtype="bfloat16", max_num_seqs=batch, max_num_batched_tokens=4096,
        max_model_len=PROMPT + NEW + 16,
    )  # fmt: skip
    engine = EngineCore(model, None, cfg)
    warm = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    engine.add_request("warm", list(range(1, 33)), warm)
    while engine.has_unfinished_requests():
        engine.step()
    params = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)
    for i, p in enumerate(prompts(batch, PROMPT, PROMPT, model.config.vocab_size, 7)):
        engine.add_request(f"t{i}", p, params)
    torch.cuda.synchronize()
    start, steps, decode_start = time.perf_counter(), 0, 0.0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        if steps == 1:
            torch.cuda.synchronize()
            decode_start = time.perf_counter()
    torch.cuda.synchronize()
    end = time.perf_counter()
    return {
        "tokens_per_second": batch * NEW / (end - start),
        "decode_step_ms": 1e3 * (end - decode_start) / max(steps - 1, 1),
    }


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written), best of 10."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    best = math.inf
    for _ in range(10):
        begin, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        y.copy_(x)
        stop.record()
        stop.synchronize()
        best = min(best, begin.elapsed_time(stop) / 1e3)
    return 2 * x.numel() / best


def bytes_per_decode_step(model: HagMoEModel) -> float:
    """Weights one batch-1 decode step reads: everything but the experts and the embedding table
    (one row), plus the experts its token routes to (mean K over a prompt's tokens and layers)."""
    cfg = model.config
    size = next(model.parameters()).element_size()
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    embed = model.embed.weight.numel() if model.lm_head is not None else 0
    dense = sum(p.numel() for p in model.parameters()) - experts - embed
    ids = torch.tensor(prompts(1, PROMPT, PROMPT, cfg.vocab_size, 8), device="cuda")
    with torch.inference_mode():
        routing = model.forward_full(ids, return_routing=True).routing
    mean_k = float(torch.stack([r.k.float() for r in routing]).mean())
    per_expert = experts / (cfg.num_layers * cfg.num_experts)
    return size * (dense + cfg.num_layers * mean_k * per_expert)


def hf_generate(batch: int) -> float | None:
    """Hugging Face generate() tok/s on the OLMoE shape (linear router), None without it."""
    try:
        from transformers import OlmoeConfig, OlmoeForCausalLM
    except ImportError:
        return None
    config = OlmoeConfig(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
        max_position_embeddings=4096,
    )  # fmt: skip
    with torch.device("cuda"):
        model = OlmoeForCausalLM(config).bfloat16().eval()
    ids = torch.randint(0, 50304, (batch, PROMPT), device="cuda")
    kwargs: dict[str, Any] = dict(
        max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0
    )
    with torch.inference_mode():
        model.generate(ids[:, :16], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del model
    return batch * NEW / seconds


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="exactness and agreement only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    began = time.perf_counter()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    calls = count_kernel_calls()
    with torch.inference_mode():
        report["exactness_max_rel_error_fp32"] = {r: exactness(r) for r in ROUTERS}
    report["triton_kernel_calls"] = dict(calls)
    print(report["device"], json.dumps(report["exactness_max_rel_error_fp32"]), calls)
    report["bf16_greedy_agreement"] = {r: bf16_agreement(r) for r in ROUTERS}
    print("bf16 greedy agreement", report["bf16_greedy_agreement"])
    free()
    if not args.quick:
        bandwidth = copy_bandwidth()
        report["copy_bandwidth_bytes_per_s"] = bandwidth
        rows: dict[str, Any] = {}
        for router in ROUTERS:
            model = olmoe_model(router)
            step_bytes = bytes_per_decode_step(model)
            rows[router] = {f"batch_{b}": throughput(model, b) for b in BATCHES}
            floor = bandwidth / step_bytes
            rows[router]["batch_1_floor_tok_s"] = floor
            rows[router]["batch_1_fraction_of_floor"] = (
                rows[router]["batch_1"]["tokens_per_second"] / floor
            )
            print(router, json.dumps(rows[router]))
            del model
            free()
        rows["hf_generate_tok_s"] = {f"batch_{b}": hf_generate(b) for b in BATCHES}
        if rows["hf_generate_tok_s"]["batch_1"] is None:
            print("transformers not installed: Hugging Face generate() skipped")
        step = {r: rows[r]["batch_1"]["decode_step_ms"] for r in ROUTERS}
        rows["attention_vs_linear_step_time"] = step["attention"] / step["linear"]
        report["throughput_bf16_olmoe_shape"] = rows
        print(json.dumps(rows, indent=1))
    report["seconds"] = time.perf_counter() - began
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    errors = [e for r in report["exactness_max_rel_error_fp32"].values() for e in r.values()]
    ok = all(e < TOL for e in errors) and calls["paged_attention"] > 0 and calls["moe"] > 0
    print("exactness", "OK" if ok else "FAILED", f"({report['seconds']:.0f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
