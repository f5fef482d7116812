"""The perturbation experiment of arXiv 2510.13554 section 4 (analyses.perturbation)."""

import json
import math

import pytest
import torch

from analyses import perturbation as P
from studio.model import build_model
from studio.presets import preset


# ---- jaccard, choose_positions, perturb, sign_test ---------------------------------------------------
def test_jaccard_crafted_cases():
    assert P.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert P.jaccard([1, 1, 2], [2, 1]) == 1.0  # sets: order and repeats do not matter
    assert P.jaccard([], []) == 1.0
    assert P.jaccard([], [5]) == 0.0
    assert P.jaccard([1, 2], [3, 4]) == 0.0
    assert P.jaccard(torch.tensor([7, 8]), [8]) == pytest.approx(0.5)


def test_choose_positions_top_and_bottom_within_the_region():
    fai = torch.tensor([9.0, 0.5, 3.0, 1.0, 7.0, 2.0, 7.0, 0.1])
    # region [1, 7): values 0.5 3 1 7 2 7 at positions 1..6; position 0 (9.0) and 7 (0.1) are outside
    assert P.choose_positions(fai, 1, 7, 2, largest=True) == [4, 6]
    assert P.choose_positions(fai, 1, 7, 3, largest=True) == [2, 4, 6]
    assert P.choose_positions(fai, 1, 7, 2, largest=False) == [1, 3]
    assert P.choose_positions(fai, 1, 7, 1, largest=True) == [4]  # tie 7 vs 7: the earlier position
    assert P.choose_positions(fai, 1, 7, 0) == []
    assert P.choose_positions(fai, 1, 7, 50) == [1, 2, 3, 4, 5, 6]
    with_nan = torch.tensor([1.0, math.nan, 0.0, 2.0])
    assert P.choose_positions(with_nan, 0, 4, 1, largest=True) == [3]
    assert P.choose_positions(with_nan, 0, 4, 1, largest=False) == [2]


def test_perturb_changes_exactly_the_chosen_positions_and_is_seeded():
    tokens = torch.arange(20) % 7
    pool = P.replacement_pool(50, exclude=[0, 1, 2])
    assert pool.tolist() == list(range(3, 50))
    positions = [2, 5, 11, 17]
    out = P.perturb(tokens, positions, pool, seed=3)
    changed = (out != tokens).nonzero().reshape(-1).tolist()
    assert changed == positions
    assert all(int(out[p]) in pool.tolist() for p in positions)
    assert torch.equal(out, P.perturb(tokens, positions, pool, seed=3))
    assert not torch.equal(out, P.perturb(tokens, positions, pool, seed=4))
    assert torch.equal(tokens, torch.arange(20) % 7)  # the input is left alone
    # the replacement always differs: a pool of {original, other} must give the other
    assert P.perturb(torch.tensor([4, 4]), [1], torch.tensor([4, 9]), seed=0).tolist() == [4, 9]
    with pytest.raises(ValueError):
        P.perturb(torch.tensor([4, 4]), [0], torch.tensor([4]), seed=0)


def test_sign_test():
    assert P.sign_test(3, 0) == pytest.approx(0.25)
    assert P.sign_test(0, 0) == 1.0
    assert P.sign_test(5, 5) == 1.0
    assert P.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)


# ---- a crafted model: the continuation depends only on one position ----------------------------------
KEY = 7  # the position the crafted continuation reads


def crafted_rhythm(tokens, response_start):
    fai = torch.linspace(0.1, 0.2, tokens.numel())  # smooth ramp, low everywhere ...
    fai[KEY] = 5.0  # ... except a single anchor at KEY
    return fai


def crafted_continue(prefixes, n_new):
    return [torch.full((n_new,), int(row[KEY])) for row in prefixes]


def test_perturbing_the_top_fai_position_changes_a_continuation_that_reads_it():
    tokens = torch.arange(30)
    trial = P.perturbation_trial(crafted_rhythm, crafted_continue, tokens, response_start=4, k=1, split=0.5,
                                 vocab_size=100, random_control=True, decode=lambda ids: " ".join(map(str, ids)))
    assert trial.cut == 4 + 13 and trial.n_new == 30 - 17 and trial.answer_length == 26
    assert trial.top_positions == [KEY]
    assert trial.bottom_positions == [4]  # the lowest of the ramp in [4, 17)
    assert trial.jaccard_top == 0.0 and trial.jaccard_bottom == 1.0
    assert trial.continuations["reference"] == [KEY] * trial.n_new
    assert trial.continuations["top"] != trial.continuations["reference"]
    assert trial.texts["reference"] == " ".join([str(KEY)] * trial.n_new)
    assert not trial.reference_matches_original  # the crafted continuation is not the original tail
    assert len(trial.random_positions) == 1 and 4 <= trial.random_positions[0] < 17

    sequences = [(torch.arange(30) + i, 4) for i in range(3)] + [(torch.arange(6), 4)]  # the last: 1 candidate
    summary = P.perturbation_experiment(crafted_rhythm, crafted_continue, sequences, k=1, vocab_size=100)
    assert summary.n_trials == 3 and len(summary.skipped) == 1 and summary.skipped[0]["index"] == 3
    assert summary.mean_top == 0.0 and summary.mean_bottom == 1.0 and summary.mean_random is None
    assert summary.frac_top_lower == 1.0 and summary.frac_ties == 0.0
    assert summary.sign_test_p == pytest.approx(0.25) and summary.mean_difference == 1.0
    json.dumps(summary.to_dict())


def test_trial_rejects_a_region_too_small_for_disjoint_top_and_bottom():
    with pytest.raises(P.TooShort):
        P.perturbation_trial(crafted_rhythm, crafted_continue, torch.arange(12), 4, k=3, vocab_size=100)
    with pytest.raises(ValueError):
        P.perturbation_trial(crafted_rhythm, crafted_continue, torch.arange(30), 4, k=1)  # no pool, no vocab


# ---- a tiny studio model with random weights ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    model = build_model(preset("small-softmax", vocab_size=64), seed=0).eval()
    continue_fn = P.model_continue_fn(model)
    prompts = [torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    sequences = P.generate_answers(continue_fn, prompts, max_new_tokens=32)
    return model, continue_fn, sequences


def test_full_trial_on_a_tiny_studio_model(tiny):
    model, continue_fn, sequences = tiny
    rhythm_fn = P.model_rhythm_fn(model, h_hi=None)
    tokens, start = sequences[0]
    assert tokens.numel() == 40 and start == 8

    unchanged = P.perturbation_trial(rhythm_fn, continue_fn, tokens, start, k=0, vocab_size=64)
    assert unchanged.jaccard_top == 1.0 and unchanged.jaccard_bottom == 1.0
    assert unchanged.top_positions == [] and unchanged.bottom_positions == []

    trial = P.perturbation_trial(rhythm_fn, continue_fn, tokens, start, k=3, split=0.5, seed=1, vocab_size=64,
                                 random_control=True)
    assert trial.cut == 8 + 16 and trial.n_new == 16
    for positions in (trial.top_positions, trial.bottom_positions, trial.random_positions):
        assert len(positions) == 3 and all(start <= p < trial.cut for p in positions)
    assert not set(trial.top_positions) & set(trial.bottom_positions)
    assert min(trial.top_fai) >= max(trial.bottom_fai)
    for name in ("reference", "top", "bottom", "random"):
        assert len(trial.continuations[name]) == 16
    for value in (trial.jaccard_top, trial.jaccard_bottom, trial.jaccard_random):
        assert 0.0 <= value <= 1.0
    again = P.perturbation_trial(rhythm_fn, continue_fn, tokens, start, k=3, split=0.5, seed=1, vocab_size=64,
                                 random_control=True)
    assert again.to_dict() == trial.to_dict()  # seeded and greedy: reproducible

    prefix = P.perturbation_trial(rhythm_fn, continue_fn, tokens, start, k=2, vocab_size=64, fai_scope="prefix")
    assert all(start <= p < trial.cut - 10 for p in prefix.top_positions + prefix.bottom_positions)

    summary = P.perturbation_experiment(rhythm_fn, continue_fn, sequences, k=2, vocab_size=64, random_control=True)
    assert summary.n_trials == 2 and summary.settings["k"] == 2 and summary.settings["fai_scope"] == "full"
    assert summary.mean_top == pytest.approx(sum(t.jaccard_top for t in summary.trials) / 2)
    assert 0.0 <= summary.frac_top_lower + summary.frac_ties <= 1.0
    assert summary.mean_random is not None
    json.loads(json.dumps(summary.to_dict()))
