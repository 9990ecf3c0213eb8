"""SFT data path: assistant-only targets, padding, and a few steps lowering the assistant loss."""

from __future__ import annotations

import torch
from conftest import SMALL_WORLD

from picochat.config import TrainConfig
from picochat.core.model import GPT, ModelConfig, lm_loss
from picochat.train.sft import IGNORE, make_val_loss, pad_batch, sft_batch, tokenize_conversations
from picochat.train.trainer import Trainer
from picochat.world import ChatTasksConfig, build_world, generate_chat_tasks

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
]


def test_targets_are_the_assistant_tokens_and_end_token_only(world_tokenizer):
    tok = world_tokenizer
    [(ids, mask)], n_cut = tokenize_conversations(tok, [CONV], seq_len=128)
    assert n_cut == 0
    batch = pad_batch([(ids, mask)], tok.pad_id)
    targets = batch["targets"][0]
    learned = [int(t) for t in targets if t != IGNORE]
    assert tok.decode(learned) == "2 + 3 = 5.<|im_end|>"
    # input_ids[t] predicts targets[t]: the token before each learned one is its context.
    assert torch.equal(batch["input_ids"][0], torch.as_tensor(ids[:-1]))


def test_padding_is_right_side_and_ignored(world_tokenizer):
    tok = world_tokenizer
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    examples, _ = tokenize_conversations(tok, [CONV, short], seq_len=128)
    batch = pad_batch(examples, tok.pad_id)
    n_short = len(examples[1][0]) - 1
    assert batch["input_ids"].shape == (2, len(examples[0][0]) - 1)
    assert (batch["input_ids"][1, n_short:] == tok.pad_id).all()
    assert (batch["targets"][1, n_short:] == IGNORE).all()


def test_conversations_longer_than_seq_len_are_cut_and_useless_ones_dropped(world_tokenizer):
    tok = world_tokenizer
    long_user = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    examples, n_cut = tokenize_conversations(tok, [CONV, long_user], seq_len=48)
    assert n_cut == 1 and len(examples) == 1  # the long one lost all its assistant tokens


def test_batches_are_a_pure_function_of_the_step(world_tokenizer):
    examples, _ = tokenize_conversations(world_tokenizer, [CONV] * 3 + [CONV[1:]] * 3, seq_len=64)
    a = sft_batch(examples, 4, world_tokenizer.pad_id, seed=1, step=5, micro=0)
    b = sft_batch(examples, 4, world_tokenizer.pad_id, seed=1, step=5, micro=0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_few_sft_steps_lower_the_assistant_token_loss(tmp_path, world_tokenizer):
    tok = world_tokenizer
    world = build_world(SMALL_WORLD)
    tasks = generate_chat_tasks(world, ChatTasksConfig(n_train=400, n_test=40))
    train = [list(e.messages) for e in tasks if e.split == "train"]
    held_out = [list(e.messages) for e in tasks if e.split == "test"]
    train_ex, _ = tokenize_conversations(tok, train, seq_len=128)
    val_ex, _ = tokenize_conversations(tok, held_out, seq_len=128)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64 * ((tok.vocab_size + 63) // 64), d_model=64, n_layers=2, n_heads=4,
                            n_kv_heads=4, ffn_hidden=160, max_seq_len=128))
    cfg = TrainConfig(max_steps=40, batch_size=8, lr=3e-3, lr_warmup_steps=5, eval_every=0, log_every=5,
                      ckpt_every=0, precision="fp32")
    evaluate = make_val_loss(val_ex, 8, tok.pad_id, 40)
    before = evaluate(model)["val_loss"]
    trainer = Trainer(model, cfg, tmp_path, get_batch=lambda s, m: sft_batch(train_ex, 8, tok.pad_id, 0, s, m),
                      loss_fn=lambda mdl, b: lm_loss(mdl(b["input_ids"]), b["targets"]), evaluate=evaluate,
                      tokenizer_file=tok.save(tmp_path / "tok"), show_progress=False)
    after = trainer.fit().eval_metrics["val_loss"]
    assert after < before - 1.5, (before, after)  # measured: 6.26 -> 4.47
