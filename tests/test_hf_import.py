"""`init=hf:PATH`: a Llama checkpoint written by transformers imports, fine-tunes and exports back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from picochat.cli.main import main
from picochat.core.tokenizer import Tokenizer
from picochat.hf.export import export_model
from picochat.hf.importer import check_chat_encoding, init_new_rows
from picochat.hf.llama_config import UnsupportedModelError, model_config_from_llama
from picochat.layout import load_model

transformers = pytest.importorskip("transformers")

CHATS = [
    [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]
    for a in range(6) for b in range(4)
]


@pytest.fixture(autouse=True)
def _import_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOCHAT_CACHE", str(tmp_path / "cache"))


def save_random_llama(path, *, tie: bool = False, **overrides):
    """What a user downloads: a transformers-saved tiny Llama with random weights and a byte-level
    BPE tokenizer that has <|endoftext|>, <|im_start|> and <|im_end|> but no <|pad|>."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [m["content"] for chat in CHATS for m in chat] + ["user", "assistant", "system"] * 20
    tok.train_from_iterator(texts, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96, rms_norm_eps=1e-5,
        rope_theta=1000.0, tie_word_embeddings=tie, eos_token_id=tok.token_to_id("<|im_end|>"), **overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # transformers initialises norms to 1; make them matter in the comparison
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return model.eval(), tok.get_vocab_size()


@pytest.mark.parametrize("tie", [False, True])
def test_import_matches_transformers(tmp_path, tie):
    hf, n_vocab = save_random_llama(tmp_path / "llama", tie=tie)
    model, meta = load_model(f"hf:{tmp_path / 'llama'}")
    assert meta["added_tokens"] == ["<|pad|>"] and model.cfg.vocab_size == n_vocab + 1
    assert model.cfg.tie_embeddings == tie and model.cfg.rope_theta == 1000.0 and model.cfg.n_kv_heads == 2
    assert model.cfg.norm_eps == 1e-5 and model.cfg.max_seq_len == 96 and model.cfg.ffn_hidden == 64
    tokenizer = Tokenizer.load(meta["model_dir"])
    assert tokenizer.pad_id == n_vocab and tokenizer.im_end_id == hf.config.eos_token_id
    ids = torch.randint(0, n_vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.eval()(ids)
        torch.testing.assert_close(ours[..., :n_vocab], hf(ids).logits, atol=1e-4, rtol=0)
    embed = model.model.embed_tokens.weight
    torch.testing.assert_close(embed[n_vocab], embed[:n_vocab].mean(0))  # the new row starts at the mean
    # A second import reuses the cached conversion.
    _, again = load_model(f"hf:{tmp_path / 'llama'}")
    assert again["model_dir"] == meta["model_dir"]


def test_import_sft_export_round_trip(tmp_path):
    save_random_llama(tmp_path / "llama")
    chat_file = tmp_path / "chats.jsonl"
    chat_file.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    out = tmp_path / "run"
    imported, _ = load_model(f"hf:{tmp_path / 'llama'}")
    assert main(["sft", "--out", str(out), "--no-progress", f"sft.init=hf:{tmp_path / 'llama'}",
                 f"sft.sources={chat_file}", "sft.eval_prompts=0", "sft.val_fraction=0.2",
                 "train.max_steps=4", "train.batch_size=4", "train.lr=1e-2", "train.lr_warmup_steps=1",
                 "train.log_every=2", "train.eval_every=0", "train.eval_batches=1", "train.precision=fp32"]) == 0
    summary = json.loads((out / "sft" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["init"].startswith("hf:")
    model, meta = load_model(out / "sft")
    moved = (model.model.embed_tokens.weight - imported.model.embed_tokens.weight).abs().max().item()
    assert moved > 1e-3  # it trained
    assert Tokenizer.load(meta["model_dir"]).pad_id == model.cfg.vocab_size - 1  # kept the added token

    exported = export_model(out / "sft", tmp_path / "hf_sft")
    hf = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    again, again_meta = load_model(f"hf:{exported}")
    assert again_meta["added_tokens"] == []  # every chat token is there now
    assert Tokenizer.load(again_meta["model_dir"]).to_json() == Tokenizer.load(meta["model_dir"]).to_json()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model.eval()(ids)
        torch.testing.assert_close(hf(ids).logits, reference, atol=1e-4, rtol=0)
        torch.testing.assert_close(again.eval()(ids), reference, atol=1e-4, rtol=0)


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "llama3"),
    ({"model_type": "qwen2"}, "model_type is 'qwen2'"),
    ({"model_type": "mistral", "sliding_window": 4096}, "model_type is 'mistral'"),
    ({"sliding_window": 64}, "sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"head_dim": 16}, "head_dim"),
    ({"architectures": ["LlamaForTokenClassification"]}, "LlamaForTokenClassification"),
    ({"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a", "1": "b"}}, "2 labels"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantised"),
])
def test_unsupported_configs_are_refused(change, message):
    assert model_config_from_llama(LLAMA).head == "lm"  # the base config itself imports
    with pytest.raises(UnsupportedModelError, match=message):
        model_config_from_llama({**LLAMA, **change}, where="x/config.json")


def test_rope_theta_from_either_config_style():
    assert model_config_from_llama({**LLAMA, "rope_theta": 5e5}).rope_theta == 5e5
    rope_parameters = {"rope_type": "default", "rope_theta": 7e4}
    assert model_config_from_llama({**LLAMA, "rope_parameters": rope_parameters}).rope_theta == 7e4
    assert model_config_from_llama({**LLAMA, "rope_scaling": None}).rope_theta == 10000.0


def test_biased_checkpoint_refused_through_the_cli(tmp_path, capsys):
    save_random_llama(tmp_path / "qwenish", attention_bias=True)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n", encoding="utf-8")
    assert main(["sft", "--out", str(tmp_path / "run"), f"sft.init=hf:{tmp_path / 'qwenish'}",
                 f"sft.sources={chats}"]) == 2
    err = capsys.readouterr().err
    assert "attention_bias = true" in err and "no biases" in err and "qwenish" in err

    # The config may say nothing while the weights carry biases: those are refused too.
    save_random_llama(tmp_path / "sneaky")
    config = json.loads((tmp_path / "sneaky" / "config.json").read_text())
    weights = load_file(tmp_path / "sneaky" / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(config["hidden_size"])
    save_file(weights, tmp_path / "sneaky" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UnsupportedModelError, match="q_proj.bias"):
        load_model(f"hf:{tmp_path / 'sneaky'}")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_model(f"hf:{tmp_path / 'missing'}")


def test_init_new_rows_grows_and_fills_with_the_mean():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]])  # row 2: a spare, untrained row
    out = init_new_rows(w, new_ids=[2, 4], n_known=2, n_rows=5)
    assert out.shape == (5, 2)
    torch.testing.assert_close(out[2], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(out[4], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(out[:2], w[:2])


def test_sentencepiece_style_tokenizer_refused(tmp_path):
    """A tokenizer that marks the start of every encoded piece (Llama 2 style) would make picochat
    train on other tokens than apply_chat_template produces."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(["What is 12 + 30? Be brief. user assistant system"] * 10,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    with pytest.raises(UnsupportedModelError, match="SentencePiece-style"):
        check_chat_encoding(Tokenizer(tok), tmp_path / "tokenizer.json")


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(f"hf:{tmp_path / 'empty'}")
    save_random_llama(tmp_path / "llama")
    (tmp_path / "llama" / "model.safetensors").rename(tmp_path / "llama" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_model(f"hf:{tmp_path / 'llama'}")
