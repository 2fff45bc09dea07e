"""The float32 CPU kernels (hagmoe/kernels) against float64 references, their batch invariance,
their use by the model when serving, and the fallback when they cannot be built."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from reference import checkpoint_tensors, reference_model
from torch import Tensor

from hagmoe.engine.config import EngineConfig
from hagmoe.engine.engine_core import EngineCore
from hagmoe.engine.sampling_params import SamplingParams
from hagmoe.kernels import cpu, openmp
from hagmoe.model import named_config, random_model
from hagmoe.model.router import top_experts

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"
)


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    with torch.inference_mode():
        yield


def count_calls(monkeypatch: Any, *names: str) -> dict[str, int]:
    """Wrap the named functions of hagmoe.kernels.cpu to count their calls (live dict)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(cpu, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(cpu, name, spy)
    return calls


def moe_reference(x: Tensor, chosen: Tensor, scores: Tensor, w: list[Tensor]) -> Tensor:
    """Token by token, expert by expert, in float64."""
    x64, (w1, w2, w3) = x.double(), [t.double() for t in w]
    out = torch.zeros_like(x64)
    for t, (es, ss) in enumerate(zip(chosen.tolist(), scores.double().tolist(), strict=True)):
        for e, s in zip(es, ss, strict=True):
            if e >= 0:
                out[t] += s * (w3[e] @ (F.silu(w1[e] @ x64[t]) * (w2[e] @ x64[t])))
    return out


def random_routing(num_tokens: int, num_experts: int, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """k distinct experts per token [T, K], the last one masked (-1) for every third token;
    expert 0 is never chosen (an empty one). Scores [T, K], 0 where masked."""
    g = torch.Generator().manual_seed(seed)
    chosen = torch.stack(
        [1 + torch.randperm(num_experts - 1, generator=g)[:k] for _ in range(num_tokens)]
    )
    scores = torch.rand(num_tokens, k, generator=g)
    if k > 1:
        chosen[::3, -1], scores[::3, -1] = -1, 0.0
    return chosen, scores


def experts(n: int, f: int, d: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, f, d, generator=g) / d**0.5,
        torch.randn(n, f, d, generator=g) / d**0.5,
        torch.randn(n, d, f, generator=g) / f**0.5,
    ]


@pytest.mark.parametrize("rows", [1, 3, 11, 12, 13, 25])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_float64(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 48, generator=g), torch.randn(37, 48, generator=g)
    b = torch.randn(37, generator=g) if bias else None
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())
    got = cpu.linear(x, cpu.pack_linear(w), 37, b)  # 37 columns: the last panel is partial
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("num_tokens", "k", "f", "d"),
    [(1, 1, 48, 32), (5, 3, 48, 32), (32, 4, 48, 32), (64, 2, 48, 32), (90, 3, 16, 64)],
)
def test_moe_matches_float64(num_tokens: int, k: int, f: int, d: int) -> None:
    """Experts with 0 to ~40 pairs: row tiles of every size, whole and partial."""
    n = 8
    w = experts(n, f, d, seed=num_tokens)
    x = torch.randn(num_tokens, d, generator=torch.Generator().manual_seed(1))
    chosen, scores = random_routing(num_tokens, n, k, seed=num_tokens)
    got = cpu.moe_swiglu(x, chosen, scores, *cpu.pack_experts(*w))
    assert torch.allclose(got.double(), moe_reference(x, chosen, scores, w), atol=1e-5)


def test_moe_takes_strided_inputs() -> None:
    """Routing sliced out of a wider sort (strided views), as the linear router hands it over:
    the kernel reads contiguous copies that live through the call."""
    n, f, d, tokens = 8, 48, 32, 24
    w = experts(n, f, d, seed=3)
    x = torch.randn(tokens, 2 * d, generator=torch.Generator().manual_seed(2))[:, ::2]
    logits = torch.randn(tokens, n, generator=torch.Generator().manual_seed(4))
    scores, chosen = torch.sort(torch.softmax(logits, -1), dim=-1, descending=True)
    scores, chosen = scores[:, :2], chosen[:, :2]
    ref = moe_reference(x, chosen, scores, w)
    for _ in range(3):  # freed copies would be reused by the next allocations
        got = cpu.moe_swiglu(x, chosen, scores, *cpu.pack_experts(*w))
        assert torch.allclose(got.double(), ref, atol=1e-5)


def paged_keys(
    lengths: list[int], kv_heads: int, hd: int, block_size: int, seed: int
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """A shuffled paged cache [slots, 2*Hkv*hd] holding each sequence's K then V rows, its block
    table (padded with the row's first block) and each sequence's rows in position order."""
    g = torch.Generator().manual_seed(seed)
    nblocks = [-(-n // block_size) for n in lengths]
    order = torch.randperm(sum(nblocks) + 3, generator=g)  # 3 blocks nobody owns
    cache = torch.randn(len(order) * block_size, 2 * kv_heads * hd, generator=g)
    table = torch.zeros(len(lengths), max(nblocks), dtype=torch.int64)
    rows, used = [], 0
    for i, (n, nb) in enumerate(zip(lengths, nblocks, strict=True)):
        blocks = order[used : used + nb]
        used += nb
        table[i] = blocks[0]
        table[i, :nb] = blocks
        slots = (blocks[:, None] * block_size + torch.arange(block_size)).reshape(-1)[:n]
        rows.append(cache[slots])
    return cache, table, rows


def query_rows(lengths: list[int], rows: int) -> tuple[Tensor, Tensor]:
    """The last `rows` positions of each sequence, left-aligned: query_pos and valid [B, Q]
    (a sequence shorter than `rows` has pad rows at position 0)."""
    pos = torch.zeros(len(lengths), rows, dtype=torch.int64)
    valid = torch.zeros(len(lengths), rows, dtype=torch.bool)
    for b, n in enumerate(lengths):
        count = min(n, rows)
        pos[b, :count] = torch.arange(n - count, n)
        valid[b, :count] = True
    return pos, valid


@pytest.mark.parametrize(
    ("heads", "kv_heads", "window", "coarse", "rows"),
    [(4, 4, None, 2, 1), (8, 2, None, 3, 3), (4, 1, 5, 1, 1), (4, 2, 3, 2, 5)],
)
def test_paged_attention_matches_float64(
    heads: int, kv_heads: int, window: int | None, coarse: int, rows: int
) -> None:
    """Decode rows (Q = 1) and prefill chunks (Q > 1, with pad rows) against float64."""
    hd, block_size, lengths = 16, 4, [1, 7, 13, 4]
    cache, table, seqs = paged_keys(lengths, kv_heads, hd, block_size, seed=heads)
    q = torch.randn(len(lengths), rows, heads, hd, generator=torch.Generator().manual_seed(9))
    pos, valid = query_rows(lengths, rows)
    args = (cache, table, pos, valid, block_size, kv_heads, window)
    mix, out = cpu.paged_attention(q, *args, coarse)
    keys = table.shape[1] * block_size
    assert mix is not None and mix.shape == (len(lengths), rows, 2, keys)
    for b, kv in enumerate(seqs):
        k, v = kv.double().view(-1, 2, kv_heads, hd).unbind(1)  # [n, Hkv, hd] each
        for i in range(rows):
            if not valid[b, i]:
                assert not out[b, i].any() and not mix[b, i].any()
                continue
            last = int(pos[b, i])
            first = max(0, last + 1 - window) if window else 0
            probs = torch.zeros(heads, keys, dtype=torch.float64)
            for h in range(heads):
                g = h // (heads // kv_heads)
                scores = k[first : last + 1, g] @ q[b, i, h].double() / hd**0.5
                probs[h, first : last + 1] = torch.softmax(scores, dim=0)
                o = out[b, i, h * hd : (h + 1) * hd].double()
                assert torch.allclose(
                    o, probs[h, first : last + 1] @ v[first : last + 1, g], atol=1e-5
                )
            expected = torch.stack((probs[:coarse].mean(0), probs[coarse:].mean(0)))
            assert torch.allclose(mix[b, i].double(), expected, atol=1e-6)
    no_mix, same = cpu.paged_attention(q, *args, None)
    assert no_mix is None and torch.equal(same, out)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_paged_attention_splits_heads_of_few_rows_exactly(kv_heads: int) -> None:
    """Without head means, one or two rows are split over kv heads across threads: the same
    sums as the row-parallel path that the float64 test checks, bit for bit."""
    hd, block_size = 16, 4
    for lengths in ([9], [3, 13]):
        cache, table, _ = paged_keys(lengths, kv_heads, hd, block_size, seed=kv_heads)
        q = torch.randn(len(lengths), 1, 4, hd, generator=torch.Generator().manual_seed(7))
        pos, valid = query_rows(lengths, 1)
        args = (cache, table, pos, valid, block_size, kv_heads, None)
        _, whole = cpu.paged_attention(q, *args, 2)
        mix, split = cpu.paged_attention(q, *args, None)
        assert mix is None and torch.equal(split, whole)


def test_float32_engine_decodes_on_kernels_like_float64_forward() -> None:
    """The paged decode path (decode attention, experts, linears on the kernels) against the
    float64 full forward of the same weights, with GQA and rope."""
    cfg = named_config("tiny", position="rope", num_kv_heads=2)
    model32 = random_model(cfg, seed=4, dtype=torch.float32)
    model64 = random_model(cfg, seed=4, dtype=torch.float64)
    engine = EngineCore(model32, None, EngineConfig(keep_logits=True, block_size=4))
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    prompts = [[5, 9, 2], [7] * 11, list(range(20, 29))]
    reqs = {f"r{i}": engine.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)}
    while engine.has_unfinished_requests():
        for out in engine.step():
            seq = reqs[out.request_id].all_token_ids[:-1]
            ref = model64.forward_full(torch.tensor([seq])).logits[0, -1]
            got = engine.last_logits[out.request_id].double()
            assert (got - ref).abs().max() / ref.abs().max() < 1e-4, out.request_id


def test_released_thread_team_comes_back() -> None:
    x = torch.randn(256, 256)
    before = x @ x
    assert openmp.release_thread_team()
    assert torch.equal(x @ x, before)


@pytest.mark.parametrize(("n", "f", "d"), [(8, 48, 32), (4, 528, 512)])
def test_kernels_are_batch_and_thread_invariant(n: int, f: int, d: int) -> None:
    """A row's result is bit-identical alone, among others, and on one or two threads; with
    F 528 and d 512 a row alone takes the panels two at a time (row_pair)."""
    w = experts(n, f, d, seed=0)
    packed, w0 = cpu.pack_experts(*w), cpu.pack_linear(w[0][0])
    x = torch.randn(20, d, generator=torch.Generator().manual_seed(2))
    chosen, scores = random_routing(20, n, 2, seed=3)
    threads = torch.get_num_threads()
    try:
        runs = []
        for num_threads in (1, 2):
            torch.set_num_threads(num_threads)
            runs.append((cpu.moe_swiglu(x, chosen, scores, *packed), cpu.linear(x, w0, f)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    alone = cpu.moe_swiglu(x[7:8], chosen[7:8], scores[7:8], *packed)
    assert torch.equal(alone[0], runs[0][0][7])
    assert torch.equal(cpu.linear(x[7:8], w0, f)[0], runs[0][1][7])


def test_serving_forward_uses_kernels_and_matches_float64(monkeypatch: Any) -> None:
    calls = count_calls(monkeypatch, "linear", "moe_swiglu")
    cfg = named_config("tiny", position="rope", feedback_dim=16)
    model64 = random_model(cfg, seed=5, dtype=torch.float64)
    model32 = random_model(cfg, seed=5, dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    logits = model32.forward_full(ids).logits
    expected, _ = reference_model(ids, checkpoint_tensors(model64), cfg)
    assert calls["linear"] > 0 and calls["moe_swiglu"] == cfg.num_layers
    assert torch.allclose(logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_training_keeps_torch_path() -> None:
    x = torch.zeros(2, 16)
    assert cpu.enabled_for(x)
    with torch.inference_mode(False), torch.enable_grad():
        assert not cpu.enabled_for(torch.zeros(2, 16))
    assert not cpu.enabled_for(x.double())


def test_unbuildable_kernels_fall_back(monkeypatch: Any, tmp_path: Any) -> None:
    """A failing compiler (or HAGMOE_CPU_KERNELS=0) leaves the torch path, with a warning."""
    monkeypatch.setenv("HAGMOE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    cpu.library.cache_clear()
    try:
        assert cpu.library() is None and not cpu.enabled_for(torch.zeros(1, 16))
        monkeypatch.delenv("CC")
        monkeypatch.setenv("HAGMOE_CPU_KERNELS", "0")
        cpu.library.cache_clear()
        assert cpu.library() is None
        monkeypatch.delenv("HAGMOE_CPU_KERNELS")
        cpu.library.cache_clear()
        assert cpu.library() is not None and list(tmp_path.glob("cpu_kernels-*.so"))
    finally:
        cpu.library.cache_clear()


def test_packed_expert_weights_follow_in_place_updates() -> None:
    """The kernel's packed copy of the expert weights is rebuilt when they are written."""
    cfg = named_config("tiny")
    with torch.inference_mode(False):
        layer = random_model(cfg, seed=1).layers[0].experts
    x = torch.randn(6, cfg.hidden_size, generator=torch.Generator().manual_seed(4))
    chosen, scores = random_routing(6, cfg.num_experts, 2, seed=4)
    before = layer(x, chosen, scores)
    with torch.inference_mode(False), torch.no_grad():
        layer.w3.mul_(2.0)
    assert torch.allclose(layer(x, chosen, scores), 2 * before, rtol=1e-5, atol=1e-6)


def test_route_sums_match_float64() -> None:
    """Router sums of query rows (with pad rows) over a shuffled paged RV cache, vs float64."""
    groups, experts_n, block_size, lengths, rows = 3, 6, 4, [1, 5, 9], 2
    g = torch.Generator().manual_seed(6)
    width = groups + experts_n
    cache, table, seqs = paged_keys(lengths, 1, width, block_size, seed=6)
    rv_cache = cache[:, :width].contiguous()  # [slots, G+N]
    pos, valid = query_rows(lengths, rows)
    mix = torch.zeros(len(lengths), rows, 2, table.shape[1] * block_size)
    for b, i in valid.nonzero().tolist():
        n = int(pos[b, i]) + 1
        mix[b, i, :, :n] = torch.softmax(torch.randn(2, n, generator=g), dim=-1)
    mix[2, 0, 0, 2] = 0.0  # a zero probability adds nothing to the entropy
    z, entropy = cpu.route_sums(
        mix[:, :, 0], mix[:, :, 1], rv_cache, table, pos, valid, block_size, groups
    )
    for b, i in valid.nonzero().tolist():
        n = int(pos[b, i]) + 1
        a_c, a_f = mix[b, i, 0, :n].double(), mix[b, i, 1, :n].double()
        rv = seqs[b][:n, :width].double()  # [n, G+N]
        expected = torch.cat((a_c @ rv[:, :groups], a_f @ rv[:, groups:]))
        assert torch.allclose(z[b, i].double(), expected, atol=1e-6)
        assert torch.allclose(entropy[b, i].double(), -torch.xlogy(a_c, a_c).sum(), atol=1e-6)
    assert not z[~valid].any() and not entropy[~valid].any()


@pytest.mark.parametrize("k_override", [None, 2])
def test_route_decide_matches_torch_path(k_override: int | None) -> None:
    """Group, K, experts (best first, lower index on ties) and scores, against the router's
    torch math in the same dtype (K's floor is discrete: float64 would round the gate
    differently near 1); position 0 has normalised entropy 0."""
    cfg = named_config("bench")
    router = random_model(cfg, seed=2).layers[0].router
    g, m, t = cfg.num_groups, cfg.experts_per_group, 200
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(t, g + g * m, generator=gen)
    z[5, g + 4 * 0 : g + 4] = 0.5  # ties inside the chosen group's logits
    z[5, :g] = torch.tensor([3.0, 0.0, 0.0, 0.0])
    entropy = torch.rand(t, generator=gen) * 4
    positions = torch.randint(0, 300, (t,), generator=gen)
    positions[:3] = 0
    group, experts, scores, k, hn = cpu.route_decide(
        z, entropy, positions, router.kernel_sizes, 0.3, k_override
    )
    want_group = z[:, :g].argmax(-1)
    z_e = z[:, g:].view(t, g, m)[torch.arange(t), want_group]
    want_hn = router.normalised_entropy(entropy, positions)
    router.entropy_mean.fill_(0.3)
    want_k = router.cardinality(want_hn, k_override)
    local, want_scores = top_experts(torch.softmax(z_e, -1), cfg.k_max, want_k)
    assert torch.equal(group, want_group) and torch.equal(k, want_k)
    assert torch.allclose(hn, want_hn, rtol=1e-6)
    assert torch.equal(experts, torch.where(local >= 0, want_group[:, None] * m + local, -1))
    assert torch.equal(experts[5, :2], torch.tensor([0, 1])) or k[5] < 2
    assert torch.allclose(scores, want_scores, atol=1e-6)


def test_engine_packs_kernel_weights_before_the_first_request(monkeypatch: Any) -> None:
    calls = count_calls(monkeypatch, "pack_linear", "pack_experts")
    cfg = named_config("tiny")
    engine = EngineCore(random_model(cfg, seed=3), None, EngineConfig(max_num_seqs=2))
    assert calls["pack_experts"] == cfg.num_layers and calls["pack_linear"] > 0
    packed_at_start = dict(calls)
    engine.add_request("r", [1, 2, 3, 4], SamplingParams(max_new_tokens=3, temperature=0.0))
    while engine.has_unfinished_requests():
        engine.step()
    assert calls == packed_at_start


@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 33, 4099])
def test_greedy_logprob_is_torch_argmax_and_log_softmax(vocab: int) -> None:
    """Odd vocabularies (partial vectors), ties (lowest id), NaN (its first, as torch) and
    -inf rows against torch's argmax and a float64 log_softmax."""
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=gen) * 6
    logits[1, :] = 0.5  # all tied
    logits[2, vocab // 2 :] = -float("inf")
    logits[3, vocab - 1] = float("nan")
    ids, logprob = cpu.greedy_logprob(logits)
    assert ids == logits.argmax(-1).tolist()
    reference = torch.log_softmax(logits.double(), dim=-1)
    for row, (token, value) in enumerate(zip(ids, logprob, strict=True)):
        expected = reference[row, token].item()  # NaN for row 3 and an all -inf row
        assert (
            math.isnan(value)
            if math.isnan(expected)
            else value == pytest.approx(expected, abs=2e-6)
        )
