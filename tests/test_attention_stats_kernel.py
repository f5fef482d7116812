"""The Triton kernel kernels.softmax_attention_stats against the torch reference and against analyses.metrics on
the materialised softmax pattern. Without a GPU the kernels run on CPU tensors through Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), so sizes stay small; the bf16 test needs CUDA."""

import pytest
import torch

import kernel_testing  # before any kernel module: it skips this file without Triton
from kernel_testing import DEVICE, needs_cuda

import kernels.softmax_attention_stats as kernel_module
from analyses import metrics
from analyses.streaming import streaming_softmax_stats
from kernels.reference import softmax_attention_stats_reference
from kernels.softmax_attention_stats import softmax_attention_stats

needs_kernel = kernel_testing.needs_kernel(kernel_module)
OPTIONS = [
    dict(window=None, response_start=0, waad_window=10, h_lo=10, h_hi=100),  # the defaults
    dict(window=5, response_start=3, waad_window=None, h_lo=2, h_hi=6),
    dict(window=23, response_start=0, waad_window=3, h_lo=0, h_hi=None),
    dict(window=50, response_start=20, waad_window=None, h_lo=4, h_hi=None),  # blocks fully inside the window
]


def random_qk(seed, b, h, n, d, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen) * 2.0  # peaked rows stress the online softmax
    k = torch.randn(b, h, n, d, generator=gen)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype)


def materialised(q, k, scale, window, response_start, waad_window, h_lo, h_hi):
    """analyses.metrics per head on the float64 softmax pattern."""
    b, h, n, _ = q.shape
    q, k = q.cpu().double(), k.cpu().double()
    gap = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    allowed = (gap >= 0) & (gap < (n if window is None else window))
    pattern = torch.softmax(((q @ k.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf")), -1)
    flat = pattern.reshape(b * h, n, n)
    return {
        "span": metrics.head_span(pattern, response_start),
        "waad": metrics.waad(flat, waad_window).reshape(b, h, n),
        "fai": metrics.fai(flat, h_lo, h_hi, response_start).reshape(b, h, n),
    }


def assert_stats_close(got, want, atol=1e-4, rtol=1e-5):
    assert set(got) == {"span", "waad", "fai"}
    for key in ("span", "waad", "fai"):
        assert got[key].dtype == torch.float32, key
        assert got[key].shape == want[key].shape, (key, got[key].shape, want[key].shape)
        torch.testing.assert_close(got[key].cpu().double(), want[key].cpu().double(), atol=atol, rtol=rtol,
                                   msg=lambda text, key=key: f"{key}: {text}")


@needs_kernel
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n,d", [(1, 8), (7, 24), (37, 32), (70, 8), (70, 24)])
def test_kernel_matches_reference_and_materialised_pattern(seed, n, d):
    q, k = random_qk(seed, 2, 2, n, d)
    scale = 0.9
    for opts in OPTIONS:
        got = softmax_attention_stats(q, k, scale, **opts)
        assert_stats_close(got, softmax_attention_stats_reference(q.double(), k.double(), scale, block=16, **opts))
        assert_stats_close(got, materialised(q, k, scale, **opts))


@needs_kernel
@pytest.mark.parametrize("opts", [
    dict(response_start=50),  # R empty: span 0, FAI 0
    dict(h_lo=40),  # T(s) empty for every s
    dict(h_lo=3, h_hi=1),  # h_hi < h_lo
    dict(window=1, waad_window=0, h_lo=0),  # attention to itself only
    dict(window=100, h_hi=10**12),  # a window and h_hi past the end
])
def test_kernel_edge_options(opts):
    q, k = random_qk(5, 1, 2, 37, 16)
    got = softmax_attention_stats(q, k, 0.5, **opts)
    assert_stats_close(got, softmax_attention_stats_reference(q.double(), k.double(), 0.5, **opts))
    assert_stats_close(got, materialised(q, k, 0.5, **{**dict(window=None, response_start=0, waad_window=10,
                                                             h_lo=10, h_hi=100), **opts}))


@needs_kernel
def test_kernel_empty_sequence():
    q, k = random_qk(0, 2, 3, 0, 8)
    got = softmax_attention_stats(q, k, 1.0)
    assert got["span"].shape == (2, 3) and not got["span"].any()
    assert got["waad"].shape == got["fai"].shape == (2, 3, 0)


@needs_kernel
def test_kernel_takes_strided_inputs():
    """q as a [B, T, H, D] hook output seen heads-first; k one kv head expanded (head stride 0)."""
    b, h, n, d = 2, 3, 45, 24
    q, k = random_qk(7, b, n, h, d)  # [B, T, H, D]
    q = q.transpose(1, 2)
    k = k.transpose(1, 2)[:, :1].expand(b, h, n, d)
    got = softmax_attention_stats(q, k, 0.3, window=17, response_start=4, h_lo=5, h_hi=30)
    want = softmax_attention_stats_reference(q.double(), k.double(), 0.3, window=17, response_start=4, h_lo=5,
                                             h_hi=30)
    assert_stats_close(got, want)


@needs_kernel
def test_kernel_float16_inputs():
    q, k = random_qk(3, 1, 2, 40, 32, dtype=torch.float16)
    got = softmax_attention_stats(q, k, 0.4, response_start=5, h_lo=3, h_hi=None)
    want = softmax_attention_stats_reference(q.double(), k.double(), 0.4, response_start=5, h_lo=3, h_hi=None)
    assert_stats_close(got, want, atol=1e-3, rtol=1e-3)


def test_kernel_option_errors(monkeypatch):
    q = torch.zeros(1, 1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="same shape"):
        softmax_attention_stats(q, torch.zeros(1, 1, 5, 8, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        softmax_attention_stats(q[0], q[0], 1.0)
    for bad in (dict(h_lo=-1), dict(window=0), dict(response_start=-1), dict(waad_window=-1)):
        with pytest.raises(ValueError):
            softmax_attention_stats(q, q, 1.0, **bad)
    with pytest.raises(ValueError, match="float64"):
        softmax_attention_stats(q.double(), q.double(), 1.0)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        softmax_attention_stats(q.int(), q.int(), 1.0)
    monkeypatch.setattr(kernel_module, "INTERPRET", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        softmax_attention_stats(q.cpu(), q.cpu(), 1.0)


def test_streaming_softmax_stats_on_cpu_is_the_reference():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 30, 8, generator=gen), torch.randn(1, 2, 30, 8, generator=gen)
    got = streaming_softmax_stats(q, k, 0.5, window=9, response_start=2, block=7)
    want = softmax_attention_stats_reference(q, k, 0.5, window=9, response_start=2, block=7)
    for key in want:
        assert torch.equal(got[key], want[key]), key


# ---- on a GPU ---------------------------------------------------------------------------------------------
@needs_cuda
def test_streaming_softmax_stats_dispatches_cuda_to_the_kernel(monkeypatch):
    calls = []

    def spy(*args, **kw):
        calls.append(args[0].dtype)
        return softmax_attention_stats(*args, **kw)

    monkeypatch.setattr(kernel_module, "softmax_attention_stats", spy)
    q, k = random_qk(0, 1, 2, 64, 16)
    streaming_softmax_stats(q, k, 0.5)
    streaming_softmax_stats(q.double(), k.double(), 0.5)  # float64: the reference
    assert calls == [torch.float32]


@needs_cuda
@pytest.mark.parametrize("n,d", [(1000, 24), (2049, 128)])
@pytest.mark.parametrize("opts", [dict(), dict(window=300, response_start=100, h_hi=None, waad_window=None)])
def test_bfloat16_kernel_matches_float32_reference(n, d, opts):
    q, k = random_qk(0, 2, 4, n, d, dtype=torch.bfloat16)
    got = softmax_attention_stats(q, k, d**-0.5, **opts)
    want = softmax_attention_stats_reference(q.float(), k.float(), d**-0.5, **opts)  # the same bf16 values
    for key in want:
        scale = 1 + want[key].abs().max().item()
        assert (got[key] - want[key]).abs().max().item() <= 2e-3 * scale, key
