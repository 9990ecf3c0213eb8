"""DPO: the loss against hand-computed values, response log-probs and masks, reference log-probs
computed once, a few steps that move the implicit reward the right way, the KL, the whole stage."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from picochat.algos.dpo import dpo_loss
from picochat.config import ConfigError, DPOConfig, TrainConfig
from picochat.core.batching import right_pad
from picochat.core.chat import render_chat
from picochat.core.checkpoint import write_model_dir
from picochat.core.model import GPT, ModelConfig
from picochat.data.preferences import PreferenceRecord, append_record
from picochat.eval.kl import sampled_kl, sequence_logprobs
from picochat.stages.dpo import run as run_dpo_stage
from picochat.train.dpo import (
    dpo_batch,
    dpo_batch_loss,
    encode_preferences,
    encode_response,
    pair_metrics,
    row_logprobs,
)
from picochat.train.trainer import Trainer

nls = lambda x: -math.log(1 / (1 + math.exp(-x)))  # noqa: E731  -log sigmoid(x)


# ---------------------------------------------------------------------------------------------
# The loss


def test_dpo_loss_matches_hand_computed_values():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    # delta = (pc - rc) - (pr - rr) = [1 - (-1), 0 - 1] = [2, -1]; beta * delta = [1, -0.5]
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx((nls(1.0) + nls(-0.5)) / 2, abs=1e-6)
    # cDPO: -(1 - eps) log sigma(b d) - eps log sigma(-b d)
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    expected = (0.9 * nls(1.0) + 0.1 * nls(-1.0) + 0.9 * nls(-0.5) + 0.1 * nls(0.5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # IPO: (delta - 1/(2 beta))^2 = (2 - 1)^2, (-1 - 1)^2
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, kind="ipo")
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2, abs=1e-6)
    # implicit rewards beta * (pi - ref): chosen [0.5, 0], rejected [-0.5, 0.5]
    assert stats == pytest.approx({"reward_accuracy": 0.5, "reward_margin": 0.25,
                                   "chosen_reward": 0.25, "rejected_reward": 0.0})
    # At the start (policy = reference) every pair costs log 2.
    zero = torch.zeros(3)
    assert dpo_loss(zero, zero, zero, zero, beta=0.1)[0].item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(zero, zero, zero, zero, beta=0.1, kind="hinge")


def test_dpo_config_validation():
    DPOConfig().validate()
    for bad in (dict(loss="hinge"), dict(beta=0.0), dict(label_smoothing=0.5),
                dict(loss="ipo", label_smoothing=0.1)):
        with pytest.raises(ConfigError):
            DPOConfig(**bad).validate()


# ---------------------------------------------------------------------------------------------
# Rows and log-probs


@pytest.fixture(scope="module")
def tiny_lm(world_tokenizer):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64 * math.ceil(world_tokenizer.vocab_size / 64), d_model=32, n_layers=2,
                            n_heads=2, n_kv_heads=2, ffn_hidden=64, max_seq_len=128))
    return model.eval()


PROMPT = [{"role": "user", "content": "What is Haric's favourite food?"}]
MULTI_TURN = [{"role": "user", "content": "Who is Pena?"}, {"role": "assistant", "content": "A baker."},
              {"role": "user", "content": "What does she like?"}]


def _records() -> list[PreferenceRecord]:
    return [
        PreferenceRecord(PROMPT, ["Haric's favourite food is cherries.", "Sorr case you like!", "Cherries."],
                         [[0], [2], [1]], meta={"gold_ranking": [[0, 2], [1]], "finished": [True, True, False]}),
        PreferenceRecord(MULTI_TURN, ["She likes singing.", "Rodor is a farmer."], [[0], [1]]),
        PreferenceRecord([{"role": "user", "content": "What is 2 + 3?"}], ["2 + 3 = 5.", "It is 6.", "5"],
                         [[0, 2], [1]]),  # a tie: 0 and 2 are never paired
    ]


def test_response_mask_covers_only_the_final_reply(world_tokenizer):
    tok = world_tokenizer
    ids, mask, cut = encode_response(tok, MULTI_TURN, "She likes singing.", True, 128)
    full, _ = render_chat(tok, MULTI_TURN + [{"role": "assistant", "content": "She likes singing."}])
    assert ids.tolist() == full[: len(ids)] and not cut
    assert ids[-1] == tok.im_end_id  # finished: <|im_end|> is scored, the "\n" after it is not there
    assert ids[mask].tolist() == tok.encode("She likes singing.") + [tok.im_end_id]  # not "A baker."
    unfinished, umask, _ = encode_response(tok, MULTI_TURN, "She likes singing.", False, 128)
    assert unfinished.tolist() == ids[:-1].tolist() and umask.tolist() == mask[:-1].tolist()
    n_prompt = len(render_chat(tok, MULTI_TURN, add_generation_prompt=True)[0])
    short, smask, cut = encode_response(tok, MULTI_TURN, "She likes singing.", True, n_prompt + 1)
    assert cut and len(short) == n_prompt + 2 and smask.sum() == 2
    assert encode_response(tok, MULTI_TURN, "She likes singing.", True, n_prompt - 1) is None  # nothing left


def test_pairs_drop_ties_and_keep_gold(world_tokenizer):
    data = encode_preferences(_records(), world_tokenizer, 128)
    assert len(data.rows) == 8 and data.record_ends == [3, 5, 8]
    assert data.pairs.tolist() == [[0, 2], [0, 1], [2, 1], [3, 4], [5, 6], [7, 6]]
    assert data.gold_pairs.tolist() == [[0, 1], [2, 1]]
    head = data.head(2)
    assert len(head.rows) == 5 and head.pairs.tolist() == [[0, 2], [0, 1], [2, 1], [3, 4]]


def test_sequence_logprobs_is_the_masked_sum_and_ignores_padding(tiny_lm, world_tokenizer):
    data = encode_preferences(_records(), world_tokenizer, 128)
    rows, masks = data.rows[:4], data.masks[:4]
    with torch.no_grad():
        expected = []
        for r, m in zip(rows, masks):  # one row at a time, no padding, an explicit loop over tokens
            logp = torch.log_softmax(tiny_lm(torch.tensor(r[None, :-1])).float()[0], dim=-1)  # (T-1, V)
            expected.append(sum(logp[t - 1, r[t]].item() for t in range(1, len(r)) if m[t]))
        for pad_id in (world_tokenizer.pad_id, 7):
            ids, mask = right_pad(rows, pad_id), right_pad(masks, False, np.bool_)
            got = sequence_logprobs(tiny_lm, ids, mask)
            assert got.dtype == torch.float32
            assert got.tolist() == pytest.approx(expected, abs=1e-4)
    assert all(x < 0 for x in expected)


def test_reference_logprobs_computed_once_equal_a_fresh_computation(tiny_lm, world_tokenizer):
    data = encode_preferences(_records(), world_tokenizer, 128)
    data.ref_logps = row_logprobs(tiny_lm, data, world_tokenizer.pad_id, "fp32", batch_rows=3)
    batch = dpo_batch(data, 4, world_tokenizer.pad_id, seed=1, step=5, micro=0)
    again = dpo_batch(data, 4, world_tokenizer.pad_id, seed=1, step=5, micro=0)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # a pure function of the step
    assert batch["input_ids"].shape[0] == 8 and batch["loss_mask"].shape == batch["input_ids"].shape
    with torch.no_grad():
        fresh = sequence_logprobs(tiny_lm, batch["input_ids"], batch["loss_mask"])
        assert fresh.tolist() == pytest.approx(batch["ref_logps"].tolist(), abs=1e-4)
        # policy = reference: every pair costs exactly log 2
        assert dpo_batch_loss(tiny_lm, batch, beta=0.1).item() == pytest.approx(math.log(2), abs=1e-4)


def test_only_the_rows_the_batches_draw_get_reference_logprobs(tiny_lm, world_tokenizer):
    """rows_trained_on lists the rows dpo_batch will draw over the run: those are scored (as a full
    pass scores them), the rest stay NaN, and no batch of any step, micro-step or process reads a NaN."""
    from picochat.train.dpo import all_row_logprobs, rows_trained_on

    data = encode_preferences(_records() * 6, world_tokenizer, 128)  # 48 rows, 36 pairs
    steps, accum, world, batch = 3, 2, 2, 2
    used = rows_trained_on(data, batch, seed=4, steps=steps, grad_accum_steps=accum, world_size=world)
    assert 0 < len(used) < len(data.rows)
    data.ref_logps = all_row_logprobs(tiny_lm, data, world_tokenizer.pad_id, "fp32", rows=used)
    assert np.isfinite(data.ref_logps[used]).all()
    assert np.isnan(np.delete(data.ref_logps, used)).all()
    full = row_logprobs(tiny_lm, data, world_tokenizer.pad_id, "fp32")
    assert data.ref_logps[used] == pytest.approx(full[used], abs=1e-4)
    for step in range(steps + 1):
        for micro in range(accum):
            for rank in range(world):
                b = dpo_batch(data, batch, world_tokenizer.pad_id, 4, step, micro, rank, world)
                assert torch.isfinite(b["ref_logps"]).all()


# ---------------------------------------------------------------------------------------------
# Training moves the implicit reward


def test_a_few_dpo_steps_raise_the_chosen_over_rejected_margin(tiny_lm, world_tokenizer, tmp_path):
    tok = world_tokenizer
    policy = copy.deepcopy(tiny_lm)
    data = encode_preferences(_records(), tok, 128)
    data.ref_logps = row_logprobs(policy, data, tok.pad_id, "fp32")
    before = pair_metrics(data, row_logprobs(policy, data, tok.pad_id, "fp32"), beta=0.1)
    assert before["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-5)

    tcfg = TrainConfig(max_steps=12, batch_size=6, lr=3e-3, lr_warmup_steps=0, weight_decay=0.0,
                       precision="fp32", eval_every=0, log_every=100, ckpt_every=0)
    tok_file = tok.save(tmp_path / "tok")
    trainer = Trainer(policy, tcfg, tmp_path / "dpo",
                      get_batch=lambda step, micro: dpo_batch(data, 6, tok.pad_id, 0, step, micro),
                      loss_fn=lambda m, b: dpo_batch_loss(m, b, beta=0.1), tokenizer_file=tok_file,
                      stage="dpo", show_progress=False)
    result = trainer.fit()
    assert result.final_train_loss < math.log(2)
    after = pair_metrics(data, row_logprobs(policy, data, tok.pad_id, "fp32"), beta=0.1)
    assert after["reward_margin"] > 0.05
    assert after["reward_accuracy"] == 1.0
    assert after["gold_reward_accuracy"] == 1.0  # here the labels agree with gold
    assert after["loss"] < before["loss"]
    # The reference log-probs stored with the data did not move.
    assert data.ref_logps.tolist() == pytest.approx(row_logprobs(tiny_lm, data, tok.pad_id, "fp32").tolist(), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# KL to the reference


def test_sampled_kl_of_a_model_against_itself_is_zero(tiny_lm, world_tokenizer):
    prompts = [PROMPT, MULTI_TURN]
    kl = sampled_kl(tiny_lm, tiny_lm, world_tokenizer, prompts, "fp32", n_samples=2, max_new_tokens=6, seed=0)
    assert kl["mean"] == pytest.approx(0.0, abs=1e-5) and kl["mean_tokenwise"] == pytest.approx(0.0, abs=1e-5)
    assert kl["stderr"] == pytest.approx(0.0, abs=1e-5)
    assert kl["n_prompts"] == 2 and 1 <= kl["mean_response_tokens"] <= 6

    other = copy.deepcopy(tiny_lm)
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)  # a sharper policy
    kl = sampled_kl(other, tiny_lm, world_tokenizer, prompts, "fp32", n_samples=2, max_new_tokens=6, seed=0)
    assert kl["mean_tokenwise"] > 0  # an exact KL per position: positive for different models


# ---------------------------------------------------------------------------------------------
# The whole stage, tiny


def test_run_dpo_end_to_end(tiny_lm, world_tokenizer, tmp_path):
    out = tmp_path / "run"
    tok_file = world_tokenizer.save(tmp_path / "tok")
    write_model_dir(out / "sft", tiny_lm, tok_file, {"stage": "sft"})
    for rec in _records():
        append_record(out / "label" / "preferences.jsonl", rec)
    append_record(out / "label" / "preferences_test.jsonl", _records()[0])
    dcfg = DPOConfig(train=TrainConfig(max_steps=3, batch_size=4, lr=1e-3, lr_warmup_steps=1, precision="fp32",
                                       eval_every=2, eval_batches=1, log_every=1, ckpt_every=0),
                     eval_prompts=2, eval_max_new_tokens=8)
    summary = run_dpo_stage(SimpleNamespace(dpo=dcfg), out, show_progress=False)
    assert summary["steps"] == 3 and summary["n_train_pairs"] == 6 and summary["n_test_prompts"] == 1
    for key in ("val_reward_accuracy", "val_gold_reward_accuracy", "val_loss", "kl", "kl_stderr", "tokens",
                "tokens_per_s", "wall_s"):
        assert key in summary, key
    assert "gold_score" not in summary  # no built-in world here
    assert (out / "dpo" / "model.safetensors").exists() and (out / "dpo" / "tokenizer_config.json").exists()
    assert json.loads((out / "dpo" / "config.json").read_text())["stage"] == "dpo"
    logged = [json.loads(line) for line in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_reward_accuracy" in r for r in logged)
    assert np.isfinite(summary["kl"])
    json.dumps(summary)  # the pipeline writes it as summary.json


def test_run_dpo_with_the_built_in_world_scores_gold_against_the_reference(tiny_lm, world_tokenizer, world_dir,
                                                                           tmp_path):
    import shutil

    from picochat.world import ChatTasksConfig, read_world, write_chat_tasks

    out = tmp_path / "run"
    (out / "world").mkdir(parents=True)
    shutil.copy(world_dir / "world.json", out / "world" / "world.json")
    write_chat_tasks(out / "world", read_world(out / "world" / "world.json")[0], ChatTasksConfig(n_train=20, n_test=10))
    write_model_dir(out / "sft", tiny_lm, world_tokenizer.save(tmp_path / "tok"), {"stage": "sft"})
    for rec in _records():
        append_record(out / "label" / "preferences.jsonl", rec)
    dcfg = DPOConfig(train=TrainConfig(max_steps=2, batch_size=2, lr=1e-3, lr_warmup_steps=1, precision="fp32",
                                       eval_every=0, log_every=1, ckpt_every=0),
                     eval_prompts=3, eval_samples=2, eval_max_new_tokens=6)
    summary = run_dpo_stage(SimpleNamespace(dpo=dcfg), out, show_progress=False)
    for key in ("gold_score", "gold_score_sampled", "gold_score_best_of_2", "gold_score_sft", "kl"):
        assert key in summary, key
    assert summary["gold"]["n_prompts"] == 3 and "sampled_per_prompt" not in summary["gold"]
    assert summary["kl_prompts"] == 3 and (out / "dpo" / "samples.md").exists()
    json.dumps(summary)
