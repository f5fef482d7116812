"""The Learn tab's worked examples (studio.learn): the toy matrices match their formulas, chunked equals
recurrent, the gallery and cost curves cover every registered mixer, figures and tables have the right
shape, and bad inputs are refused with a message naming the problem."""

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from studio import learn
from studio.mixers import REGISTRY
from studio.mixers.lightning import Lightning


def _phi(name, x):
    return {"identity": lambda a: a, "elu+1": lambda a: np.where(a > 0, a + 1.0, np.exp(a)),
            "relu": lambda a: np.maximum(a, 0.0), "silu": lambda a: a / (1.0 + np.exp(-a))}[name](x)


# ---- toy matrices ------------------------------------------------------------------------------
def test_toy_qkv_shapes_and_seed():
    q, k, v = learn.toy_qkv(length=7, dim=3, seed=5)
    assert q.shape == k.shape == v.shape == (7, 3) and q.dtype == np.float64
    q2, _, _ = learn.toy_qkv(length=7, dim=3, seed=5)
    q3, _, _ = learn.toy_qkv(length=7, dim=3, seed=6)
    np.testing.assert_array_equal(q, q2)
    assert not np.allclose(q, q3)


@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_and_window_match_formula(seed):
    q, k, _ = learn.toy_qkv(length=11, dim=4, seed=seed)
    w = 3
    m = learn.mixing_matrices(q, k, window=w)
    assert list(m) == ["softmax", "sliding_window", "linear", "lightning"]
    scores = q @ k.T / math.sqrt(4)
    gap = np.arange(11)[:, None] - np.arange(11)[None, :]
    for name, allowed in (("softmax", gap >= 0), ("sliding_window", (gap >= 0) & (gap < w))):
        e = np.where(allowed, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
        np.testing.assert_allclose(m[name], e / e.sum(-1, keepdims=True), atol=1e-12)
        np.testing.assert_allclose(m[name].sum(-1), 1.0, atol=1e-12)
        assert np.all(np.triu(m[name], 1) == 0), f"{name} must be causal"
    assert np.all(np.tril(m["sliding_window"], -w) == 0), "no weight beyond the window"
    assert np.all(m["sliding_window"][(gap >= 0) & (gap < w)] > 0), "every key inside the window weighs"
    assert "sliding_window" not in learn.mixing_matrices(q, k)


@pytest.mark.parametrize("feature_map", ["identity", "elu+1", "relu", "silu"])
def test_lightning_and_linear_match_formula(feature_map):
    q, k, _ = learn.toy_qkv(length=9, dim=4, seed=3)
    pq, pk = _phi(feature_map, q), _phi(feature_map, k)
    gap = np.arange(9)[:, None] - np.arange(9)[None, :]
    raw = np.where(gap >= 0, pq @ pk.T, 0.0)
    lam = 0.7
    m = learn.mixing_matrices(q, k, feature_map=feature_map, normalize=False, decay=lam)
    np.testing.assert_allclose(m["linear"], raw, atol=1e-12)
    np.testing.assert_allclose(m["lightning"], raw * np.where(gap >= 0, lam ** np.maximum(gap, 0), 0.0), atol=1e-12)
    # decay 1: lightning is exactly unnormalised linear attention
    one = learn.mixing_matrices(q, k, feature_map=feature_map, normalize=False, decay=1.0)
    np.testing.assert_allclose(one["lightning"], one["linear"], atol=1e-12)
    assert np.all(np.triu(one["lightning"], 1) == 0)


def test_normalised_linear_rows_sum_to_one():
    q, k, v = learn.toy_qkv(length=10, dim=4, seed=2)
    m = learn.mixing_matrices(q, k, feature_map="elu+1", normalize=True)
    np.testing.assert_allclose(m["linear"].sum(-1), 1.0, atol=1e-5)
    assert np.all(m["linear"] >= 0)
    out = learn.mix_outputs(m, v)
    for name in m:
        np.testing.assert_allclose(out[name], m[name] @ v)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    q, k, _ = learn.toy_qkv()
    learn.mixing_matrices(q, k, window=2)
    learn.mixer_gallery(length=5)
    torch.testing.assert_close(torch.rand(3), expected)


def test_compare_figure_and_table():
    q, k, v = learn.toy_qkv(length=6, dim=3)
    m = learn.mixing_matrices(q, k, window=2, decay=0.5)
    titles = learn.mixing_titles(m, window=2, decay=0.5)
    assert titles["sliding_window"] == "sliding window (w=2)" and "λ=0.5" in titles["lightning"]
    fig = learn.compare_figure(m, titles=titles)
    assert isinstance(fig, go.Figure) and len(fig.data) == 4
    assert all(isinstance(t, go.Heatmap) for t in fig.data)
    assert all(np.isnan(np.asarray(t.z, dtype=float)[0, 1:]).all() for t in fig.data), "future keys blank"
    fig2 = learn.compare_figure(m, learn.mix_outputs(m, v), titles)
    assert len(fig2.data) == 8 and np.asarray(fig2.data[4].z).shape == (6, 3)
    header, rows = learn.mixing_table(m, v, titles)
    assert len(rows) == 4 and all(len(r) == len(header) for r in rows)
    assert rows[0][1] == "1.0000 … 1.0000"


# ---- chunked == recurrent ----------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 5, 13, 31])
@pytest.mark.parametrize("chunk", [1, 3, 4, 8, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_equals_recurrent(length, chunk, seed):
    q, k, v = learn.toy_qkv(length=length, dim=4, seed=seed)
    decay = (0.9, 1.0)[seed]
    r = learn.chunked_vs_recurrent(q, k, v, decay=decay, chunk=chunk)
    assert r.max_abs_diff < 1e-5
    assert r.recurrent.shape == r.chunked.shape == (length, 4) and r.states.shape == (length, 4, 4)
    assert [s["t"] for s in r.steps] == list(range(length))
    assert len(r.chunks) == math.ceil(length / chunk)
    assert all(c["state_diff"] < 1e-8 for c in r.chunks), "carried state == recurrent state at chunk ends"
    # the recurrent form by hand: S_t = decay S_{t-1} + k_t v_t^T, o_t = q_t S_t
    state = np.zeros((4, 4))
    for t, step in enumerate(r.steps):
        state = decay * state + np.outer(k[t], v[t])
        np.testing.assert_allclose(step["recurrent"], q[t] @ state, atol=1e-10)
        np.testing.assert_allclose(step["state_norm"], np.linalg.norm(state), atol=1e-10)
        np.testing.assert_allclose(np.add(step["intra"], step["inter"]), step["chunked"], atol=1e-10)
        if step["chunk"] == 0:
            np.testing.assert_allclose(step["inter"], 0.0, atol=0)


def test_chunked_matches_lightning_matrix():
    q, k, v = learn.toy_qkv(length=10, dim=3, seed=4)
    r = learn.chunked_vs_recurrent(q, k, v, decay=0.8, chunk=3, feature_map="silu")
    m = learn.mixing_matrices(q, k, feature_map="silu", decay=0.8)
    np.testing.assert_allclose(r.chunked, m["lightning"] @ v, atol=1e-10)
    np.testing.assert_allclose(r.chunks[1]["intra_matrix"], m["lightning"][3:6, 3:6], atol=1e-12)


def test_chunked_vs_recurrent_figure_and_table():
    q, k, v = learn.toy_qkv(length=9, dim=3, seed=0)
    r = learn.chunked_vs_recurrent(q, k, v, decay=0.9, chunk=4)
    fig = learn.chunked_vs_recurrent_figure(r)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2 * 3 + 3
    assert {s.x0 for s in fig.layout.shapes} == {3.5, 7.5}  # chunk boundaries, drawn in every panel
    header, rows = learn.chunked_vs_recurrent_table(r)
    assert len(rows) == 9 and all(len(row) == len(header) for row in rows)


# ---- every registered mixer --------------------------------------------------------------------
def test_gallery_covers_registry_and_is_causal():
    g = learn.mixer_gallery(length=10, seed=0)
    assert set(g) == set(REGISTRY)
    for name, m in g.items():
        assert m.shape == (10, 10), name
        assert np.all(np.triu(m, 1) == 0), f"{name} pattern must be causal"
        assert np.isfinite(m).all() and np.abs(np.tril(m)).sum() > 0, name
    for name in ("softmax", "sliding_window"):
        np.testing.assert_allclose(g[name].sum(-1), 1.0, atol=1e-12)
    w = learn.GALLERY_PARAMS["sliding_window"]["window"]
    assert np.all(np.tril(g["sliding_window"], -w) == 0)
    g2 = learn.mixer_gallery(length=10, seed=0, params={"sliding_window": {"window": 2}}, head=1)
    assert np.all(np.tril(g2["sliding_window"], -2) == 0)
    np.testing.assert_array_equal(learn.mixer_gallery(length=10, seed=0)["linear"], g["linear"])
    fig = learn.gallery_figure(g)
    assert isinstance(fig, go.Figure) and len(fig.data) == len(REGISTRY)
    assert {t.name for t in fig.data} == set(REGISTRY)
    for axis in (a for a in fig.layout if a.startswith("yaxis")):  # every panel keeps a readable height
        low, high = fig.layout[axis].domain
        assert (high - low) * fig.layout.height >= 150, (axis, high - low)


def test_gallery_picks_up_new_mixers(monkeypatch):
    class Toy(Lightning):
        name = "learn_test_toy"

    monkeypatch.setitem(REGISTRY, "learn_test_toy", Toy)
    g = learn.mixer_gallery(length=6)
    assert "learn_test_toy" in g and np.all(np.triu(g["learn_test_toy"], 1) == 0)
    assert {r["mixer"] for r in learn.cost_curves(lengths=(256,))} == set(REGISTRY)


# ---- cost over length --------------------------------------------------------------------------
def test_cost_curves():
    lengths = (256, 1024, 4096, 16384)
    rows = learn.cost_curves(lengths=lengths, d_model=256, n_heads=4, dtype_bytes=2)
    assert len(rows) == len(REGISTRY) * len(lengths)
    by = {(r["mixer"], r["length"]): r for r in rows}
    soft = [by["softmax", n]["state_bytes"] for n in lengths]
    assert soft == [2 * 2 * 256 * n for n in lengths], "KV cache: 2 (k, v) x d_model x T x bytes"
    for name in ("linear", "lightning"):
        states = {by[name, n]["state_bytes"] for n in lengths}
        flops = {by[name, n]["flops_per_token"] for n in lengths}
        assert len(states) == 1 and len(flops) == 1, f"{name}: constant state and cost per token"
    assert by["lightning", 256]["state_bytes"] == 4 * 64 * 64 * 2
    flops = [by["softmax", n]["flops_per_token"] for n in lengths]
    assert all(b > a for a, b in zip(flops, flops[1:]))
    w = learn.COST_PARAMS["sliding_window"]["window"]  # 4096: the cache stops growing there
    assert [by["sliding_window", n]["state_bytes"] for n in lengths] == [2 * 2 * 256 * min(n, w) for n in lengths]
    fig = learn.cost_figure(rows)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2 * len(REGISTRY)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    header, table = learn.cost_table(rows)
    assert len(table) == len(rows) and all(len(r) == len(header) for r in table)


def test_default_cost_lengths():
    assert learn.DEFAULT_COST_LENGTHS[0] == 256 and learn.DEFAULT_COST_LENGTHS[-1] == 1024 * 1024
    rows = learn.cost_curves()
    assert {r["length"] for r in rows} == set(learn.DEFAULT_COST_LENGTHS)


# ---- bad inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda q, k, v: learn.mixing_matrices(q, k, decay=0.0), "decay"),
    (lambda q, k, v: learn.mixing_matrices(q, k, decay=1.5), "decay"),
    (lambda q, k, v: learn.mixing_matrices(q, k, decay="fast"), "decay"),
    (lambda q, k, v: learn.mixing_matrices(q, k, window=0), "window"),
    (lambda q, k, v: learn.mixing_matrices(q, k, feature_map="tanh"), "feature_map"),
    (lambda q, k, v: learn.mixing_matrices(q, k[:, :2]), "same shape"),
    (lambda q, k, v: learn.mixing_matrices(np.zeros((65, 4)), np.zeros((65, 4))), "length 65"),
    (lambda q, k, v: learn.mixing_matrices(q[0], k[0]), "[length, dim]"),
    (lambda q, k, v: learn.mixing_matrices(q * np.nan, k), "non-finite"),
    (lambda q, k, v: learn.toy_qkv(length=100), "length"),
    (lambda q, k, v: learn.toy_qkv(length=0), "length"),
    (lambda q, k, v: learn.toy_qkv(dim=2.5), "dim"),
    (lambda q, k, v: learn.chunked_vs_recurrent(q, k, v, decay=-0.1), "decay"),
    (lambda q, k, v: learn.chunked_vs_recurrent(q, k, v, chunk=0), "chunk"),
    (lambda q, k, v: learn.chunked_vs_recurrent(q, k, v[:3]), "v must have one row per position"),
    (lambda q, k, v: learn.mixer_gallery(length=65), "length"),
    (lambda q, k, v: learn.mixer_gallery(d_model=30, n_heads=4), "divide"),
    (lambda q, k, v: learn.mixer_gallery(head=2, n_heads=2), "head"),
    (lambda q, k, v: learn.mixer_gallery(params={"nope": {}}), "unknown mixers"),
    (lambda q, k, v: learn.mixer_gallery(params={"sliding_window": {"window": 0}}), "sliding_window"),
    (lambda q, k, v: learn.mixer_gallery(params={"lightning": {"decay": [0.5]}}), "lightning"),
    (lambda q, k, v: learn.cost_curves(lengths=()), "lengths"),
    (lambda q, k, v: learn.cost_curves(lengths=(0,)), "length"),
    (lambda q, k, v: learn.compare_figure({}), "empty"),
    (lambda q, k, v: learn.gallery_figure({}), "empty"),
    (lambda q, k, v: learn.cost_figure([]), "empty"),
])
def test_bad_inputs(call, message):
    q, k, v = learn.toy_qkv(length=6, dim=4)
    with pytest.raises(ValueError) as err:
        call(q, k, v)
    assert message in str(err.value)
