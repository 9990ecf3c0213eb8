"""The PPO loop on the tiny pipeline's models: it moves the policy towards what the reward
favours, and a killed-and-resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY

from picochat.config import build_config, parse_overrides
from picochat.core.chat import render_prompt
from picochat.core.rollout import layout, response_logprobs
from picochat.train.ppo import PPOTrainer

PROMPTS = ["What is 2 + 3?", "Where does Mira live?", "Tell me a story.", "米拉住在哪里？",
           "What is 10 + 20?", "Who is your friend?", "Hello!", "What is 7 + 1?"]


def _setup(run_dir, tmp_path, iterations: int, epochs: int = 2, **extra):
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p, "chosen": "a", "rejected": "b"}, ensure_ascii=False) + "\n"
                                    for p in PROMPTS), encoding="utf-8")
    overrides = {
        "ppo.init": str(run_dir / "sft"), "ppo.reward_model": str(run_dir / "rm"), "ppo.prompts": str(prompts_file),
        "ppo.rollout_prompts": 8, "ppo.minibatch_size": 4, "ppo.epochs": epochs, "ppo.max_new_tokens": 8,
        "ppo.kl_coef": 0.0, "ppo.train.lr": 3e-3, "ppo.train.lr_warmup_steps": 1, "ppo.train.max_steps": iterations,
        "ppo.train.ckpt_every": 1, "ppo.train.precision": "fp32", "ppo.eval_prompts": 0,
        # PPO with a value model on every parameter and no entropy term, unless a test asks otherwise
        # (tiny.yaml's default is best-of-4 on the norm gains with an entropy penalty)
        "ppo.advantage": "gae", "ppo.samples_per_prompt": 1, "ppo.trainable": "all",
        "ppo.entropy_coef": 0.0, "ppo.entropy_rows": "all",
        **{f"ppo.{k}": v for k, v in extra.items()},
    }
    base = parse_overrides(TINY)
    cfg = build_config("tiny", overrides={**base, **overrides})
    return cfg


def _first_token_logprobs(trainer) -> torch.Tensor:
    """log π(first answer token | prompt) over the vocabulary: (n_prompts, V)."""
    tok = trainer.tokenizer
    prompt_ids = [render_prompt(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    ids, attn, _, P = layout(prompt_ids, [[tok.pad_id]] * len(PROMPTS), tok.pad_id)
    with torch.no_grad():
        _, logits = response_logprobs(trainer.policy, ids, attn, P, 1.0)
    return logits[:, 0].log_softmax(-1)


def _targets(trainer) -> dict[str, set[int]]:
    """The 40 first answer tokens the starting policy likes best, per prompt: what our reward
    favours (together likely enough to be sampled, so the reward has signal)."""
    top = _first_token_logprobs(trainer).topk(40, dim=-1).indices
    return {p: set(top[i].tolist()) for i, p in enumerate(PROMPTS)}


def _mean_logprob(trainer, targets) -> float:
    """Mean over prompts of log π(first token is one of the favoured ones)."""
    lp = _first_token_logprobs(trainer)
    return float(torch.stack([lp[i, sorted(targets[p])].logsumexp(0) for i, p in enumerate(PROMPTS)]).mean())


def _reward_for(targets):
    def score(rollout):
        first = rollout.response_ids[:, 0].tolist()
        s = torch.tensor([1.0 if first[i] in targets[p[-1]["content"]] else -1.0
                          for i, p in enumerate(rollout.prompts)])
        return s, s

    return score


def test_ppo_raises_the_probability_of_the_rewarded_response(run_dir, tmp_path):
    cfg = _setup(run_dir, tmp_path, iterations=10, epochs=4)
    trainer = PPOTrainer(cfg, tmp_path / "out", show_progress=False)
    targets = _targets(trainer)
    before = _mean_logprob(trainer, targets)
    trainer._score = _reward_for(targets)
    assert trainer.fit()
    after = _mean_logprob(trainer, targets)
    assert after > before + 0.1, (before, after)  # measured: -1.63 -> -1.43 (p 0.20 -> 0.24)
    assert len(trainer.metrics.read()) == 10


GROUP = {"advantage": "rloo", "samples_per_prompt": 4, "rollout_prompts": 4}


def test_group_rollouts_raise_the_probability_of_each_groups_best_answer(run_dir, tmp_path):
    """RLOO: 4 answers per prompt, each against the mean of the other 3; no value model is built."""
    cfg = _setup(run_dir, tmp_path, iterations=10, epochs=4, **GROUP)
    trainer = PPOTrainer(cfg, tmp_path / "out", show_progress=False)
    assert trainer.value is None and trainer.trained_models() == [trainer.policy]
    targets = _targets(trainer)
    before = _mean_logprob(trainer, targets)
    trainer._score = _reward_for(targets)
    assert trainer.fit()
    after = _mean_logprob(trainer, targets)
    assert after > before + 0.1, (before, after)
    record = trainer.metrics.read()[-1]
    assert "value_loss" not in record and "explained_variance" not in record
    assert not (tmp_path / "out" / "ppo" / "checkpoint" / "value").exists()


def test_norms_only_rl_changes_only_the_norm_gains_and_still_learns(run_dir, tmp_path):
    """ppo.trainable=norms: the RMSNorm gains move (and the rewarded answers get likelier); every
    matrix stays byte for byte the SFT model's, in the trainer and in the saved checkpoint."""
    cfg = _setup(run_dir, tmp_path, iterations=10, epochs=4, trainable="norms", **GROUP)
    cfg.ppo.train.lr = 3e-2
    trainer = PPOTrainer(cfg, tmp_path / "out", show_progress=False)
    start = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    norms = {n for n, m in trainer.policy.named_modules() if type(m).__name__ == "RMSNorm"}
    assert trainer.n_trainable == sum(start[f"{n}.weight"].numel() for n in norms)
    targets = _targets(trainer)
    before = _mean_logprob(trainer, targets)
    trainer._score = _reward_for(targets)
    assert trainer.fit()
    assert _mean_logprob(trainer, targets) > before + 0.05
    for name, value in trainer.policy.state_dict().items():
        changed = not torch.equal(value, start[name])
        assert changed == (name.removesuffix(".weight") in norms), name
    resumed = PPOTrainer(cfg, tmp_path / "out", show_progress=False)  # the checkpoint keeps the frozen part
    assert resumed.try_resume()
    for name, value in resumed.policy.state_dict().items():
        assert torch.equal(value, trainer.policy.state_dict()[name]), name


@pytest.mark.parametrize("entropy", [{}, {"entropy_coef": -0.05, "entropy_rows": "reinforced"}],
                         ids=["no-entropy-term", "entropy-of-reinforced-rows"])
def test_rows_without_advantage_are_left_out_of_the_update_with_the_same_result(run_dir, tmp_path, monkeypatch,
                                                                                entropy):
    """advantage=best gives 3 of every 4 rows advantage 0: the update skips them (fewer rows
    through the policy) and ends with the weights of the update that computes them, also with an
    entropy term that reads only the reinforced rows."""
    import picochat.train.ppo as ppo_module

    cfg = _setup(run_dir, tmp_path, iterations=2, epochs=2, advantage="best", samples_per_prompt=4,
                 rollout_prompts=4, minibatch_size=8, **entropy)
    rows_forwarded, weights = {}, {}
    real = ppo_module.response_logprobs
    for skip in (True, False):
        trainer = PPOTrainer(cfg, tmp_path / f"out_{skip}", show_progress=False)
        assert trainer.skip_idle_rows  # best, no value model, KL in the reward, no entropy term on idle rows
        trainer.skip_idle_rows = skip
        seen = []

        def counting(model, ids, *args, seen=seen, **kwargs):
            if torch.is_grad_enabled():  # the update's forwards, not the rollout's old log-probs
                seen.append(ids.shape[0])
            return real(model, ids, *args, **kwargs)

        monkeypatch.setattr(ppo_module, "response_logprobs", counting)
        assert trainer.fit()
        rows_forwarded[skip], weights[skip] = sum(seen), trainer.policy.state_dict()
    assert rows_forwarded[False] == 2 * 2 * 16  # iterations x epochs x rows
    assert rows_forwarded[True] <= rows_forwarded[False] // 2, rows_forwarded
    for name, value in weights[True].items():
        torch.testing.assert_close(value, weights[False][name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(v, PPOTrainer(cfg, tmp_path / "fresh", show_progress=False).policy.state_dict()[k])
               for k, v in weights[True].items())  # and the update did move the policy


def test_a_toy_reward_is_learned_in_a_few_iterations(run_dir, tmp_path):
    """'Answer in digits' as the whole reward (the share of an answer's characters that are
    digits): the reward of the rollouts rises within a few iterations, with GRPO and the KL as a
    loss term (kl_coef 0 here, so only the reward moves the policy)."""
    cfg = _setup(run_dir, tmp_path, iterations=8, epochs=2, advantage="grpo", samples_per_prompt=4,
                 rollout_prompts=8, kl_penalty="loss", max_new_tokens=16, no_eos_penalty=0.0)
    trainer = PPOTrainer(cfg, tmp_path / "out", show_progress=False)
    trainer.reward_fn = lambda prompts, texts, finished: [sum(c.isdigit() for c in t) / max(1, len(t)) for t in texts]
    assert trainer.fit()
    rewards = [r["reward"] for r in trainer.metrics.read()]
    assert sum(rewards[-2:]) / 2 > 2 * sum(rewards[:2]) / 2 + 0.05, rewards


def test_ppo_kill_and_resume_equals_uninterrupted(run_dir, tmp_path):
    _kill_and_resume_equals_uninterrupted(run_dir, tmp_path, {})


def test_group_rollout_kill_and_resume_equals_uninterrupted(run_dir, tmp_path):
    _kill_and_resume_equals_uninterrupted(run_dir, tmp_path, GROUP)


def _kill_and_resume_equals_uninterrupted(run_dir, tmp_path, extra: dict):
    cfg = _setup(run_dir, tmp_path, iterations=4, **extra)
    full = PPOTrainer(cfg, tmp_path / "full", show_progress=False)
    targets = _targets(full)
    full._score = _reward_for(targets)
    full.fit()

    cfg_half = _setup(run_dir, tmp_path, iterations=2, **extra)
    first = PPOTrainer(cfg_half, tmp_path / "resumed", show_progress=False)
    first._score = _reward_for(targets)
    first.fit()  # stops after 2 iterations with a checkpoint, as a killed run would have
    # A checkpoint written before PPO saved through picochat.core.checkpoint had no "step": it resumes too.
    state_file = tmp_path / "resumed" / "ppo" / "checkpoint" / "trainer_state.pt"
    assert (state_file.parent / "value" / "model.safetensors").exists() == (full.value is not None)
    state = torch.load(state_file, weights_only=True)
    assert state.pop("step") == state["iteration"] == 2
    torch.save(state, state_file)
    second = PPOTrainer(cfg, tmp_path / "resumed", show_progress=False)
    second._score = _reward_for(targets)
    second.fit()
    keys = ("reward", "kl", "policy_loss", "entropy", "response_length") + (("value_loss",) if full.value else ())
    a = [[r[k] for k in keys] for r in full.metrics.read()]
    b = [[r[k] for k in keys] for r in second.metrics.read()]
    assert a == b
    for (name, p), q in zip(full.policy.state_dict().items(), second.policy.state_dict().values()):
        assert torch.equal(p, q), name


def test_ppo_ptx_adds_a_pretraining_loss(run_dir, tmp_path):
    cfg = _setup(run_dir, tmp_path, iterations=1)
    cfg.ppo.ptx_coef, cfg.ppo.ptx_data = 0.5, str(run_dir / "pretrain" / "data")
    trainer = PPOTrainer(cfg, tmp_path / "ptx", show_progress=False)
    assert trainer.fit()
    record = trainer.metrics.read()[-1]
    assert 0 < record["ptx_loss"] < 20
