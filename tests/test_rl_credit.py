"""Per-token credit gamma (arXiv 2510.13554; REFERENCE.md section 5) on hand-made rhythms, where every
expected gamma is worked out by hand, and once on a real tiny model."""

import math

import pytest
import torch

import analyses
import studio
from analyses.rhythm import Rhythm
from studio.rl import credit
from studio.rl.credit import STRATEGIES, apply_credit, coupled_sets, credit_statistics, gamma, token_sets

T, START = 12, 2  # R = 2..11, |R| = 10, top 0.4 -> 4 positions

# Case 1. Delta over R: top 4 = {4: .9, 7: .8, 9: .7, 6: .3} -> T_loc = {4, 6, 7, 9}, tau_Delta = 0.3.
# The prompt's Delta (5.0) is large: it must never count (sets, and the coupled window, are within R).
DELTA = [5.0, 5.0, 0.1, 0.2, 0.9, 0.1, 0.3, 0.8, 0.05, 0.7, 0.1, 0.0]
# FAI over R: top 4 = {3: .9, 8: .8, 10: .7, 11: .6} -> T_glob = {3, 8, 10, 11}.
FAI = [9.0, 9.0, 0.1, 0.9, 0.2, 0.1, 0.3, 0.2, 0.8, 0.1, 0.7, 0.6]
# WAAD over R sorted: .5 .8 1 1.2 1.5 | 2 2.5 3 3.5 4 -> median tau_waad = 1.75.
WAAD = [0.0, 0.0, 1.0, 0.5, 2.0, 3.0, 1.5, 2.5, 0.8, 1.2, 4.0, 3.5]
# Coupled, by hand (k = 3, window clipped to R):
#   anchor 3:  WAAD .5 <= 1.75, window {2}: max Delta .1 < .3            -> not dominated (the prompt's 5.0 is out)
#   anchor 8:  WAAD .8 <= 1.75, window {5, 6, 7}: max .8 >= .3           -> dominated, intro = 7
#   anchor 10: WAAD 4.0 > 1.75                                           -> not dominated
#   anchor 11: WAAD 3.5 > 1.75                                           -> not dominated
ENTROPY = [9.0, 9.0, 0.5, 0.1, 0.2, 2.0, 0.3, 1.5, 0.4, 1.0, 0.6, 0.05]  # top 4 over R: {5, 7, 9, 10}


def make(delta=DELTA, fai=FAI, waad=WAAD, entropy=ENTROPY, preplan=None, anchors=None, start=START, q=0.4,
         requires_grad=False):
    """A Rhythm built by hand; preplan / anchors default to top_q of the series (as analyses.rhythm does)."""
    def series(x):
        return torch.tensor(x, dtype=torch.float64, requires_grad=requires_grad)

    n = len(waad)
    delta_t, fai_t, waad_t = series(delta), series(fai), series(waad)

    def mask(given, values):
        if given is None:
            return analyses.top_q(values.detach(), q, start)
        return torch.tensor([t in given for t in range(n)])

    return Rhythm(
        layers=[0], head_span={}, local_heads=[], global_heads=[], waad=waad_t, waad_delta=delta_t, fai=fai_t,
        preplan=mask(preplan, delta_t), anchors=mask(anchors, fai_t),
        entropy=None if entropy is None else series(entropy), tokens=torch.arange(n), response_start=start,
    )


def expect(values: dict, n=T):
    """[1, n] tensor of ones with the given {position: gamma}."""
    out = torch.ones(1, n)
    for t, v in values.items():
        out[0, t] = v
    return out


def check(got, want):
    assert got.shape == want.shape
    assert torch.allclose(got.to(torch.float64), want.to(torch.float64), atol=1e-6), (got, want)


def test_sets_of_the_hand_made_rhythm():
    r = make()
    pre, anc = token_sets(r)
    assert torch.nonzero(pre).flatten().tolist() == [4, 6, 7, 9]
    assert torch.nonzero(anc).flatten().tolist() == [3, 8, 10, 11]


def test_none_local_anchor():
    r = make()
    check(gamma(r, "none"), torch.ones(1, T))
    check(gamma(r, "local"), expect({4: 1.5, 6: 1.5, 7: 1.5, 9: 1.5}))
    check(gamma(r, "anchor"), expect({3: 1.5, 8: 1.5, 10: 1.5, 11: 1.5}))
    check(gamma(r, "anchor", amp=2.0), expect({3: 2.0, 8: 2.0, 10: 2.0, 11: 2.0}))
    g = gamma(r, "local")
    assert g.dtype == torch.float32
    assert gamma(r, "local", dtype=torch.float64).dtype == torch.float64


def test_given_sets_are_marked_exactly():
    # stored sets of the right size (4) are used as they are, even where they differ from the series' top q
    r = make(preplan={2, 5, 8, 11}, anchors={2, 3, 4, 5})
    check(gamma(r, "local"), expect({2: 1.5, 5: 1.5, 8: 1.5, 11: 1.5}))
    check(gamma(r, "anchor"), expect({2: 1.5, 3: 1.5, 4: 1.5, 5: 1.5}))


def test_coupled_one_dominated_anchor():
    r = make()
    anchors, dominated, intro = coupled_sets(r)
    assert torch.nonzero(dominated).flatten().tolist() == [8]
    assert torch.nonzero(intro).flatten().tolist() == [7]  # the latest preplan token before 8
    # plain anchors amp; dominated (1 - alpha)(amp - 1); intro alpha (amp - 1)
    check(gamma(r, "coupled"), expect({3: 1.5, 8: 1.25, 10: 1.5, 11: 1.5, 7: 1.25}))
    check(gamma(r, "coupled", alpha=0.2), expect({3: 1.5, 8: 1.4, 10: 1.5, 11: 1.5, 7: 1.1}))
    check(gamma(r, "coupled", alpha=0.2, amp=2.0), expect({3: 2.0, 8: 1.8, 10: 2.0, 11: 2.0, 7: 1.2}))


def test_coupled_thresholds_overridable():
    r = make()
    anchor = gamma(r, "anchor")
    check(gamma(r, "coupled", tau_waad=0.6), anchor)  # WAAD_8 = .8 > .6: nothing dominated
    check(gamma(r, "coupled", tau_delta=0.85), anchor)  # max Delta in 5..7 = .8 < .85
    # tau_waad = 0.5 keeps anchor 3 (WAAD .5), and with tau_delta = 0.05 its window {2} (Delta .1) counts;
    # it has no preplan token before it, so it has no intro. Anchor 8 stays above tau_waad = .5: not dominated.
    check(gamma(r, "coupled", tau_waad=0.5, tau_delta=0.05), expect({3: 1.25, 8: 1.5, 10: 1.5, 11: 1.5}))


def test_coupled_terms_sum_when_an_anchor_is_an_intro():
    # FAI at 7 raised above 11: T_glob = {3, 7, 8, 10}; 7 is a plain anchor (WAAD 2.5) and the intro of 8
    fai = list(FAI)
    fai[7] = 0.65
    r = make(fai=fai)
    check(gamma(r, "coupled"), expect({3: 1.5, 7: 1.0 + 0.5 + 0.25, 8: 1.25, 10: 1.5}))


# Boundary data: Delta over R small except 9 (.7), 10 (.6), 3 (.2) and a .9 placed at p;
# T_loc = {p, 3, 9, 10}, tau_Delta = .2. Anchor 8 (WAAD .8 <= median) has window 5..7 for k = 3.
def boundary_delta(p):
    delta = [5.0, 5.0, 0.1, 0.2, 0.01, 0.02, 0.05, 0.04, 0.03, 0.7, 0.6, 0.0]
    delta[p] = 0.9
    return delta


def test_coupled_window_boundary():
    inside = make(delta=boundary_delta(5))  # t - 3 = 5 is in the window
    check(gamma(inside, "coupled"), expect({3: 1.5, 8: 1.25, 10: 1.5, 11: 1.5, 5: 1.25}))
    outside = make(delta=boundary_delta(4))  # t - 4 = 4 is not: no anchor dominated, coupled == anchor
    assert not coupled_sets(outside)[1].any()
    check(gamma(outside, "coupled"), gamma(outside, "anchor"))
    check(gamma(outside, "coupled"), expect({3: 1.5, 8: 1.5, 10: 1.5, 11: 1.5}))
    # k = 4 reaches position 4: dominated again, intro = 4 (latest preplan before 8)
    check(gamma(outside, "coupled", k=4), expect({3: 1.5, 8: 1.25, 10: 1.5, 11: 1.5, 4: 1.25}))
    with pytest.raises(ValueError, match="k"):
        gamma(outside, "coupled", k=0)


def test_random_credit():
    r = make()
    g = gamma(r, "random", seed=1)
    boosted = torch.nonzero(g[0] != 1).flatten()
    assert len(boosted) == 4  # |T_glob|
    assert boosted.min() >= START
    assert set(g[0].tolist()) <= {1.0, 1.5}
    assert torch.equal(g, gamma(r, "random", seed=1))
    assert torch.equal(g, gamma(r, "random", generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(g, gamma(r, "random", seed=2))
    assert int((gamma(r, "random", seed=1, q=0.2)[0] != 1).sum()) == 2  # the recomputed anchor count
    torch.manual_seed(5)
    a = gamma(r, "random")
    torch.manual_seed(5)
    assert torch.equal(a, gamma(r, "random"))  # global generator: reproducible under torch.manual_seed


def test_entropy_credit():
    r = make()
    check(gamma(r, "entropy"), expect({5: 1.5, 7: 1.5, 9: 1.5, 10: 1.5}))
    check(gamma(r, "entropy", q=0.2), expect({5: 1.5, 7: 1.5}))
    with pytest.raises(ValueError, match="entropy"):
        gamma(make(entropy=None), "entropy")


def test_q_override_recomputes_sets():
    r = make(preplan={2, 5, 8, 11}, anchors={2, 3, 4, 5})  # size 4 = q 0.4; other q recomputes from the series
    check(gamma(r, "local", q=0.2), expect({4: 1.5, 7: 1.5}))
    check(gamma(r, "anchor", q=0.3), expect({3: 1.5, 8: 1.5, 10: 1.5}))
    # coupled with q = 0.2: T_loc = {4, 7}, tau_Delta = .8, T_glob = {3, 8}; 8: window max .8 >= .8, intro 7
    check(gamma(r, "coupled", q=0.2), expect({3: 1.5, 8: 1.25, 7: 1.25}))
    with pytest.raises(ValueError, match="q"):
        gamma(r, "local", q=1.5)


def test_batch_pads_with_ones():
    short = make(delta=DELTA[:8], fai=FAI[:8], waad=WAAD[:8], entropy=ENTROPY[:8], start=3)
    # short R = 3..7: top ceil(.4*5)=2 of FAI {3: .9, 6: .3} ; Delta {4: .9, 7: .8}
    g = gamma([make(), short], "anchor")
    assert g.shape == (2, T)
    check(g[:1], expect({3: 1.5, 8: 1.5, 10: 1.5, 11: 1.5}))
    check(g[1:], expect({3: 1.5, 6: 1.5}))
    assert torch.equal(g[1, 8:], torch.ones(4))
    g = gamma([make(), short], "local", length=15)
    assert g.shape == (2, 15) and torch.equal(g[:, 12:], torch.ones(2, 3))
    check(g[1:, :T], expect({4: 1.5, 7: 1.5}))
    with pytest.raises(ValueError, match="length"):
        gamma([make(), short], "local", length=10)
    # random: each sequence draws its own positions, within its own R
    g = gamma([make(), short], "random", seed=0)
    assert int((g[0] != 1).sum()) == 4 and int((g[1] != 1).sum()) == 2
    assert (g[1, :3] == 1).all() and (g[1, 8:] == 1).all()


def test_prompt_always_one():
    r = make(start=6)
    for strategy in STRATEGIES:
        g = gamma(r, strategy, seed=0, tau_waad=10.0, tau_delta=0.0)
        assert (g[0, :6] == 1).all(), strategy


def test_gamma_is_detached():
    r = make(requires_grad=True)
    for strategy in STRATEGIES:
        g = gamma(r, strategy, seed=0)
        assert not g.requires_grad and g.grad_fn is None


def test_bad_arguments():
    r = make()
    with pytest.raises(ValueError, match="strategy.*'coupled'"):
        gamma(r, "anchors")
    with pytest.raises(ValueError, match="signs.*'positive'"):
        apply_credit(torch.ones(1, T), gamma(r, "none"), signs="negative")
    with pytest.raises(ValueError, match="alpha"):
        gamma(r, "coupled", alpha=2.0)
    with pytest.raises(ValueError, match="rhythm"):
        gamma([], "none")
    with pytest.raises(TypeError):
        gamma(r, "none", gamma_amp=2.0)


def test_apply_credit():
    adv = torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, 2.0, -3.0, 0.5]], requires_grad=True)
    g = torch.tensor([[1.5, 1.5, 1.5, 1.0], [1.25, 1.0, 1.5, 1.5]])
    both = apply_credit(adv, g)
    check(both, torch.tensor([[1.5, -3.0, 0.0, 3.0], [-1.25, 2.0, -4.5, 0.75]]))
    pos = apply_credit(adv, g, signs="positive")
    check(pos, torch.tensor([[1.5, -2.0, 0.0, 3.0], [-1.0, 2.0, -3.0, 0.75]]))
    both.sum().backward()  # gradient flows to the advantages only, through the constant gamma
    assert torch.equal(adv.grad, g)
    per_seq = torch.tensor([[2.0], [-1.0]])  # GRPO: one advantage per sequence broadcasts
    check(apply_credit(per_seq, g, signs="positive"), torch.tensor([[3.0, 3.0, 3.0, 2.0], [-1.0] * 4]))


def test_credit_statistics():
    g = torch.tensor([[1.0, 1.5, 1.5, 1.0], [1.25, 1.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    s = credit_statistics(g, mask)
    assert s["credit_boosted"] == pytest.approx(3 / 6)
    assert s["credit_mean"] == pytest.approx(7.25 / 6)
    assert s["credit_max"] == 1.5 and s["credit_tokens"] == 6.0
    assert all(isinstance(v, float) for v in s.values())
    assert credit_statistics(g)["credit_tokens"] == 8.0
    assert math.isnan(credit_statistics(g, torch.zeros_like(mask))["credit_mean"])


def test_strategies_and_exports():
    assert STRATEGIES == ("none", "local", "anchor", "coupled", "random", "entropy")
    assert set(credit.__all__) >= {"STRATEGIES", "gamma", "apply_credit", "credit_statistics"}


# ---- a real tiny model ----------------------------------------------------------------------------------
SPEC = {"vocab_size": 64, "d_model": 32, "n_layers": 6, "n_heads": 4, "pattern": "LS",
        "pattern_map": {"L": "lightning", "S": "softmax"}}


def test_strategies_on_a_real_tiny_model():
    model = studio.build_model(SPEC, seed=0)
    n, start = 40, 10
    tokens = torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(0))
    r = analyses.rhythm(model, tokens, response_start=start)
    boosted = math.ceil(0.4 * (n - start))  # 12
    gs = {s: gamma(r, s, seed=0) for s in STRATEGIES}
    for s, g in gs.items():
        assert g.shape == (1, n), s
        assert (g[0, :start] == 1).all(), s
        assert not g.requires_grad
    assert (gs["none"] == 1).all()
    for s in ("local", "anchor", "random", "entropy"):
        assert set(gs[s][0].tolist()) == {1.0, 1.5}, s
        assert int((gs[s] == 1.5).sum()) == boosted, s
    assert torch.equal(gs["local"][0] == 1.5, r.preplan)
    assert torch.equal(gs["anchor"][0] == 1.5, r.anchors)
    assert set(gs["coupled"][0].tolist()) <= {1.0, 1.25, 1.5, 1.75}
    anchors, dominated, intro = coupled_sets(r)
    want = 1 + 0.5 * (anchors & ~dominated) + 0.25 * dominated + 0.25 * intro
    assert torch.allclose(gs["coupled"][0].double(), want.double())
    assert torch.equal(gs["coupled"][0] > 1, anchors | intro)
