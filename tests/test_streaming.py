"""Streaming preplan-and-anchor statistics (analyses.streaming) against the materialised definitions of
analyses.metrics, on explicit matrices and on the studio mixers' effective patterns; streaming_rhythm
against analyses.rhythm; and a check that the streaming path never allocates a T x T tensor."""


import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import analyses
import studio
from analyses import metrics
from analyses.streaming import (
    mixer_qk_from_cache,
    mixer_stats,
    streaming_linear_stats,
    streaming_rhythm,
    streaming_softmax_stats,
)
from studio.mixers import REGISTRY, MixerShape

F64 = torch.float64
LENGTHS = [1, 5, 37, 130]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one intra-op thread is much faster than two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- materialised references ---------------------------------------------------------------------
def materialised(pattern, start, waad_window, h_lo, h_hi):
    """analyses.metrics on a [B, H, T, T] pattern, per head."""
    b, h, n, _ = pattern.shape
    flat = pattern.reshape(b * h, n, n)
    return {
        "span": metrics.head_span(pattern, start),
        "waad": metrics.waad(flat, waad_window).reshape(b, h, n),
        "fai": metrics.fai(flat, h_lo, h_hi, start).reshape(b, h, n),
    }


def softmax_matrix(q, k, scale, window):
    n = q.shape[2]
    gap = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    allowed = gap >= 0
    if window is not None:
        allowed &= gap < window
    return torch.softmax(((q @ k.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf")), -1)


def linear_matrix(q, k, log_decay, normalize, eps):
    n = q.shape[2]
    gap = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).to(F64)
    m = (q @ k.transpose(-1, -2)).tril()
    if log_decay is not None:
        m = m * torch.exp(log_decay.to(F64)[:, None, None] * gap.clamp(min=0))
    return m / (m.sum(-1, keepdim=True) + eps) if normalize else m


def assert_same(got, want, tol=1e-6):
    assert set(got) == {"span", "waad", "fai"}
    for key in ("span", "waad", "fai"):
        assert got[key].dtype == F64, key
        assert got[key].shape == want[key].shape, (key, got[key].shape, want[key].shape)
        err = (got[key] - want[key]).abs().max().item() if want[key].numel() else 0.0
        assert err <= tol * (1 + want[key].abs().max().item()), (key, err)


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def option_grid(n):
    """response_start 0 and > 0; waad_window 10 and > T; h_hi 100, a short one and None."""
    for start in (0, n // 3 + 1):
        for w in (10, n + 5):
            for h_hi in (100, 6, None):
                yield dict(response_start=start, waad_window=w, h_lo=10 if h_hi != 6 else 2, h_hi=h_hi)


# ---- softmax / sliding window --------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", LENGTHS)
def test_softmax_stats_match_explicit_matrix(seed, n):
    gen = torch.Generator().manual_seed(seed)
    b, h, d = 2, 3, 8
    q, k = randn(gen, b, h, n, d, scale=2.0), randn(gen, b, h, n, d)  # peaked rows stress the online lse
    scale = 0.9
    for window in (None, 7):
        want_pattern = softmax_matrix(q, k, scale, window)
        for i, opts in enumerate(option_grid(n)):
            block = (16, 7, 128)[i % 3]  # 16 and 7 do not divide 37 or 130
            got = streaming_softmax_stats(q, k, scale, window=window, block=block, **opts)
            assert_same(got, materialised(want_pattern, opts["response_start"], opts["waad_window"],
                                          opts["h_lo"], opts["h_hi"]))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("mixer_name", ["softmax", "sliding_window"])
def test_softmax_mixers_match_effective_pattern(seed, n, mixer_name):
    torch.manual_seed(seed)
    shape = MixerShape(d_model=32, n_heads=4, n_kv_heads=2, d_head=8)  # GQA: k keeps 2 heads
    params = {"window": 5} if mixer_name == "sliding_window" else {}
    mixer = REGISTRY[mixer_name](shape, **params).double()
    gen = torch.Generator().manual_seed(seed)
    q, k = randn(gen, 1, 4, n, 8, scale=3.0), randn(gen, 1, 2, n, 8)
    pattern = mixer.effective_pattern(q, k)
    for opts in option_grid(n):
        got = mixer_stats(mixer, q, k, block=9, **opts)
        assert_same(got, materialised(pattern, opts["response_start"], opts["waad_window"], opts["h_lo"],
                                      opts["h_hi"]))


# ---- linear family ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", LENGTHS)
def test_linear_stats_match_explicit_matrix(seed, n):
    gen = torch.Generator().manual_seed(seed)
    b, h, d = 2, 3, 4
    q, k = randn(gen, b, h, n, d), randn(gen, b, h, n, d)
    decays = [None, torch.tensor([0.0, -0.05, -0.9], dtype=F64), torch.tensor(-0.3, dtype=F64),
              torch.tensor([-0.01, -3.0, -20.0], dtype=F64)]
    for li, log_decay in enumerate(decays):
        for normalize in (False, True):
            # signed features unnormalised; positive ones (a positive normaliser) when normalised
            qq, kk = (q.abs() + 0.1, k.abs() + 0.1) if normalize else (q, k)
            ld_h = None if log_decay is None else log_decay.reshape(-1).expand(h)
            pattern = linear_matrix(qq, kk, ld_h, normalize, 1e-6)
            grid = list(option_grid(n)) + [
                # W > block and < T - 1: the shift form of the clipped distance; W = 0
                dict(response_start=1, waad_window=20, h_lo=10, h_hi=100),
                dict(response_start=0, waad_window=0, h_lo=0, h_hi=None),
            ]
            for i, opts in enumerate(grid):
                block = (8, 16, 5, 128)[(i + li) % 4]
                got = streaming_linear_stats(qq, kk, log_decay, normalize, 1e-6, block=block, **opts)
                assert_same(got, materialised(pattern, opts["response_start"], opts["waad_window"],
                                              opts["h_lo"], opts["h_hi"]))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("case", ["linear_norm", "linear_plain", "lightning_minimax", "lightning_list"])
def test_linear_mixers_match_effective_pattern(seed, n, case):
    torch.manual_seed(seed)
    shape = MixerShape(d_model=32, n_heads=4, n_kv_heads=4, d_head=8, layer_idx=1, n_layers=4)
    name, params = {
        "linear_norm": ("linear", {"normalize": True}),
        "linear_plain": ("linear", {"normalize": False, "feature_map": "identity"}),
        "lightning_minimax": ("lightning", {}),
        "lightning_list": ("lightning", {"decay": [1.0, 0.97, 0.5, 0.05]}),
    }[case]
    mixer = REGISTRY[name](shape, **params).double()
    gen = torch.Generator().manual_seed(seed)
    q, k = mixer.featurize(randn(gen, 2, 4, n, 8), randn(gen, 2, 4, n, 8))
    pattern = mixer.effective_pattern(q, k)
    for i, opts in enumerate(option_grid(n)):
        got = mixer_stats(mixer, q, k, block=(11, 32)[i % 2], **opts)
        assert_same(got, materialised(pattern, opts["response_start"], opts["waad_window"], opts["h_lo"],
                                      opts["h_hi"]))


def test_float32_inputs_stay_float32_and_close():
    gen = torch.Generator().manual_seed(3)
    q, k = randn(gen, 1, 2, 50, 8), randn(gen, 1, 2, 50, 8)
    for got, want in [
        (streaming_softmax_stats(q.float(), k.float(), 0.5, block=16), streaming_softmax_stats(q, k, 0.5)),
        (streaming_linear_stats(q.float().exp(), k.float().exp(), -0.1, True, block=16),
         streaming_linear_stats(q.exp(), k.exp(), -0.1, True)),
    ]:
        for key in want:
            assert got[key].dtype == torch.float32
            assert torch.allclose(got[key].double(), want[key], rtol=1e-4, atol=1e-4), key


def test_option_errors():
    q = torch.zeros(1, 1, 4, 2, dtype=F64)
    with pytest.raises(ValueError):
        streaming_softmax_stats(q, torch.zeros(1, 1, 5, 2, dtype=F64), 1.0)
    with pytest.raises(ValueError):
        streaming_softmax_stats(q, q, 1.0, h_lo=-1)
    with pytest.raises(ValueError):
        streaming_linear_stats(q, q, waad_window=-1)
    with pytest.raises(ValueError):
        streaming_linear_stats(q, q, log_decay=torch.zeros(3))
    with pytest.raises(NotImplementedError):
        mixer_stats(type("Other", (), {"name": "other"})(), q, q)


# ---- memory: never a T x T tensor --------------------------------------------------------------------
class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_streaming_never_builds_a_t_by_t_tensor():
    n, h, d, block = 2048, 2, 16, 128
    gen = torch.Generator().manual_seed(0)
    q, k = randn(gen, 1, h, n, d), randn(gen, 1, h, n, d)
    opts = dict(response_start=100, waad_window=10, h_lo=10, h_hi=100)

    with LargestTensor() as soft:
        got_soft = streaming_softmax_stats(q, k, d**-0.5, block=block, **opts)
    with LargestTensor() as lin:
        got_lin = streaming_linear_stats(q.exp() * 0.1, k.exp() * 0.1, -0.01, True, block=block, **opts)
    with LargestTensor() as full:
        want_soft = materialised(softmax_matrix(q, k, d**-0.5, None), 100, 10, 10, 100)
    assert soft.largest < n * n / 4, soft.largest
    assert soft.largest <= h * n * block
    assert lin.largest < n * n / 4, lin.largest
    assert full.largest >= n * n  # the materialised path does build T x T
    assert_same(got_soft, want_soft)  # and the streaming numbers are the same at this length
    want_lin = materialised(linear_matrix(q.exp() * 0.1, k.exp() * 0.1, torch.full((h,), -0.01, dtype=F64),
                                          True, 1e-6), 100, 10, 10, 100)
    assert_same(got_lin, want_lin)


# ---- streaming_rhythm == rhythm on a hybrid model -------------------------------------------------------
SPEC = {
    "vocab_size": 64, "d_model": 32, "n_layers": 8, "n_heads": 4, "n_kv_heads": 2, "pattern": "SWNL",
    "pattern_map": {
        "S": {"mixer": "softmax", "positional": "nope"},  # a NoPE layer: read from hook_q / hook_k
        "W": {"mixer": "sliding_window", "window": 8},
        "N": "linear",
        "L": "lightning",
    },
}


@pytest.fixture(scope="module")
def model():
    return studio.build_model(SPEC, seed=0).double()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 64, (1, 60), generator=torch.Generator().manual_seed(0))


def assert_rhythms_equal(got, want, tol=1e-8):
    assert got.layers == want.layers
    assert set(got.head_span) == set(want.head_span)
    for layer in want.layers:
        assert torch.allclose(got.head_span[layer], want.head_span[layer], rtol=0, atol=tol), layer
    assert got.local_heads == want.local_heads and got.global_heads == want.global_heads
    for key in ("waad", "waad_delta", "fai", "entropy"):
        a, b = getattr(got, key), getattr(want, key)
        assert a.shape == b.shape and a.dtype == b.dtype == F64, key
        assert torch.allclose(a, b, rtol=0, atol=tol), (key, (a - b).abs().max())
    assert torch.equal(got.preplan, want.preplan) and torch.equal(got.anchors, want.anchors)
    assert got.response_start == want.response_start and torch.equal(got.tokens, want.tokens)
    assert got.statistics.keys() == want.statistics.keys()
    for key, value in want.statistics.items():
        assert got.statistics[key] == pytest.approx(value, rel=1e-9, abs=1e-9, nan_ok=True), key


@pytest.mark.parametrize("kwargs", [
    dict(response_start=12),  # default layers: select_layers(8) = [2, 3, 4, 5]
    dict(response_start=12, layers=list(range(8))),
    dict(response_start=5, layers=[0, 1, 2, 3, 6], h_hi=None, window=4, q=0.25, h_lo=3),
    dict(response_start=30, layers=[1, 2, 3, 7], window=100, h_hi=20),
])
def test_streaming_rhythm_matches_rhythm(model, tokens, kwargs, monkeypatch):
    want = analyses.rhythm(model, tokens, **kwargs)

    forwards, cached = [], []
    real_run = model.run_with_cache

    def spy(*args, **kw):
        logits, cache = real_run(*args, **kw)
        cached.extend(cache.keys())
        return logits, cache

    def no_pattern(*args, **kw):
        raise AssertionError("streaming_rhythm must not build an effective pattern")

    monkeypatch.setattr(model, "run_with_cache", spy)
    for block in model.blocks:
        monkeypatch.setattr(block.attn, "effective_pattern", no_pattern)
    handle = model.hook_embed.register_forward_hook(lambda *args: forwards.append(1))
    try:
        got = streaming_rhythm(model, tokens, block=16, **kwargs)
    finally:
        handle.remove()
    monkeypatch.undo()

    assert len(forwards) == 1  # one hooked forward
    assert cached and not any("pattern" in name for name in cached)
    assert all(name.split(".")[-1] in ("hook_q", "hook_k", "hook_rot_q", "hook_rot_k") for name in cached)
    assert {int(name.split(".")[1]) for name in cached} == set(want.layers)
    assert not any(b.attn.hook_pattern.has_hooks() for b in model.blocks)
    assert isinstance(got, analyses.Rhythm)
    assert want.preplan.any() and want.anchors.any()
    assert_rhythms_equal(got, want)


def test_mixer_qk_from_cache_reproduces_each_layer_pattern(model, tokens):
    names = [f"blocks.{i}.attn.{hook}" for i in range(8) for hook in
             ("hook_q", "hook_k", "hook_rot_q", "hook_rot_k", "hook_pattern")]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    for layer in range(8):
        mixer = model.blocks[layer].attn
        q, k = mixer_qk_from_cache(model, cache, layer)
        assert q.shape == (1, 4, 60, 8)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert torch.allclose(mixer.effective_pattern(q, k), pattern, rtol=1e-12, atol=1e-12), layer
        assert_same(mixer_stats(mixer, q, k, response_start=7, block=16), materialised(pattern, 7, 10, 10, 100))


def test_streaming_rhythm_errors(model, tokens):
    with pytest.raises(ValueError, match="batch"):
        streaming_rhythm(model, tokens.repeat(2, 1), response_start=10)
    with pytest.raises(ValueError):
        streaming_rhythm(model, tokens, response_start=60)
    with pytest.raises(ValueError):
        streaming_rhythm(model, tokens, response_start=10, layers=[8])


def test_package_exports():
    for name in ("streaming_softmax_stats", "streaming_linear_stats", "mixer_stats", "mixer_qk_from_cache",
                 "streaming_rhythm"):
        assert callable(getattr(analyses, name)) and name in analyses.__all__


def test_mixers_without_a_streaming_form_fall_back_to_their_pattern(model, tokens, monkeypatch):
    """Layers whose mixer has no streaming statistics are read from their pattern in the same forward;
    the result still equals analyses.rhythm (here lightning is treated as if it had no streaming form)."""
    import analyses.streaming as streaming

    monkeypatch.setattr(streaming, "_LINEAR", ("linear",))
    assert not streaming.has_streaming_stats(model.blocks[3].attn)  # pattern "SWNL": layer 3 is lightning
    want = analyses.rhythm(model, tokens, response_start=12, layers=[1, 2, 3, 7])
    got = streaming_rhythm(model, tokens, response_start=12, layers=[1, 2, 3, 7], block=16)
    assert_rhythms_equal(got, want)
