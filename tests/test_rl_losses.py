"""studio.rl.losses against hand-computed values (float64, tiny tensors)."""

import math

import pytest
import torch

from studio.rl.losses import (
    cispo_loss,
    dapo_loss,
    dynamic_sampling_mask,
    group_advantages,
    grpo_loss,
    overlong_penalty,
)

F64 = torch.float64


def make_inputs(ratios, advantages, logp_values=None, mask=None):
    """logp (leaf, requires grad), old_logp = logp - log(ratio), advantages, mask, all [B, T] float64."""
    ratios = torch.tensor(ratios, dtype=F64)
    if logp_values is None:
        logp_values = -0.5 - 0.25 * torch.arange(ratios.numel(), dtype=F64).view_as(ratios)
    logp = torch.as_tensor(logp_values, dtype=F64).clone().requires_grad_(True)
    old_logp = logp.detach() - torch.log(ratios)
    adv = torch.tensor(advantages, dtype=F64)
    mask = torch.ones_like(adv, dtype=torch.bool) if mask is None else torch.tensor(mask, dtype=torch.bool)
    return logp, old_logp, adv, mask


def assert_close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)


# Row 0: A = +1 with r inside (1.1), above 1+eps (1.5), below 1-eps (0.5).
# Row 1: A = -2 with the same ratios. eps = 0.2.
#   (1.1, +1): min(1.1, 1.1) = 1.1 unclipped            grad -1.1/n
#   (1.5, +1): min(1.5, 1.2) = 1.2 CLIPPED (high)      grad 0
#   (0.5, +1): min(0.5, 0.8) = 0.5 unclipped            grad -0.5/n
#   (1.1, -2): min(-2.2, -2.2) = -2.2 unclipped         grad +2.2/n
#   (1.5, -2): min(-3.0, -2.4) = -3.0 unclipped         grad +3.0/n
#   (0.5, -2): min(-1.0, -1.6) = -1.6 CLIPPED (low)     grad 0
RATIOS = [[1.1, 1.5, 0.5], [1.1, 1.5, 0.5]]
ADVS = [[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]]


def test_grpo_value_gradient_and_stats_all_four_clip_sign_cases():
    logp, old_logp, adv, mask = make_inputs(RATIOS, ADVS)
    loss, stats = grpo_loss(logp, old_logp, adv, mask, eps=0.2)
    # sum of surrogates = 1.1 + 1.2 + 0.5 - 2.2 - 3.0 - 1.6 = -4.0 over 6 tokens
    assert_close(loss, 4.0 / 6)
    loss.backward()
    assert_close(logp.grad, [[-1.1 / 6, 0.0, -0.5 / 6], [2.2 / 6, 3.0 / 6, 0.0]])
    assert stats["tokens"] == 6.0
    assert stats["clip_frac"] == pytest.approx(2 / 6)
    assert stats["clip_high_frac"] == pytest.approx(1 / 6)
    assert stats["clip_low_frac"] == pytest.approx(1 / 6)
    assert stats["ratio_mean"] == pytest.approx(3.1 / 3)
    assert stats["ratio_max"] == pytest.approx(1.5)
    assert stats["adv_mean"] == pytest.approx(-0.5)
    assert stats["loss"] == pytest.approx(4.0 / 6)
    assert all(type(v) is float for v in stats.values())


def test_grpo_old_logp_and_advantages_are_constants():
    logp, old_logp, adv, mask = make_inputs(RATIOS, ADVS)
    old_logp.requires_grad_(True)
    adv.requires_grad_(True)
    loss, _ = grpo_loss(logp, old_logp, adv, mask)
    loss.backward()
    assert old_logp.grad is None and adv.grad is None


def test_token_vs_sequence_normalisation_on_unequal_lengths():
    # Row 1 keeps only its first token (1.1, -2): surrogate -2.2.
    mask = [[1, 1, 1], [1, 0, 0]]
    logp, old_logp, adv, m = make_inputs(RATIOS, ADVS, mask=mask)
    token_loss, _ = grpo_loss(logp, old_logp, adv, m, norm="token")
    # token: -(1.1 + 1.2 + 0.5 - 2.2) / 4 = -0.15
    assert_close(token_loss, -0.15)
    token_loss.backward()
    assert_close(logp.grad, [[-1.1 / 4, 0.0, -0.5 / 4], [2.2 / 4, 0.0, 0.0]])

    logp.grad = None
    seq_loss, _ = grpo_loss(logp, old_logp, adv, m, norm="sequence")
    # sequence: -((2.8 / 3) + (-2.2 / 1)) / 2 = 0.6333...
    assert_close(seq_loss, -((2.8 / 3) - 2.2) / 2)
    seq_loss.backward()
    assert_close(logp.grad, [[-1.1 / 6, 0.0, -0.5 / 6], [2.2 / 2, 0.0, 0.0]])


def test_masked_tokens_contribute_neither_value_nor_gradient_even_with_garbage():
    mask = [[1, 1, 1], [1, 0, 0]]
    logp, old_logp, adv, m = make_inputs(RATIOS, ADVS, mask=mask)
    reference, _ = grpo_loss(logp, old_logp, adv, m)
    # Fill the masked positions with -inf log-probs and NaN advantages: nothing may change.
    garbage_logp = logp.detach().clone()
    garbage_logp[1, 1:] = -math.inf
    garbage_logp.requires_grad_(True)
    garbage_old = old_logp.clone()
    garbage_old[1, 1:] = -math.inf
    garbage_adv = adv.clone()
    garbage_adv[1, 1:] = math.nan
    for fn in (grpo_loss, dapo_loss, cispo_loss):
        garbage_logp.grad = None
        loss, stats = fn(garbage_logp, garbage_old, garbage_adv, m)
        clean, _ = fn(logp, old_logp, adv, m)
        assert_close(loss, clean.detach())
        loss.backward()
        assert torch.isfinite(garbage_logp.grad).all()
        assert (garbage_logp.grad[1, 1:] == 0).all()
        assert stats["tokens"] == 4.0 and all(math.isfinite(v) for v in stats.values())
    assert_close(reference, -0.15)


def test_float_mask_equals_bool_mask():
    logp, old_logp, adv, m = make_inputs(RATIOS, ADVS, mask=[[1, 0, 1], [1, 1, 0]])
    a, _ = grpo_loss(logp, old_logp, adv, m)
    b, _ = grpo_loss(logp, old_logp, adv, m.to(F64))
    assert_close(a, b.detach())


@pytest.mark.parametrize(
    "fn, norm_kwargs",
    [(grpo_loss, {}), (grpo_loss, {"norm": "sequence"}), (dapo_loss, {}), (cispo_loss, {})],
)
def test_all_masked_gives_zero_loss_with_zero_grad_and_no_nan(fn, norm_kwargs):
    logp, old_logp, adv, _ = make_inputs(RATIOS, ADVS)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss, stats = fn(logp, old_logp, adv, mask, **norm_kwargs)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (logp.grad == 0).all()
    assert stats["tokens"] == 0.0 and stats["clip_frac"] == 0.0
    assert all(math.isfinite(v) for v in stats.values())


# DAPO example (eps_low 0.2, eps_high 0.28); last token of row 1 masked, n = 5.
#   (1.25, +1): DAPO min(1.25, 1.25) = 1.25 unclipped grad -1.25/n | GRPO min(1.25, 1.2) = 1.2 clipped, grad 0
#   (1.5,  +1): DAPO 1.28 clipped high                            | GRPO 1.2 clipped
#   (0.75, -1): both min(-0.75, -0.8) = -0.8 clipped low
#   (0.9,  -1): -0.9 unclipped grad +0.9/n
#   (1.0, 0.5): 0.5 unclipped grad -0.5/n
DAPO_RATIOS = [[1.25, 1.5, 0.75], [0.9, 1.0, 0.5]]
DAPO_ADVS = [[1.0, 1.0, -1.0], [-1.0, 0.5, 1.0]]
DAPO_MASK = [[1, 1, 1], [1, 1, 0]]


def test_dapo_clip_higher_value_gradient_and_stats():
    logp, old_logp, adv, m = make_inputs(DAPO_RATIOS, DAPO_ADVS, mask=DAPO_MASK)
    loss, stats = dapo_loss(logp, old_logp, adv, m)
    assert_close(loss, -(1.25 + 1.28 - 0.8 - 0.9 + 0.5) / 5)
    loss.backward()
    assert_close(logp.grad, [[-1.25 / 5, 0.0, 0.0], [0.9 / 5, -0.5 / 5, 0.0]])
    assert stats["clip_high_frac"] == pytest.approx(1 / 5)
    assert stats["clip_low_frac"] == pytest.approx(1 / 5)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["tokens"] == 5.0


def test_ratio_1_25_is_clipped_by_grpo_but_not_by_dapo():
    logp, old_logp, adv, m = make_inputs(DAPO_RATIOS, DAPO_ADVS, mask=DAPO_MASK)
    loss, stats = grpo_loss(logp, old_logp, adv, m, eps=0.2)
    assert_close(loss, -(1.2 + 1.2 - 0.8 - 0.9 + 0.5) / 5)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # clipped under GRPO
    assert stats["clip_high_frac"] == pytest.approx(2 / 5)
    # symmetric DAPO bounds reproduce GRPO
    sym, _ = dapo_loss(logp, old_logp, adv, m, eps_low=0.2, eps_high=0.2)
    assert_close(sym.detach(), loss.detach())


def test_dapo_is_token_level_over_the_batch():
    logp, old_logp, adv, m = make_inputs(RATIOS, ADVS, mask=[[1, 1, 1], [1, 0, 0]])
    dapo, _ = dapo_loss(logp, old_logp, adv, m, eps_low=0.2, eps_high=0.2)
    assert_close(dapo.detach(), -0.15)  # same as GRPO norm="token", not the 0.6333 of norm="sequence"


# CISPO, verl's two-sided [0.8, 1.2]: rhat = [1.1, 1.2, 0.8] per row.
CISPO_LOGP = [[-1.0, -2.0, -0.5], [-1.0, -0.5, -2.0]]


def test_cispo_two_sided_verl_convention_value_and_gradient_on_every_token():
    logp, old_logp, adv, m = make_inputs(RATIOS, ADVS, logp_values=CISPO_LOGP)
    loss, stats = cispo_loss(logp, old_logp, adv, m, eps_high=0.2, eps_low=0.2, ratio_cap="relative")
    # J = (1/6)[1.1(-1) + 1.2(-2) + 0.8(-0.5) + 1.1(-2)(-1) + 1.2(-2)(-0.5) + 0.8(-2)(-2)] = 2.7/6
    assert_close(loss, -2.7 / 6)
    loss.backward()
    # gradient -sg(rhat) A / n for EVERY token, clipped ones included
    assert_close(logp.grad, [[-1.1 / 6, -1.2 / 6, -0.8 / 6], [2.2 / 6, 2.4 / 6, 1.6 / 6]])
    assert stats["clip_frac"] == pytest.approx(4 / 6)
    assert stats["clip_high_frac"] == pytest.approx(2 / 6)
    assert stats["clip_low_frac"] == pytest.approx(2 / 6)
    assert stats["weight_cap"] == pytest.approx(1.2)
    assert stats["ratio_max"] == pytest.approx(1.5)


def test_cispo_default_caps_at_five_without_lower_bound_like_trl_absolute():
    # r = [6.0, 0.1, 1.0], A = [1, 1, -1]; rhat = [5.0, 0.1, 1.0] (no lower bound).
    inputs = make_inputs([[6.0, 0.1, 1.0]], [[1.0, 1.0, -1.0]], logp_values=[[-1.0, -2.0, -0.5]])
    logp, old_logp, adv, m = inputs
    loss, stats = cispo_loss(logp, old_logp, adv, m)
    # J = (1/3)[5(-1) + 0.1(-2) + 1(-1)(-0.5)] = -4.7/3
    assert_close(loss, 4.7 / 3)
    loss.backward()
    assert_close(logp.grad, [[-5.0 / 3, -0.1 / 3, 1.0 / 3]])
    assert stats["clip_frac"] == pytest.approx(1 / 3)
    assert stats["clip_low_frac"] == 0.0
    assert stats["weight_cap"] == pytest.approx(5.0)

    logp2 = logp.detach().clone().requires_grad_(True)
    trl, _ = cispo_loss(logp2, old_logp, adv, m, eps_high=5.0, ratio_cap="absolute")
    assert_close(trl.detach(), loss.detach())
    trl.backward()
    assert_close(logp2.grad, logp.grad)


def test_group_advantages_hand_example_and_constant_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [0.1, 0.1, 0.1]], dtype=F64)
    # sample std of [1, 2, 3] is 1
    assert_close(group_advantages(rewards, eps=0.0), [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    s = 1 / math.sqrt(2 / 3)  # population std sqrt(2/3)
    assert_close(group_advantages(rewards, eps=0.0, unbiased=False), [[-s, 0.0, s], [0.0] * 3, [0.0] * 3])
    assert_close(group_advantages(rewards, scale=False), [[-1.0, 0.0, 1.0], [0.0] * 3, [0.0] * 3])
    # eps in the denominator
    assert_close(group_advantages(rewards[:1], eps=1.0), [[-0.5, 0.0, 0.5]])
    # binary rewards, groups of one, integer input
    assert_close(group_advantages(torch.tensor([[1, 0, 0, 0]]).to(F64), eps=0.0), [[1.5, -0.5, -0.5, -0.5]])
    assert (group_advantages(torch.tensor([[1.0], [2.0]])) == 0).all()
    assert not torch.isnan(group_advantages(torch.tensor([[1, 1], [0, 1]]))).any()


def test_dynamic_sampling_mask_drops_groups_with_equal_rewards():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.25]])
    assert dynamic_sampling_mask(rewards).tolist() == [False, True, False, True]
    assert dynamic_sampling_mask(rewards).dtype == torch.bool


def test_overlong_penalty_three_regimes():
    # max_length 20, cache 4: free up to 16, linear on (16, 20], -1 beyond.
    out = overlong_penalty(torch.tensor([10, 16, 17, 18, 20, 21, 100]), max_length=20, cache=4)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0])
    assert overlong_penalty([16], 20, 4).is_floating_point()


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda t: grpo_loss(t[0], t[1][:, :2], t[2], t[3]),
            r"`old_logp` has shape \(2, 2\) but `logp` has shape \(2, 3\)",
        ),
        (lambda t: grpo_loss(t[0], t[1], t[2][0], t[3]), r"`advantages` has shape \(3,\).*same \[B, T\] shape"),
        (lambda t: grpo_loss(t[0][0], t[1][0], t[2][0], t[3][0]), r"`logp` must be 2-D \[B, T\]"),
        (lambda t: grpo_loss(t[0], t[1], t[2].long(), t[3]), r"`advantages` must be a floating-point tensor"),
        (lambda t: grpo_loss(t[0], t[1], t[2], t[3].to(F64) * 2), r"`mask` must be bool or hold only 0 and 1"),
        (lambda t: grpo_loss(t[0], t[1], t[2], t[3], eps=-0.1), r"`eps` must be >= 0"),
        (lambda t: grpo_loss(t[0], t[1], t[2], t[3], eps=1.0), r"`eps` must be < 1"),
        (lambda t: grpo_loss(t[0], t[1], t[2], t[3], norm="sample"), r"`norm` must be one of"),
        (lambda t: dapo_loss(t[0], t[1], t[2], t[3], eps_low=1.2), r"`eps_low` must be < 1"),
        (lambda t: dapo_loss(t[0], t[1], t[2], t[3], eps_high=-0.28), r"`eps_high` must be >= 0"),
        (lambda t: cispo_loss(t[0], t[1], t[2], t[3], ratio_cap="abs"), r"`ratio_cap` must be one of"),
        (lambda t: cispo_loss(t[0], t[1], t[2], t[3], eps_low=1.0), r"cispo_loss: `eps_low` must be < 1"),
        (
            lambda t: cispo_loss(t[0], t[1], t[2], t[3], eps_high=0.0, ratio_cap="absolute"),
            r"weight cap and must be > 0",
        ),
        (
            lambda t: cispo_loss(t[0], t[1], t[2], t[3], eps_high=2.0, eps_low=3.0, ratio_cap="absolute"),
            r"must be below the cap",
        ),
        (lambda t: group_advantages(torch.ones(4)), r"`rewards` must be 2-D \[N_groups, G\]"),
        (lambda t: dynamic_sampling_mask(torch.ones(4)), r"dynamic_sampling_mask: `rewards` must be 2-D"),
        (lambda t: overlong_penalty([5], max_length=20, cache=30), r"`cache`.*0 < cache <= max_length"),
        (lambda t: overlong_penalty([5], max_length=20, cache=0), r"`cache`"),
    ],
)
def test_clear_error_messages(call, message):
    tensors = make_inputs(RATIOS, ADVS)
    with pytest.raises(ValueError, match=message):
        call(tensors)
