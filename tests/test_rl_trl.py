"""studio.rl.trl_adapter: rhythm credit + studio losses inside TRL's GRPOTrainer (CPU, tiny Llama, offline)."""

from __future__ import annotations

import math

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'trl==1.16.0', the studio's [rl] extra)")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from analyses.rhythm import _from_patterns  # noqa: E402
from analyses.metrics import select_layers  # noqa: E402
from studio.rl import credit as credit_lib  # noqa: E402
from studio.rl.losses import cispo_loss, grpo_loss  # noqa: E402
from studio.rl.trl_adapter import (  # noqa: E402
    CreditGRPOTrainer,
    credit_gamma_from_attentions,
    credit_policy_loss,
    rhythms_from_attentions,
    verl_policy_loss,
)

WORDS = "the a one two three four five six seven eight nine ten plus minus is answer yes no red blue".split()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_llama(tokenizer, attn="eager", layers=3, dtype=torch.float32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, attn_implementation=attn)
    return LlamaForCausalLM(cfg).to(dtype)


def grpo_config(tmp_path, **overrides):
    from trl import GRPOConfig

    kwargs = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, num_generations=2,
                  max_completion_length=6, learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
                  save_strategy="no", seed=0, temperature=1.0, disable_tqdm=True)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def prompts():
    return datasets.Dataset.from_dict({"prompt": ["one plus two is", "three minus one is", "two plus two is",
                                                  "the answer is"]})


def length_reward(completions, **kwargs):
    return [float(len(c.split())) + 0.1 * len(c) for c in completions]


# ------------------------------------------------------------------------------------ gamma from HF attentions


def test_rhythm_from_hf_attentions_matches_analyses_and_ignores_padding():
    """Rhythm of a left-padded prompt + right-padded completion batch equals analyses.rhythm._from_patterns on
    each row's own unpadded forward; gamma equals studio.rl.credit.gamma of that rhythm."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, layers=4).eval()  # float32: float64 Llama gives NaN with padding (transformers)
    g = torch.Generator().manual_seed(1)
    pad = tokenizer.pad_token_id
    # row 0: prompt 3 tokens (2 pads on the left), completion 9 (1 pad on the right); row 1: 5 and 10
    prompt_ids = torch.randint(4, len(tokenizer), (2, 5), generator=g)
    completion_ids = torch.randint(4, len(tokenizer), (2, 10), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    completion_mask = torch.ones_like(completion_ids)
    prompt_mask[0, :2] = 0
    prompt_ids[0, :2] = pad
    completion_mask[0, 9:] = 0
    completion_ids[0, 9:] = pad
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
    params = dict(window=4, h_lo=2, h_hi=6)
    rhythms = rhythms_from_attentions(out.attentions, ids, mask, prompt_mask.sum(1), **params)
    layers = select_layers(4)
    gamma, _ = credit_gamma_from_attentions(out.attentions, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                            "coupled", {"amp": 2.0}, params)
    for row in range(2):
        real = ids[row][mask[row].bool()]
        start = int(prompt_mask[row].sum())
        with torch.no_grad():
            single = model(input_ids=real[None], output_attentions=True, use_cache=False)
        patterns = {layer: single.attentions[layer][0].to(torch.float64) for layer in layers}
        ref = _from_patterns(patterns, single.logits[0], real, start, layers, 0.3, 4, 2, 6, 0.4, torch.float64)
        got = rhythms[row]
        assert got.layers == ref.layers and got.response_start == ref.response_start == start
        assert got.local_heads == ref.local_heads and got.global_heads == ref.global_heads
        for name in ("waad", "waad_delta", "fai"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
        assert torch.equal(got.preplan, ref.preplan) and torch.equal(got.anchors, ref.anchors)
        expected = credit_lib.gamma(ref, "coupled", amp=2.0)[0, start:]
        n_completion = int(completion_mask[row].sum())
        torch.testing.assert_close(gamma[row, :n_completion], expected.to(gamma.dtype))
        assert bool((gamma[row, n_completion:] == 1).all())
        assert bool((gamma[row] > 1).any())


def test_credit_none_and_errors():
    tokenizer = tiny_tokenizer()
    ids = torch.randint(4, len(tokenizer), (1, 4))
    gamma, rhythms = credit_gamma_from_attentions([], ids, torch.ones_like(ids), ids, torch.ones_like(ids), "none")
    assert torch.equal(gamma, torch.ones(1, 4))
    with pytest.raises(ValueError, match="eager"):
        rhythms_from_attentions((), ids, torch.ones_like(ids), [2])


# ------------------------------------------------------------------------------------ the loss


def test_credit_policy_loss_is_the_studio_loss():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=g) > 0.2
    gamma = 1 + (torch.rand(3, 5, generator=g) > 0.5).double() * 0.5
    loss, _ = credit_policy_loss(logp, old, adv, mask)
    ref, _ = cispo_loss(logp, old, adv[:, None].expand(3, 5), mask)
    torch.testing.assert_close(loss, ref)
    loss, _ = credit_policy_loss(logp, old, adv, mask, gamma, policy_loss="grpo", loss_params={"eps": 0.1})
    ref, _ = grpo_loss(logp, old, gamma * adv[:, None], mask, eps=0.1)
    torch.testing.assert_close(loss, ref)
    loss, _ = credit_policy_loss(logp, old, adv, mask, gamma, signs="positive")
    ref, _ = cispo_loss(logp, old, torch.where(adv[:, None] >= 0, gamma * adv[:, None], adv[:, None].expand(3, 5)),
                        mask)
    torch.testing.assert_close(loss, ref)


def test_verl_policy_loss_shapes_and_value():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(2, 4, generator=g)
    old = logp + 0.1 * torch.randn(2, 4, generator=g)
    adv = torch.randn(2, 4, generator=g)
    mask = torch.ones(2, 4)
    fn = verl_policy_loss("cispo", eps_high=0.2, eps_low=0.2)
    loss, metrics = fn(old, logp, adv, mask, "token-mean", None)
    torch.testing.assert_close(loss, cispo_loss(logp, old, adv, mask, eps_high=0.2, eps_low=0.2)[0])
    assert set(metrics) == {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
    assert len(verl_policy_loss("grpo", legacy_tuple=True)(old, logp, adv, mask, "seq-mean-token-mean")) == 4
    with pytest.raises(ValueError, match="loss_agg_mode"):
        fn(old, logp, adv, mask, "seq-mean-token-sum")


# ------------------------------------------------------------------------------------ the trainer


def test_trainer_refuses_sdpa(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, attn="sdpa")
    with pytest.raises(ValueError, match="eager attention"):
        CreditGRPOTrainer(model=model, reward_funcs=length_reward, args=grpo_config(tmp_path),
                          train_dataset=prompts(), processing_class=tokenizer)


@pytest.mark.slow
def test_credit_grpo_trainer_trains_two_steps_on_cpu(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    trainer = CreditGRPOTrainer(
        model=model, reward_funcs=length_reward, args=grpo_config(tmp_path), train_dataset=prompts(),
        processing_class=tokenizer, credit="coupled", credit_params={"amp": 1.5}, credit_signs="both",
        rhythm_params={"window": 4, "h_lo": 1, "h_hi": 8}, policy_loss="cispo",
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    assert trainer.credit_calls == 2
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert math.isfinite(entry["loss"])
        # coupled credit with amp 1.5: gamma in {1, 1.25, 1.5, 1.75} (an anchor that is also an intro gets 1.75)
        assert entry["credit/boosted"] > 0 and 1.25 <= entry["credit/max"] <= 1.75
        assert "studio/clip_frac" in entry and "reward" in entry
    # the credit was applied: some completion token got gamma > 1
    assert trainer.last_gamma is not None and bool((trainer.last_gamma > 1).any())
    assert trainer.model.config._attn_implementation == "eager"
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


@pytest.mark.slow
def test_trainer_loss_with_credit_none_equals_cispo_loss(tmp_path):
    """The override with credit='none' returns exactly studio cispo_loss on TRL's per-token log-probs."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer)
    trainer = CreditGRPOTrainer(model=model, reward_funcs=length_reward, args=grpo_config(tmp_path),
                                train_dataset=prompts(), processing_class=tokenizer, credit="none")
    trainer.current_gradient_accumulation_steps = 1
    g = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(4, len(tokenizer), (2, 4), generator=g)
    completion_ids = torch.randint(4, len(tokenizer), (2, 5), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[1, 0] = 0
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[0, 3:] = 0
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), 5)
    old = (logps.detach() + 0.2 * torch.randn(2, 5, generator=g)).detach()
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": torch.tensor([0.7, -1.1]),
              "old_per_token_logps": old, "num_items_in_batch": completion_mask.sum()}
    trainer.model.train()
    loss = trainer._compute_loss(trainer.model, inputs)
    ref, _ = cispo_loss(logps, old, torch.tensor([[0.7], [-1.1]]).expand(2, 5), completion_mask.bool())
    torch.testing.assert_close(loss, ref)
    assert trainer.credit_calls == 0 and bool((trainer.last_gamma == 1).all())
    # TRL's absolute-cap convention reproduced through loss_params
    trainer.loss_params = {"eps_high": 1.05, "ratio_cap": "absolute"}
    loss = trainer._compute_loss(trainer.model, inputs)
    ratio = torch.exp(logps - old).clamp(max=1.05).detach()
    adv = torch.tensor([[0.7], [-1.1]])
    trl_style = -(ratio * adv * logps * completion_mask).sum() / completion_mask.sum()
    torch.testing.assert_close(loss, trl_style)
