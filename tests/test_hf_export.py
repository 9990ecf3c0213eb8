"""`picochat export`: the exported checkpoint computes in transformers what picochat computes."""

from __future__ import annotations

import json

import pytest
import torch

from picochat.cli.main import main
from picochat.core.chat import render_prompt
from picochat.core.checkpoint import load_model_dir, write_model_dir
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, ModelConfig
from picochat.core.tokenizer import Tokenizer
from picochat.hf.export import export_model
from picochat.reward_model import RewardModel, reward_input_ids

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _import_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOCHAT_CACHE", str(tmp_path / "cache"))


def _chat_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(out["input_ids"] if not isinstance(out, list) else out)  # transformers 5 returns a BatchEncoding


def test_export_sft_logits_and_files(run_dir, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", "--ckpt", str(run_dir / "sft"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "generation_config.json",
                                             "tokenizer.json", "tokenizer_config.json", "README.md"}
    model, _ = load_model_dir(run_dir / "sft")
    tok = Tokenizer.load(run_dir / "sft" / "tokenizer.json")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["num_key_value_heads"] == model.cfg.n_kv_heads == 2 and config["num_attention_heads"] == 4
    assert (config["rms_norm_eps"], config["rope_theta"], config["max_position_embeddings"]) == (
        model.cfg.norm_eps, model.cfg.rope_theta, model.cfg.max_seq_len)
    assert config["eos_token_id"] == [tok.im_end_id, tok.eot_id] and config["pad_token_id"] == tok.pad_id
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [tok.im_end_id, tok.eot_id]
    summary = json.loads((run_dir / "sft" / "summary.json").read_text())
    card = (out / "README.md").read_text()
    assert "LlamaForCausalLM" in card and f"{summary['val_loss']:.4g}" in card  # the run's figures

    hf = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model.eval()(ids), atol=1e-4, rtol=0)


def test_transformers_greedy_chat_equals_picochat(run_dir, tmp_path):
    out = export_model(run_dir / "sft", tmp_path / "hf")
    model, _ = load_model_dir(run_dir / "sft")
    model.eval()
    tok = Tokenizer.load(run_dir / "sft" / "tokenizer.json")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token == "<|pad|>"
    conversations = [json.loads(line)["messages"][:1] for line in
                     (run_dir / "world" / "chat_test.jsonl").read_text().splitlines()[:3]]
    conversations.append([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "你好！Who is Mira?"}])
    for messages in conversations:
        prompt = render_prompt(tok, messages)
        assert _chat_ids(hf_tok, messages) == prompt  # the Jinja template renders picochat's tokens
        ours = generate(model, [prompt], SamplingConfig(max_new_tokens=24, temperature=0,
                                                        stop_ids=(tok.im_end_id, tok.eot_id)), pad_id=tok.pad_id)[0]
        with torch.no_grad():
            theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
        if ours.finish_reason == "stop":  # transformers keeps the stop token; picochat drops it
            assert theirs[-1] in (tok.im_end_id, tok.eot_id)
            theirs = theirs[:-1]
        assert theirs == ours.tokens
        assert hf_tok.decode(theirs) == tok.decode(ours.tokens)


def test_reward_model_export_scores(run_dir, tmp_path):
    out = export_model(run_dir / "rm", tmp_path / "hf_rm")
    assert not (out / "generation_config.json").exists()
    rm = RewardModel.load(run_dir / "rm")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.LlamaForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    config = hf.config
    assert config.num_labels == 1 and (config.reward_gain, config.reward_bias) == (rm.gain, rm.bias)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}],
               [{"role": "user", "content": "Where does she live? Tell me everything you know."}],
               [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "米拉住在哪里？"}]]
    responses = ["5.", "She lives in a small town by the river, near the old mill.", "我不知道。"]
    # The recipe of the model card: render, drop the newline after the last <|im_end|>, pad on the right.
    texts = [hf_tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False).removesuffix("\n")
             for p, r in zip(prompts, responses)]
    batch = hf_tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    for row, mask, p, r in zip(batch["input_ids"], batch["attention_mask"], prompts, responses):
        assert row[mask.bool()].tolist() == reward_input_ids(rm.tokenizer, p, r)[0]
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: pooling must skip the pads
    with torch.no_grad():
        raw = hf(**batch).logits[:, 0]
    torch.testing.assert_close(raw, torch.tensor(rm.score(prompts, responses, normalized=False)), atol=1e-4, rtol=0)
    normalised = config.reward_gain * raw + config.reward_bias
    torch.testing.assert_close(normalised, torch.tensor(rm.score(prompts, responses)), atol=1e-4, rtol=0)
    assert "reward_gain" in (out / "README.md").read_text()

    # Imported back (hf:), the reward model keeps its normalisation and its scores.
    back = RewardModel.load(f"hf:{out}")
    assert (back.gain, back.bias) == (rm.gain, rm.bias)
    assert back.score(prompts, responses) == pytest.approx(rm.score(prompts, responses), abs=1e-5)


def test_export_base_and_tied_model(world_tokenizer, tmp_path):
    """A pretrained (base) model ends documents with <|endoftext|>; tied embeddings load tied."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=world_tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1,
                            ffn_hidden=64, max_seq_len=64, rope_theta=500.0, tie_embeddings=True))
    src = tmp_path / "pretrain"
    tokenizer_file = world_tokenizer.save(tmp_path / "tok")
    write_model_dir(src, model, tokenizer_file, {"stage": "pretrain", "step": 7})
    out = export_model(src, tmp_path / "hf", dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["eos_token_id"] == world_tokenizer.eot_id
    assert config["rope_theta"] == 500.0 and config["torch_dtype"] == "bfloat16"
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    assert "No `summary.json`" in (out / "README.md").read_text()
    hf = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.to(torch.bfloat16).float().eval()(ids)  # the weights as bf16 stores them
        torch.testing.assert_close(hf(ids).logits, reference, atol=1e-4, rtol=0)
