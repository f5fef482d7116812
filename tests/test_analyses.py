"""Preplan-and-anchor metrics (arXiv 2510.13554) against direct loop evaluations of the formulas."""

import math

import pytest
import torch

import analyses
import studio
from analyses import metrics

SPEC = {"vocab_size": 64, "d_model": 32, "n_layers": 6, "n_heads": 4, "pattern": "LS",
        "pattern_map": {"L": "lightning", "S": "softmax"}}


# ---- loop references: the formulas of REFERENCE.md section 4, one term at a time ----------------------
def ref_span(a, start):  # a: [T][T] nested lists
    n = len(a)
    rows = [t for t in range(n) if t >= start]
    if not rows:
        return 0.0
    return sum(sum(a[t][s] * (t - s) for s in range(t + 1)) for t in rows) / len(rows)


def ref_waad(a, window):
    n = len(a)
    clip = (lambda d: d) if window is None else (lambda d: min(d, window))
    return [sum(a[t][s] * clip(t - s) for s in range(t + 1)) for t in range(n)]


def ref_fai(a, h_lo, h_hi, start):
    n = len(a)
    last = n - 1
    out = []
    for s in range(n):
        upper = last if h_hi is None else min(last, s + h_hi)
        ts = [t for t in range(n) if t >= start and s + h_lo <= t <= upper]
        out.append(sum(a[t][s] for t in ts) / len(ts) if ts else 0.0)
    return out


def ref_delta(w):
    return [abs(w[t] - w[t + 1]) if t + 1 < len(w) else 0.0 for t in range(len(w))]


def ref_top_q(values, q, start):
    n = len(values)
    positions = [t for t in range(start, n)]
    k = math.ceil(round(q * len(positions), 9))
    chosen = sorted(positions, key=lambda t: (-values[t], t))[:k]
    return [t in chosen for t in range(n)]


def random_pattern(seed, shape):
    """Signed, unnormalised, nonzero above the diagonal too (those entries must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def close(got, want, tol=1e-10):
    want = torch.as_tensor(want, dtype=torch.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.allclose(got.to(torch.float64), want, atol=tol, rtol=tol), (got, want)


# ---- formulas on random patterns -------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 7, 33])
def test_head_span_matches_loops(seed, n):
    heads, batch = 3, 2
    for start in sorted({0, n // 2, n - 1, n + 2}):
        unbatched = random_pattern(seed, (heads, n, n))
        got = metrics.head_span(unbatched, response_start=start)
        assert got.dtype == torch.float64
        close(got, [ref_span(unbatched[h].tolist(), start) for h in range(heads)])
        batched = random_pattern(seed + 10, (batch, heads, n, n))
        got = metrics.head_span(batched, response_start=start)
        close(got, [[ref_span(batched[b, h].tolist(), start) for h in range(heads)] for b in range(batch)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 7, 33])
def test_waad_and_delta_match_loops(seed, n):
    for window in (10, 3, None):
        a = random_pattern(seed, (n, n))
        w = metrics.waad(a, window=window)
        assert w.dtype == torch.float64
        close(w, ref_waad(a.tolist(), window))
        close(metrics.waad_delta(w), ref_delta(ref_waad(a.tolist(), window)))
        b = random_pattern(seed + 10, (2, n, n))
        wb = metrics.waad(b, window=window)
        close(wb, [ref_waad(b[i].tolist(), window) for i in range(2)])
        close(metrics.waad_delta(wb), [ref_delta(ref_waad(b[i].tolist(), window)) for i in range(2)])
    assert metrics.waad(random_pattern(seed, (n, n)).float()).dtype == torch.float32


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 7, 33])
def test_fai_matches_loops(seed, n):
    for h_lo, h_hi in ((10, 100), (2, 5), (0, None), (3, None), (1, 1)):
        for start in sorted({0, n // 2, n - 1}):
            a = random_pattern(seed, (n, n))
            got = metrics.fai(a, h_lo=h_lo, h_hi=h_hi, response_start=start)
            assert got.dtype == torch.float64
            close(got, ref_fai(a.tolist(), h_lo, h_hi, start))
            b = random_pattern(seed + 10, (2, n, n))
            got = metrics.fai(b, h_lo=h_lo, h_hi=h_hi, response_start=start)
            close(got, [ref_fai(b[i].tolist(), h_lo, h_hi, start) for i in range(2)])


def test_fai_default_horizon_is_10_to_100():
    a = random_pattern(5, (130, 130))
    close(metrics.fai(a), ref_fai(a.tolist(), 10, 100, 0))
    close(metrics.fai(a, h_hi=None, response_start=20), ref_fai(a.tolist(), 10, None, 20))
    assert not torch.allclose(metrics.fai(a), metrics.fai(a, h_hi=None))  # the cap at s + 100 matters


def test_shape_errors():
    with pytest.raises(ValueError):
        metrics.head_span(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        metrics.waad(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        metrics.fai(torch.zeros(2, 2, 3, 3))
    with pytest.raises(ValueError):
        metrics.head_span(torch.zeros(1, 3, 3), response_start=-1)
    with pytest.raises(ValueError):
        metrics.top_q(torch.zeros(5), q=1.5)


# ---- crafted patterns -------------------------------------------------------------------------------
def test_diagonal_pattern_has_zero_waad_and_span():
    eye = torch.eye(17, dtype=torch.float64)
    assert torch.equal(metrics.waad(eye), torch.zeros(17, dtype=torch.float64))
    assert torch.equal(metrics.head_span(eye.expand(3, 17, 17)), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(metrics.fai(eye), torch.zeros(17, dtype=torch.float64))  # no mass >= 10 back


def test_attending_to_token_zero_gives_fai_only_at_zero():
    n = 40
    a = torch.zeros(n, n, dtype=torch.float64)
    a[:, 0] = 1.0
    for kwargs in ({}, {"h_hi": None}, {"response_start": 15}, {"h_lo": 0, "h_hi": 3}):
        f = metrics.fai(a, **kwargs)
        assert f[0] == 1.0
        assert torch.equal(f[1:], torch.zeros(n - 1, dtype=torch.float64))


def test_uniform_causal_pattern_span():
    n = 21
    a = torch.tril(torch.ones(n, n, dtype=torch.float64))
    a = a / a.sum(-1, keepdim=True)  # A[t, s] = 1/(t+1): span of row t is t/2
    for start in (0, 5, 20):
        want = sum(t / 2 for t in range(start, n)) / (n - start)
        close(metrics.head_span(a[None], response_start=start), [want])
    close(metrics.waad(a, window=None), [t / 2 for t in range(n)])


def test_fixed_lag_pattern_waad_and_clip():
    n = 30
    for lag, want in ((3, 3.0), (15, 10.0), (10, 10.0)):
        a = torch.zeros(n, n, dtype=torch.float64)
        for t in range(n):
            a[t, max(t - lag, 0)] = 1.0
        w = metrics.waad(a)
        assert torch.equal(w[lag:], torch.full((n - lag,), want, dtype=torch.float64))
        close(w[:lag], [min(t, 10) for t in range(lag)])
        assert torch.equal(metrics.waad(a, window=None)[lag:], torch.full((n - lag,), float(lag), dtype=torch.float64))
    a = torch.zeros(n, n, dtype=torch.float64)
    for t in range(n):
        a[t, max(t - 3, 0)] = 1.0
    delta = metrics.waad_delta(metrics.waad(a))  # WAAD = 0, 1, 2, 3, 3, ...
    close(delta, [1.0, 1.0, 1.0] + [0.0] * (n - 3))


# ---- top_q, head_groups, select_layers --------------------------------------------------------------
def test_top_q_counts_start_and_ties():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 33):
        for start in sorted({0, n // 3, n - 1}):
            for q in (0.0, 0.1, 0.3, 0.4, 1.0):
                v = torch.randint(0, 4, (n,), generator=g).to(torch.float64)  # many ties
                mask = metrics.top_q(v, q, start)
                assert mask.dtype == torch.bool
                assert mask.tolist() == ref_top_q(v.tolist(), q, start)
                assert int(mask.sum()) == math.ceil(round(q * (n - start), 9))
                assert not mask[:start].any()
                vb = torch.randn(3, n, generator=g, dtype=torch.float64)
                mb = metrics.top_q(vb, q, start)
                assert mb.tolist() == [ref_top_q(row, q, start) for row in vb.tolist()]
    flat = torch.zeros(10)
    assert metrics.top_q(flat, 0.3, start=2).nonzero().flatten().tolist() == [2, 3, 4]  # earliest win ties
    assert int(metrics.top_q(torch.arange(10.0), 0.3).sum()) == 3  # 0.3 * 10 is 3, not ceil(3.0000000000000004)
    assert metrics.top_q(torch.arange(10.0), 0.25).nonzero().flatten().tolist() == [7, 8, 9]  # ceil(2.5)
    assert not metrics.top_q(torch.arange(5.0), 0.4, start=9).any()


def test_head_groups_one_dimensional():
    spans = torch.tensor([5.0, 1.0, 3.0, 1.0, 9.0, 3.0, 7.0, 0.0, 2.0, 9.0], dtype=torch.float64)
    local, glob = metrics.head_groups(spans)  # k = ceil(0.3 * 10) = 3
    assert local.tolist() == [1, 3, 7]
    assert glob.tolist() == [4, 6, 9]
    for n in range(1, 25):
        v = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
        local, glob = metrics.head_groups(v, q=0.3)
        k = min(max(1, math.ceil(round(0.3 * n, 9))), max(1, n // 2))
        order = sorted(range(n), key=lambda i: (v[i].item(), i))
        assert local.tolist() == sorted(order[:k])
        assert glob.tolist() == sorted(sorted(range(n), key=lambda i: (-v[i].item(), i))[:k])
        if n >= 2:
            assert not set(local.tolist()) & set(glob.tolist())
    assert metrics.head_groups(torch.tensor([4.0]))[0].tolist() == [0] == metrics.head_groups(torch.tensor([4.0]))[1].tolist()
    local, glob = metrics.head_groups(torch.arange(4.0), q=0.9)  # capped at n // 2 so the groups stay disjoint
    assert local.tolist() == [0, 1] and glob.tolist() == [2, 3]


def test_head_groups_ties_are_deterministic():
    ties = torch.zeros(7)
    local, glob = metrics.head_groups(ties)
    assert local.tolist() == [0, 1, 2]
    assert glob.tolist() == [0, 1, 2]  # each group on its own takes the lowest indices among equals


def test_head_groups_over_layer_head_pairs():
    spans = torch.tensor([[3.0, 0.5, 8.0, 2.0], [1.0, 9.0, 0.1, 4.0], [7.0, 6.0, 0.2, 5.0]], dtype=torch.float64)
    local, glob = metrics.head_groups(spans)  # 12 pairs, k = ceil(3.6) = 4
    assert local.shape == (4, 2)
    assert [tuple(p) for p in local.tolist()] == [(0, 1), (1, 0), (1, 2), (2, 2)]
    assert [tuple(p) for p in glob.tolist()] == [(0, 2), (1, 1), (2, 0), (2, 1)]


def test_select_layers():
    layers = metrics.select_layers(30)
    assert layers == [10, 13, 15, 18, 20]
    assert len(layers) == 5 and layers[0] == 10 and layers[-1] == 20 and layers == sorted(set(layers))
    assert all(2 <= b - a <= 3 for a, b in zip(layers, layers[1:]))
    assert metrics.select_layers(3) == [1, 2]
    assert metrics.select_layers(1) == [0]
    assert metrics.select_layers(6) == [2, 3, 4]
    assert metrics.select_layers(36) == [12, 15, 18, 21, 24]
    assert metrics.select_layers(30, count=1) == [15]
    for n_layers in range(1, 60):
        chosen = metrics.select_layers(n_layers)
        assert chosen[0] == n_layers // 3 and chosen[-1] == 2 * n_layers // 3
        assert len(chosen) == min(5, 2 * n_layers // 3 - n_layers // 3 + 1)
    with pytest.raises(ValueError):
        metrics.select_layers(0)


# ---- rhythm statistics -------------------------------------------------------------------------------
def test_rhythm_statistics_crafted():
    n, start = 20, 4
    pre = torch.zeros(n, dtype=torch.bool)
    pre[[5, 10, 15]] = True
    anc = torch.zeros(n, dtype=torch.bool)
    anc[[5, 7, 12, 19]] = True  # 5 coincides; 5 and 7 lie within 0..3 after preplan 5
    entropy = torch.arange(n, dtype=torch.float64)
    stats = metrics.rhythm_statistics(torch.zeros(n), torch.zeros(n), entropy, start,
                                      generator=torch.Generator().manual_seed(0), n_random=4000,
                                      preplan=pre, anchors=anc)
    assert stats["n_response"] == 16 and stats["n_preplan"] == 3 and stats["n_anchor"] == 4
    assert stats["cooccur"] == 0.25
    assert stats["cooccur_expected"] == 3 / 16
    assert stats["anchor_after_preplan"] == 0.75  # 5 (at 5), 7 (5 + 2), 12 (10 + 2); not 19 (15 + 4)
    covered = {5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18}
    assert stats["anchor_after_preplan_expected"] == len(covered) / 16
    assert stats["entropy_preplan"] == 10.0
    assert stats["entropy_preplan_expected"] == stats["entropy_response"] == sum(range(4, 20)) / 16
    assert stats["entropy_anchor"] == (5 + 7 + 12 + 19) / 4
    for name in ("cooccur", "anchor_after_preplan", "entropy_preplan"):
        assert abs(stats[f"{name}_random"] - stats[f"{name}_expected"]) < 0.03 * max(1, stats[f"{name}_expected"])
        assert 0 < stats[f"{name}_pvalue"] <= 1
    assert stats["entropy_lift"] == stats["entropy_preplan"] - stats["entropy_preplan_random"]
    again = metrics.rhythm_statistics(torch.zeros(n), torch.zeros(n), entropy, start,
                                      generator=torch.Generator().manual_seed(0), n_random=4000,
                                      preplan=pre, anchors=anc)
    assert again == stats


def test_rhythm_statistics_computes_masks_and_random_draws_stay_in_r():
    g = torch.Generator().manual_seed(3)
    n, start = 33, 8
    w, f = torch.randn(n, generator=g), torch.randn(n, generator=g)
    stats = metrics.rhythm_statistics(w, f, None, start, generator=torch.Generator().manual_seed(1))
    pre = metrics.top_q(metrics.waad_delta(w), 0.4, start)
    anc = metrics.top_q(f, 0.4, start)
    assert stats["n_preplan"] == stats["n_anchor"] == math.ceil(0.4 * 25) == 10
    assert stats["cooccur"] == float((pre & anc).sum()) / 10
    near = [any(pre[p] for p in range(max(a - 3, 0), a + 1)) for a in anc.nonzero().flatten().tolist()]
    assert stats["anchor_after_preplan"] == sum(near) / 10
    assert "entropy_preplan" not in stats
    # an anchor set that is all of R: every random draw is all of R too, so random == observed
    everything = metrics.rhythm_statistics(w, f, None, start, q=1.0, generator=torch.Generator().manual_seed(1))
    assert everything["cooccur"] == everything["cooccur_random"] == everything["cooccur_expected"] == 1.0


# ---- rhythm() on a real hybrid model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return studio.build_model(SPEC, seed=0)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(0))


def by_hand(model, tokens, start, layers, window=10, h_lo=10, h_hi=100):
    # Hook exactly the layers rhythm() hooks: a hooked mixer computes z = pattern @ v, which rounds
    # differently in float32 (~1e-6) from its fused form, so hooking other layers shifts later patterns.
    names = {f"blocks.{l}.attn.hook_pattern" for l in layers}
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    pats = {l: cache[f"blocks.{l}.attn.hook_pattern"][0].to(torch.float64) for l in layers}
    spans = {l: [ref_span(pats[l][h].tolist(), start) for h in range(pats[l].shape[0])] for l in layers}
    pairs = [(l, h) for l in layers for h in range(len(spans[l]))]
    k = min(math.ceil(round(0.3 * len(pairs), 9)), len(pairs) // 2)
    local = sorted(sorted(pairs, key=lambda p: (spans[p[0]][p[1]], p))[:k])
    glob = sorted(sorted(pairs, key=lambda p: (-spans[p[0]][p[1]], p))[:k])
    loc_avg = sum(pats[l][h] for l, h in local) / k
    glob_avg = sum(pats[l][h] for l, h in glob) / k
    waad_ref, fai_ref = ref_waad(loc_avg.tolist(), window), ref_fai(glob_avg.tolist(), h_lo, h_hi, start)
    return spans, local, glob, waad_ref, fai_ref, logits


def test_rhythm_on_hybrid_model_matches_hand_computation(model, tokens):
    calls = []
    handle = model.hook_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        r = analyses.rhythm(model, tokens, response_start=10)
    finally:
        handle.remove()
    assert len(calls) == 1  # one hooked forward
    assert not any(model.blocks[l].attn.hook_pattern.has_hooks() for l in range(6))  # hooks cleaned up
    assert isinstance(r, analyses.Rhythm)
    n = tokens.shape[1]
    assert r.layers == [2, 3, 4]  # floor(6/3)..floor(12/3): lightning, softmax, lightning
    assert r.response_start == 10 and r.tokens.tolist() == tokens[0].tolist()
    for series in (r.waad, r.waad_delta, r.fai, r.preplan, r.anchors, r.entropy):
        assert series.shape == (n,)
    assert r.preplan.dtype == r.anchors.dtype == torch.bool
    assert not r.preplan[:10].any() and not r.anchors[:10].any()
    assert int(r.preplan.sum()) == int(r.anchors.sum()) == 12  # ceil(0.4 * 30)
    assert len(r.local_heads) == len(r.global_heads) == 4  # ceil(0.3 * 12)
    assert not set(r.local_heads) & set(r.global_heads)
    assert all(l in r.layers and 0 <= h < 4 for l, h in r.local_heads + r.global_heads)

    spans, local, glob, waad_ref, fai_ref, logits = by_hand(model, tokens, 10, [2, 3, 4])
    assert set(r.head_span) == {2, 3, 4}
    for layer in (2, 3, 4):
        close(r.head_span[layer], spans[layer], tol=1e-9)
    assert r.local_heads == local and r.global_heads == glob
    close(r.waad, waad_ref, tol=1e-9)
    close(r.waad_delta, ref_delta(waad_ref), tol=1e-9)
    close(r.fai, fai_ref, tol=1e-9)
    assert r.preplan.tolist() == ref_top_q(r.waad_delta.tolist(), 0.4, 10)
    assert r.anchors.tolist() == ref_top_q(r.fai.tolist(), 0.4, 10)
    probs = torch.softmax(logits[0].to(torch.float64), -1)
    close(r.entropy, [-sum(p * math.log(p) for p in row) for row in probs.tolist()], tol=1e-9)
    assert r.statistics["n_preplan"] == 12 and r.statistics["n_response"] == 30
    assert r.statistics["entropy_preplan"] == pytest.approx(float(r.entropy[r.preplan].mean()))
    assert analyses.rhythm(model, tokens, response_start=10).statistics == r.statistics  # seeded baseline


def test_rhythm_options_and_errors(model, tokens):
    r = analyses.rhythm(model, tokens[0], response_start=5, layers=[1, 5], h_hi=None, window=4, q=0.25)
    assert r.layers == [1, 5]
    spans, local, glob, waad_ref, fai_ref, _ = by_hand(model, tokens, 5, [1, 5], window=4, h_hi=None)
    assert r.local_heads == local and r.global_heads == glob
    close(r.waad, waad_ref, tol=1e-9)
    close(r.fai, fai_ref, tol=1e-9)
    assert int(r.preplan.sum()) == math.ceil(0.25 * 35)
    with pytest.raises(ValueError, match="batch"):
        analyses.rhythm(model, tokens.repeat(2, 1), response_start=10)
    with pytest.raises(ValueError):
        analyses.rhythm(model, tokens, response_start=40)
    with pytest.raises(ValueError):
        analyses.rhythm(model, tokens, response_start=10, layers=[6])


def test_rhythms_of_a_right_padded_batch_equal_each_row_alone(model, tokens):
    """One hooked forward for a batch (RL credit): padding after a row's end changes nothing before it."""
    second = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(1))
    batch = torch.cat([tokens, second])
    batch[1, 31:] = 0  # row 1 is 31 tokens long, then padding
    rows = analyses.rhythms(model, batch, response_starts=[10, 6], lengths=[40, 31])
    for row, alone in zip(rows, [analyses.rhythm(model, tokens, 10), analyses.rhythm(model, second[0, :31], 6)]):
        assert row.waad.shape == alone.waad.shape and row.response_start == alone.response_start
        for name in ("waad", "fai", "entropy"):
            close(getattr(row, name), getattr(alone, name), tol=1e-5)
        assert torch.equal(row.preplan, alone.preplan) and torch.equal(row.anchors, alone.anchors)
        assert row.local_heads == alone.local_heads and row.global_heads == alone.global_heads
    with pytest.raises(ValueError, match="one response start and one length per row"):
        analyses.rhythms(model, batch, response_starts=[10])


def test_package_exports():
    for name in ("head_span", "head_groups", "waad", "fai", "waad_delta", "top_q", "select_layers",
                 "rhythm_statistics", "rhythm", "rhythms", "Rhythm"):
        assert callable(getattr(analyses, name))
    assert "2510.13554" in analyses.__doc__
