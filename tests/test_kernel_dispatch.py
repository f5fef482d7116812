"""The mixers' dispatch to the Triton kernels (kernels.dispatch): with STUDIO_KERNELS=triton the kernels run
(on CPU tensors through the interpreter here) and give the same outputs, parameter gradients, decoding
states and step outputs as the torch references; a bad STUDIO_KERNELS value is a clear error."""

import pytest
import torch

pytest.importorskip("triton")

from kernels.dispatch import interpreting, kernel_choice, use_triton  # noqa: E402
from mixer_cases import make_mixer, run_steps  # noqa: E402

needs_kernel = pytest.mark.skipif(not torch.cuda.is_available() and not interpreting(),
                                  reason="no GPU, and the kernels were defined without TRITON_INTERPRET=1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# One case per mixer whose parallel form (and decoding step) has a kernel.
CASES = ["lightning-default", "lightning-list-decay", "linear-elu-norm", "linear-conv-gqa", "mamba2-default",
         "mamba2-gqa-noconv-noskip", "retnet-default", "sliding_window-5", "sliding_window-1", "deltanet-default",
         "gated_delta-gqa-halfrope"]


def rel_rms(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def run(mixer, x, choice, monkeypatch):
    monkeypatch.setenv("STUDIO_KERNELS", choice)
    mixer.zero_grad()
    out, state = mixer(x, return_state=True)
    out.pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in mixer.named_parameters() if p.grad is not None}
    with torch.no_grad():
        steps, _ = run_steps(mixer, x[:, :5])
    return out.detach(), state["mix"], grads, steps


@needs_kernel
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference_through_the_mixer(case, monkeypatch):
    torch.manual_seed(0)
    mixer = make_mixer(case, d_model=32, n_heads=4, d_head=8).to(DEVICE)
    x = torch.randn(2, 37, 32, device=DEVICE)
    out, state, grads, steps = run(mixer, x, "triton", monkeypatch)
    ref_out, ref_state, ref_grads, ref_steps = run(mixer, x, "reference", monkeypatch)
    assert rel_rms(out, ref_out) <= 5e-3
    assert rel_rms(steps, ref_steps) <= 5e-3
    states = state if isinstance(state, tuple) else (state,)
    ref_states = ref_state if isinstance(ref_state, tuple) else (ref_state,)
    for a, b in zip(states, ref_states):
        assert a.dtype == b.dtype and rel_rms(a, b) <= 5e-3
    assert grads.keys() == ref_grads.keys()
    # relative to the largest gradient: a window of 1 gives q and k exactly zero gradients (rounding noise)
    largest = max(g.double().pow(2).mean().sqrt().item() for g in ref_grads.values())
    for name in grads:
        diff = (grads[name].double() - ref_grads[name].double()).pow(2).mean().sqrt().item()
        norm = max(ref_grads[name].double().pow(2).mean().sqrt().item(), 1e-3 * largest)
        assert diff <= 5e-3 * norm, (name, diff, norm)


def test_choice_and_errors(monkeypatch):
    monkeypatch.delenv("STUDIO_KERNELS", raising=False)
    assert kernel_choice() == "auto" and use_triton(torch.zeros(1)) is False
    monkeypatch.setenv("STUDIO_KERNELS", "reference")
    assert use_triton(torch.zeros(1)) is False
    monkeypatch.setenv("STUDIO_KERNELS", "fast")
    with pytest.raises(ValueError, match="STUDIO_KERNELS='fast' is not one of auto, reference, triton"):
        use_triton(torch.zeros(1))
