"""Runs the model once per step over the flat batch, against the paged expert-aware cache.

Legend: T flat tokens, S sampled requests, V vocab, L layers, N experts, G groups,
per layer a KV part [num_slots, 2*Hkv*hd] and, for the attention router, an RV part
[num_slots, G + N] (MODEL.md's expert-aware cache).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.input_batch import PromptRows, build_input_batch
from hagmoe.engine.outputs import LayerDecision
from hagmoe.engine.request import TokenLogprob
from hagmoe.engine.sampler import Sampler, token_logprobs
from hagmoe.engine.step import RoutingStats, RunnerOutput, SchedulerOutput
from hagmoe.kernels import cpu as cpu_kernels
from hagmoe.kernels.tuning import tuning
from hagmoe.model.forward_context import ForwardContext
from hagmoe.model.model import HagMoEModel
from hagmoe.model.routing import LayerRouting


def prepare_weights(model: HagMoEModel) -> None:
    """On the CPU, build the kernels and pack the weights for them now (not during the first
    request; idempotent), so that the memory they take is counted before the cache is sized."""
    if model.device.type == "cpu":
        cpu_kernels.library()
        tuning()  # measured once a machine and thread count, not during a request
        with torch.inference_mode():
            model.pack_cpu_weights()


class ModelRunner:
    """Owns the model, the per-layer cache parts and the sampler."""

    def __init__(self, model: HagMoEModel, config: EngineConfig) -> None:
        assert config.num_blocks is not None
        self.model = model
        self.config = config
        self.device = model.device
        self.block_size = config.block_size
        num_slots = config.num_blocks * config.block_size
        cfg = model.config
        widths = [2 * cfg.kv_heads * cfg.hd] + (
            [cfg.num_routing_values] if cfg.num_routing_values else []
        )
        self.kv_caches = [
            [torch.zeros(num_slots, w, dtype=model.dtype, device=self.device) for w in widths]
            for _ in range(cfg.num_layers)
        ]
        self.sampler = Sampler(seed=config.seed)
        prepare_weights(model)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        """Compute the scheduled tokens, write their cache entries, sample where a request ends."""
        batch = build_input_batch(sched.scheduled, self.block_size, self.device)
        wants_routing = any(s.request.sampling_params.return_routing for s in batch.sampled)
        ctx = ForwardContext(
            positions=batch.positions,
            segments=batch.segments,
            kv_caches=self.kv_caches,
            slot_mapping=batch.slot_mapping,
            return_routing=wants_routing,  # a one-call decode counts from ctx.decode_routing
        )
        out = RunnerOutput()
        logits = None  # [S, V]
        if len(batch.sampled) == batch.input_ids.shape[0]:  # every row sampled, in order
            logits = self.model.decode_logits(batch.input_ids, ctx)
        if logits is None:
            ctx.return_routing = wants_routing or self.config.collect_routing_stats
            hidden = self.model(batch.input_ids, ctx)
            if batch.prompt_rows:
                out.prompt_logprobs = self._prompt_logprobs(hidden, batch.prompt_rows)
            if batch.sampled:
                logits = self.model.compute_logits(hidden[batch.sample_index])
        if self.config.collect_routing_stats and (ctx.routing or ctx.decode_routing is not None):
            out.routing_stats = self._routing_stats(ctx)
        if logits is None:
            return out
        requests = [s.request for s in batch.sampled]
        result = self.sampler(logits, requests)
        for row, (request, token) in enumerate(zip(requests, result.token_ids, strict=True)):
            rid = request.request_id
            out.sampled[rid] = token
            if result.logprobs[row] is not None:
                out.logprobs[rid] = result.logprobs[row]  # type: ignore[assignment]
            if request.sampling_params.return_routing:
                out.routing[rid] = _decisions(ctx.routing, int(batch.sample_index[row]))
            if self.config.keep_logits:
                out.logits[rid] = logits[row].clone()
        return out

    def _prompt_logprobs(
        self, hidden: Tensor, rows: list[PromptRows]
    ) -> dict[str, list[TokenLogprob]]:
        """Each request's logprobs of the prompt tokens this step's rows predict."""
        index = torch.cat([torch.arange(r.start, r.start + r.count) for r in rows])  # [R]
        targets = [t for r in rows for t in r.request.prompt_token_ids[r.first : r.first + r.count]]
        top_n = [
            r.request.sampling_params.prompt_logprobs or 0 for r in rows for _ in range(r.count)
        ]
        logits = self.model.compute_logits(hidden[index.to(hidden.device)])  # [R, V]
        found = iter(token_logprobs(logits, targets, top_n))
        return {r.request.request_id: [next(found) for _ in range(r.count)] for r in rows}

    def _routing_stats(self, ctx: ForwardContext) -> RoutingStats:
        """The step's routing counts, in numpy or plain Python (torch's per-op cost dominated
        them), from the one-call decode's decisions where it ran."""
        cfg = self.model.config
        decided = ctx.decode_routing
        if decided is not None:  # [L, T, ...] each
            experts = decided.experts.numpy()
        else:
            experts = np.stack([r.experts.cpu().numpy() for r in ctx.routing])
        g, (layers, tokens) = cfg.num_groups, experts.shape[:2]
        expert_tokens = _expert_tokens(experts, cfg.num_experts)
        if cfg.router == "linear":  # no groups or entropy; every token uses top_k experts
            return RoutingStats(expert_tokens, [], [cfg.top_k] * (layers * tokens), [])
        if decided is not None:
            assert decided.group is not None and decided.k is not None
            assert decided.entropy is not None
            groups, k, entropy = decided.group.numpy(), decided.k.numpy(), decided.entropy.numpy()
        else:
            groups, k = (
                np.stack([getattr(r, n).cpu().numpy() for r in ctx.routing]) for n in ("group", "k")
            )
            entropy = np.stack([r.entropy.float().cpu().numpy() for r in ctx.routing])
        flat_g = (np.arange(layers)[:, None] * g + groups).reshape(-1)
        return RoutingStats(
            expert_tokens=expert_tokens,
            group_tokens=np.bincount(flat_g, minlength=layers * g).reshape(layers, g).tolist(),
            k=k.reshape(-1).tolist(),
            entropy=entropy.reshape(-1).tolist(),
        )


SMALL_ROUTING = 512  # (layer, token, expert) entries up to which Python counts faster than numpy


def _expert_tokens(experts: np.ndarray, n: int) -> list[list[int]]:
    """Tokens routed to each of n experts in each layer, from experts [L, T, K] (-1: none); a
    decode step's few entries in plain Python (numpy's ops cost 50-60 us after a step)."""
    layers = experts.shape[0]
    if experts.size > SMALL_ROUTING:
        flat = (np.arange(layers)[:, None, None] * n + experts)[experts >= 0]
        return np.bincount(flat, minlength=layers * n).reshape(layers, n).tolist()
    counts = [[0] * n for _ in range(layers)]
    for row, tokens in zip(counts, experts.tolist(), strict=True):
        for chosen in tokens:
            for e in chosen:
                if e >= 0:
                    row[e] += 1
    return counts


def _decisions(routing: list[LayerRouting], token: int) -> list[LayerDecision]:
    """Every layer's routing of flat token `token`, as plain Python values."""
    out = []
    for index, r in enumerate(routing):
        k = int(r.k[token])
        out.append(
            LayerDecision(
                layer=index,
                group=int(r.group[token]),
                experts=r.experts[token, :k].tolist(),
                scores=r.scores[token, :k].tolist(),
                k=k,
                entropy=float(r.entropy[token]),
            )
        )
    return out
