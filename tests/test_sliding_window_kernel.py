"""The Triton kernel kernels.sliding_window_attention (forward and backward) against a float64 torch reference
built on the studio's own band, `studio.mixers.softmax.causal_scores` (query t sees keys 0 <= t - s < window).
Without a GPU the kernels run on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so sizes stay small and odd, in float32; the bf16 tests at realistic sizes need CUDA."""

import math

import pytest
import torch

import kernel_testing  # before any kernel module: it skips this file without Triton
from kernel_testing import DEVICE, F64, needs_cuda

import kernels.sliding_window_attention as kernel_module
from kernels.sliding_window_attention import sliding_window_attention
from studio.mixers.softmax import causal_scores

needs_kernel = kernel_testing.needs_kernel(kernel_module)
TOL = 5e-3
GPU_TOL = 2e-2


def rel_rms(x, ref, floor=1e-3):
    """||x - ref|| / ||ref|| (root mean squares); a reference that is (nearly) zero, such as dq with window 1,
    is compared against `floor` instead."""
    return kernel_testing.rel_rms(x, ref, floor)


def make_inputs(seed, b, t, h, h_kv, d, dtype=torch.float32, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen)
    k, v = (torch.randn(b, t, h_kv, d, generator=gen) for _ in range(2))
    do = torch.randn(b, t, h, d, generator=gen)
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v, do))


def reference(q, k, v, window, scale=None, cu_seqlens=None):
    """float64 attention in [B, T, H, D]: causal_scores' band, no attention across the boundaries of
    cu_seqlens, kv heads repeated for GQA. Differentiable."""
    b, t, h, d = q.shape
    group = h // k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qh, kh, vh = (x.transpose(1, 2).to(F64) for x in (q, k, v))
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    scores = causal_scores(qh, kh, scale, window)
    if cu_seqlens is not None:
        cu = cu_seqlens.to("cpu", torch.long)
        seq = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff()).to(q.device)
        scores = scores.masked_fill(seq[:, None] != seq[None, :], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2)


def run_kernel(q, k, v, do, window, **kwargs):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    o = sliding_window_attention(*leaves, window, **kwargs)
    grads = torch.autograd.grad(o, leaves, do)
    return o, grads


def run_reference(q, k, v, do, window, **kwargs):
    leaves = [x.detach().to(F64).requires_grad_(True) for x in (q, k, v)]
    o = reference(*leaves, window, **kwargs)
    grads = torch.autograd.grad(o, leaves, do.to(F64))
    return o, grads


def check(q, k, v, do, window, tol=TOL, **kwargs):
    o, grads = run_kernel(q, k, v, do, window, **kwargs)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    ref_o, ref_grads = run_reference(q, k, v, do, window, **kwargs)
    errors = {name: rel_rms(x, r) for name, x, r in zip(("o", "dq", "dk", "dv"), (o, *grads), (ref_o, *ref_grads))}
    assert all(e <= tol for e in errors.values()), errors


# (seed, B, T, H, H_kv, D, window): odd sizes, windows from 1 (itself only) to beyond T, GQA and MQA.
CASES = [
    (0, 1, 1, 1, 1, 16, 1),
    (1, 2, 7, 2, 2, 24, 5),
    (2, 1, 33, 2, 2, 40, 16),
    (3, 2, 70, 2, 2, 16, 64),
    (4, 1, 70, 2, 2, 24, 70),
    (5, 1, 70, 1, 1, 16, 1),
    (6, 2, 33, 2, 2, 16, 100),
    (7, 1, 70, 4, 2, 40, 33),
    (8, 1, 33, 4, 1, 24, 7),
    (9, 1, 70, 4, 1, 16, 5),
]


@needs_kernel
@pytest.mark.parametrize("seed,b,t,h,h_kv,d,window", CASES)
def test_matches_reference(seed, b, t, h, h_kv, d, window):
    q, k, v, do = make_inputs(seed, b, t, h, h_kv, d)
    check(q, k, v, do, window)


@needs_kernel
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_seeds_and_scale(seed):
    q, k, v, do = make_inputs(seed, 1, 45, 2, 1, 24)
    check(3 * q, k, v, do, 19)  # peaked softmax
    check(q, k, v, do, 19, scale=0.05)


@needs_kernel
@pytest.mark.parametrize("blocks", [
    {"fwd": (16, 16), "dq": (16, 16), "dkdv": (16, 16)},
    {"fwd": (16, 32), "dq": (16, 64), "dkdv": (32, 16)},
    {"fwd": (64, 16), "dq": (32, 16), "dkdv": (16, 64)},
])
@pytest.mark.parametrize("window", [3, 20, 47])
def test_tile_shapes(monkeypatch, blocks, window):
    """Masked edge blocks, unmasked full blocks and the diagonal line up for any tile shape."""
    for name, shape in blocks.items():
        monkeypatch.setitem(kernel_module.INTERPRET_BLOCKS, name, shape)
    q, k, v, do = make_inputs(window, 1, 83, 2, 1, 16)
    check(q, k, v, do, window)


@needs_kernel
@pytest.mark.parametrize("window", [4, 64])
def test_varlen_matches_separate_sequences(window):
    lengths = [5, 17, 1, 30]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q, k, v, do = make_inputs(window, 1, sum(lengths), 4, 2, 24)
    check(q, k, v, do, window, cu_seqlens=cu_seqlens)

    packed_o, packed_grads = run_kernel(q, k, v, do, window, cu_seqlens=cu_seqlens)
    pieces = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        pieces.append(run_kernel(*(x[:, start:end] for x in (q, k, v, do)), window))
    separate_o = torch.cat([o for o, _ in pieces], dim=1)
    separate_grads = [torch.cat([g[i] for _, g in pieces], dim=1) for i in range(3)]
    assert rel_rms(packed_o, separate_o) <= 1e-5
    for packed, separate in zip(packed_grads, separate_grads):
        assert rel_rms(packed, separate) <= 1e-5


@needs_kernel
def test_varlen_empty_sequences_and_int64_boundaries():
    cu_seqlens = torch.tensor([0, 0, 3, 3, 40, 41], dtype=torch.int64, device=DEVICE)
    q, k, v, do = make_inputs(21, 1, 41, 2, 2, 16)
    check(q, k, v, do, 9, cu_seqlens=cu_seqlens)


@needs_kernel
def test_non_contiguous_inputs():
    """Transposed views of [B, H, T, D] tensors, a head-dim slice, and a non-contiguous output gradient."""
    gen = torch.Generator().manual_seed(31)
    b, t, h, h_kv, d = 2, 37, 4, 2, 24
    q = torch.randn(b, h, t, d, generator=gen).to(DEVICE).transpose(1, 2)
    k = torch.randn(b, h_kv, t, d + 8, generator=gen).to(DEVICE).transpose(1, 2)[..., 3:3 + d]
    v = torch.randn(b, t, d, h_kv, generator=gen).to(DEVICE).transpose(2, 3)
    do = torch.randn(b, h, t, d, generator=gen).to(DEVICE).transpose(1, 2)
    assert not any(x.is_contiguous() for x in (q, k, v, do))
    check(q, k, v, do, 11)
    o_view, _ = run_kernel(q, k, v, do, 11)
    o_dense, _ = run_kernel(*(x.contiguous() for x in (q, k, v, do)), 11)
    assert torch.equal(o_view, o_dense)


@needs_kernel
def test_forward_only_and_partial_gradients():
    q, k, v, do = make_inputs(41, 1, 20, 2, 2, 16)
    with torch.no_grad():
        o = sliding_window_attention(q, k, v, 6)
    ref = reference(q, k, v, 6)
    assert rel_rms(o, ref) <= TOL
    v_leaf = v.clone().requires_grad_(True)
    (dv,) = torch.autograd.grad(sliding_window_attention(q, k, v_leaf, 6), v_leaf, do)
    ref_v = v.to(F64).requires_grad_(True)
    (ref_dv,) = torch.autograd.grad(reference(q, k, ref_v, 6), ref_v, do.to(F64))
    assert rel_rms(dv, ref_dv) <= TOL


@needs_kernel
def test_empty_sequence_length():
    q = torch.randn(2, 0, 2, 16, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 0, 1, 16, device=DEVICE)
    o = sliding_window_attention(q, k, k, 4)
    assert o.shape == (2, 0, 2, 16)
    o.sum().backward()
    assert q.grad.shape == q.shape


def _bad_inputs():
    q = torch.zeros(1, 8, 4, 16, device=DEVICE)
    kv = torch.zeros(1, 8, 2, 16, device=DEVICE)
    two = torch.zeros(2, 8, 4, 16, device=DEVICE)
    cu = torch.tensor([0, 3, 8], device=DEVICE)
    return [
        ((q[0], kv, kv, 4), "4-D"),
        ((q, kv[:, :7], kv[:, :7], 4), "match q"),
        ((q, kv, kv[..., :8], 4), "same shape"),
        ((q, kv[..., :8], kv[..., :8], 4), "match q"),
        ((q, torch.zeros(1, 8, 3, 16, device=DEVICE), torch.zeros(1, 8, 3, 16, device=DEVICE), 4), "multiple"),
        ((q, kv, kv, 0), "window must be >= 1"),
        ((q, kv, kv, -3), "window must be >= 1"),
        ((q, kv, kv, 2.5), "positive int"),
        ((q, kv, kv, True), "positive int"),
        ((q, kv, kv, 4, float("nan")), "scale"),
        ((q.double(), kv.double(), kv.double(), 4), "float32, float16 or bfloat16"),
        ((torch.zeros(1, 8, 4, 300), torch.zeros(1, 8, 2, 300), torch.zeros(1, 8, 2, 300), 4), "head dim"),
        ((two, torch.zeros(2, 8, 2, 16, device=DEVICE), torch.zeros(2, 8, 2, 16, device=DEVICE), 4, None, cu),
         "B must be 1"),
        ((q, kv, kv, 4, None, torch.tensor([0, 3, 7], device=DEVICE)), "end at T"),
        ((q, kv, kv, 4, None, torch.tensor([1, 3, 8], device=DEVICE)), "start at 0"),
        ((q, kv, kv, 4, None, torch.tensor([0, 5, 3, 8], device=DEVICE)), "non-decreasing"),
        ((q, kv, kv, 4, None, torch.tensor([0.0, 8.0], device=DEVICE)), "integer"),
        ((q, kv, kv, 4, None, torch.tensor([[0, 8]], device=DEVICE)), "1-D"),
        ((q, kv, kv, 4, None, [0, 8]), "torch.Tensor"),
    ]


@needs_kernel
@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_input_validation(index):
    args, message = _bad_inputs()[index]
    with pytest.raises(ValueError, match=message):
        sliding_window_attention(*args)


@pytest.mark.parametrize("kind", ["fwd", "dq", "dkdv"])
def test_autotune_pruner_keeps_a_config(kind, monkeypatch):
    """The GPU autotuner's config filter (plain Python): every config for bf16 D <= 128, a fitting few for
    D = 256 and float32; only the first that fits with STUDIO_AUTOTUNE=0."""
    import triton

    monkeypatch.delenv("STUDIO_AUTOTUNE", raising=False)
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for m, n, w, s in kernel_module._CONFIGS[kind]]
    prune = kernel_module._pruner(kind)
    for dtype, block_d in [(torch.bfloat16, 64), (torch.bfloat16, 128)]:
        assert prune(configs, {"q_ptr": torch.zeros(1, dtype=dtype)}, BLOCK_D=block_d) == configs
    for dtype, block_d in [(torch.bfloat16, 256), (torch.float32, 128), (torch.float32, 256)]:
        kept = prune(configs, {"q_ptr": torch.zeros(1, dtype=dtype)}, BLOCK_D=block_d)
        assert 1 <= len(kept) < len(configs)
        assert all(kernel_module._footprint(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                            c.num_stages, block_d, 4 if dtype == torch.float32 else 2)[0]
                   <= kernel_module.SHARED_MEMORY_LIMIT for c in kept)
    monkeypatch.setenv("STUDIO_AUTOTUNE", "0")
    assert prune(configs, {"q_ptr": torch.zeros(1, dtype=torch.bfloat16)}, BLOCK_D=128) == configs[:1]


# ---------------------------------------------------------------------------------------------------------
# CUDA only: realistic sizes in half precision against the float64 reference (the error is the inputs' dtype
# rounding of P, dS and the outputs, not the kernel's accumulation).


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,t,h,h_kv", [(2, 1024, 4, 4), (1, 4096, 4, 4), (1, 2048, 4, 1), (1, 3000, 4, 2)])
def test_cuda_half_precision_realistic(dtype, b, t, h, h_kv):
    q, k, v, do = make_inputs(b * t + h_kv, b, t, h, h_kv, 128, dtype=dtype)
    check(q, k, v, do, 512, tol=GPU_TOL)


@needs_cuda
def test_cuda_bf16_varlen():
    lengths = [1000, 3, 517, 64, 2512]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q, k, v, do = make_inputs(51, 1, sum(lengths), 4, 2, 128, dtype=torch.bfloat16)
    check(q, k, v, do, 512, tol=GPU_TOL, cu_seqlens=cu_seqlens)


@needs_cuda
@pytest.mark.parametrize("d", [64, 96, 256])
def test_cuda_bf16_head_dims(d):
    q, k, v, do = make_inputs(d, 1, 1536, 4, 2, d, dtype=torch.bfloat16)
    check(q, k, v, do, 300, tol=GPU_TOL)


@needs_cuda
def test_cuda_bf16_non_contiguous():
    q, k, v, do = (x.transpose(1, 2).contiguous().transpose(1, 2)
                   for x in make_inputs(61, 2, 1024, 4, 4, 128, dtype=torch.bfloat16))
    assert not q.is_contiguous()
    check(q, k, v, do, 512, tol=GPU_TOL)


@needs_cuda
def test_cuda_float32_is_accurate():
    q, k, v, do = make_inputs(71, 1, 1024, 2, 1, 64)
    check(q, k, v, do, 200, tol=1e-4)
