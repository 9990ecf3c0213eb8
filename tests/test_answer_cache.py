"""The answer cache: the SFT model's held-out answers are sampled once per run and read back by the
PPO and DPO stages; a changed model or setting misses it."""

from __future__ import annotations

import json

import pytest
import torch

import picochat.eval.gold_eval as gold_eval
from picochat.config import build_config
from picochat.core.generate import SamplingConfig
from picochat.core.precision import resolve_precision
from picochat.eval.answer_cache import AnswerCache, weights_digest
from picochat.eval.gold_eval import evaluate_gold, held_out_subset
from picochat.eval.policy_eval import world_test_examples
from picochat.layout import answer_cache_dir, load_model_and_tokenizer, world_file
from picochat.world import GoldScorer, read_chat_examples, read_world


@pytest.fixture()
def sft(run_dir):
    model, tokenizer, _ = load_model_and_tokenizer(run_dir / "sft", "cpu")
    return model, tokenizer, world_test_examples(run_dir, 6), GoldScorer(read_world(world_file(run_dir))[0])


def _no_sampling(*args, **kwargs):
    raise AssertionError("sampled although the cache holds these answers")


def test_a_second_evaluation_reads_the_first_ones_answers(sft, tmp_path, monkeypatch):
    model, tokenizer, examples, scorer = sft
    kwargs = dict(precision="fp32", max_new_tokens=12, n_samples=2, seed=3, cache_dir=tmp_path)
    first = evaluate_gold(model, tokenizer, examples, scorer, **kwargs)
    assert first == evaluate_gold(model, tokenizer, examples, scorer, **{**kwargs, "cache_dir": None})
    assert len(list(tmp_path.glob("*.json"))) == 2  # greedy, T=1 samples

    monkeypatch.setattr(gold_eval, "answer_token_prompts", _no_sampling)
    assert evaluate_gold(model, tokenizer, examples, scorer, **kwargs) == first
    # another seed, answer length or number of samples is another question
    for changed in ({"seed": 4}, {"max_new_tokens": 11}, {"n_samples": 3}):
        with pytest.raises(AssertionError, match="sampled although"):
            evaluate_gold(model, tokenizer, examples, scorer, **{**kwargs, **changed})


def test_other_weights_or_settings_are_other_entries(sft):
    model, tokenizer, _, _ = sft
    prompts, sampling = [[1, 2, 3], [4, 5]], SamplingConfig(max_new_tokens=8, temperature=1.0, seed=0)
    digest = weights_digest(model)
    key = AnswerCache.key(model, digest, prompts, sampling, "fp32", 64)
    assert key == AnswerCache.key(model, weights_digest(model), prompts, sampling, "fp32", 64)
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-6  # one weight, barely
    assert weights_digest(model) != digest
    others = [AnswerCache.key(model, weights_digest(model), prompts, sampling, "fp32", 64),
              AnswerCache.key(model, digest, [[1, 2, 3], [4, 6]], sampling, "fp32", 64),
              AnswerCache.key(model, digest, prompts, SamplingConfig(max_new_tokens=8, temperature=0.9, seed=0),
                              "fp32", 64),
              AnswerCache.key(model, digest, prompts, sampling, "bf16", 64),
              AnswerCache.key(model, digest, prompts, sampling, "fp32", 32)]
    assert len({key, *others}) == 1 + len(others)


def test_a_damaged_or_short_entry_is_a_miss(tmp_path):
    cache = AnswerCache(tmp_path)
    cache.put("k", [("an answer", True), ("another", False)])
    assert cache.get("k", 2) == [("an answer", True), ("another", False)]
    assert cache.get("k", 3) is None and cache.get("absent", 2) is None
    (tmp_path / "k.json").write_text('{"answers": [["an ans', encoding="utf-8")
    assert cache.get("k", 2) is None


def test_dpo_reads_the_answers_ppo_sampled_of_the_model_both_start_from(run_dir):
    """Each answer file of the shared run was written once. The SFT stage evaluates at its own
    settings (12 prompts, 2 samples, in the tests); PPO and DPO at the same settings as each other,
    so DPO reads the SFT model's answers that PPO sampled. (With the presets' defaults all three
    stages evaluate alike and PPO reads the SFT stage's.) The report's answers are at its own
    settings: the four models' greedy and T=1 answers and the SFT model's best-of-n samples."""
    entries = list(answer_cache_dir(run_dir).glob("*.json"))
    sft_done, ppo_done, dpo_done = ((run_dir / s / "summary.json").stat().st_mtime for s in ("sft", "ppo", "dpo"))
    assert sum(e.stat().st_mtime <= sft_done for e in entries) == 4  # SFT and pretrained: greedy, T=1
    assert sum(sft_done < e.stat().st_mtime <= ppo_done for e in entries) == 4  # the policy and SFT
    assert sum(ppo_done < e.stat().st_mtime <= dpo_done for e in entries) == 2  # the DPO policy's alone
    assert sum(e.stat().st_mtime > dpo_done for e in entries) == 4 * 2 + 1
    ppo, dpo = (json.loads((run_dir / s / "summary.json").read_text()) for s in ("ppo", "dpo"))
    assert dpo["gold_sft"] == ppo["gold_sft"]


def test_the_saved_sft_model_reads_the_answers_the_sft_stage_gave(run_dir, monkeypatch):
    """The SFT stage evaluates its model in memory; a later stage loads it from disk. Both are the
    same weights bit for bit, so the later stage reads the SFT stage's answers (at equal settings)."""
    model, tokenizer, _ = load_model_and_tokenizer(run_dir / "sft", "cpu")
    scfg = build_config(preset=None, base_file=run_dir / "config.yaml").sft
    examples = held_out_subset(read_chat_examples(run_dir / "world" / "chat_test.jsonl"), scfg.eval_prompts)
    monkeypatch.setattr(gold_eval, "answer_token_prompts", _no_sampling)
    result = evaluate_gold(model, tokenizer, examples, GoldScorer(read_world(world_file(run_dir))[0]),
                           precision=resolve_precision(scfg.train.precision, torch.device("cpu")),
                           max_new_tokens=scfg.eval_max_new_tokens, n_samples=scfg.eval_samples,
                           seed=scfg.train.seed, cache_dir=answer_cache_dir(run_dir))
    sft = json.loads((run_dir / "sft" / "summary.json").read_text())
    assert (result["greedy"], result["sampled"]) == (sft["gold_score"], sft["gold_score_sampled"])
