"""GGUF export: llama.cpp's RoPE row order, the tokenizer's split equal to llama.cpp's "refact", the
file's metadata and tensors, and (with llama-cpp-python installed, as CI does) llama.cpp itself:
the same tokens, the same logits within each dtype's tolerance, the same greedy answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers

from picochat.cli.main import main
from picochat.core.chat import render_prompt
from picochat.core.generate import SamplingConfig, generate
from picochat.core.tokenizer import llama_cpp_pre_tokenizer
from picochat.data.readers import iter_corpus
from picochat.hf.gguf import export_gguf, rope_rows_for_llama_cpp
from picochat.layout import load_model_and_tokenizer

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'picochat[gguf]')")

TEXTS = ["Dana's favourite food is plums.", "What is 12 + 345? It is 357.", "米拉住在哪里？她最好的朋友是谁？",
         "日本語のテキスト　全角", "emoji 😀👍🏽 ok", "a\n\n你好", "x  世界 \t\t中文", "<|im_end|> typed by a user",
         "   leading spaces\r\nand CRLF", "١٢٣ Arabic-Indic digits"]
# max |logit difference| from picochat's fp32 forward, per GGUF dtype (measured on the demo's SFT
# model: 0.004, 0.007, 0.044, 0.154); llama.cpp's CPU kernels sum in another order
TOLERANCE = {"f32": 0.02, "f16": 0.05, "bf16": 0.25, "q8_0": 0.6}


def test_rope_rows_interleave_the_two_halves_of_each_head():
    weight = torch.arange(8.0)[:, None].repeat(1, 3)  # 2 heads of 4 rows; row i holds i
    out = rope_rows_for_llama_cpp(weight, n_heads=2)
    assert out[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]  # per head: (0, d/2), (1, d/2 + 1)
    assert torch.equal(out[:, 1], out[:, 0])


def test_the_tokenizer_splits_text_as_llama_cpps_refact_pre_tokenizer(run_dir, world_dir):
    """llama.cpp's "refact": digits one by one, then GPT-2's regex, nothing for CJK. The same BPE
    after that split gives picochat's tokens on the world's corpus and on edge cases."""
    text = (run_dir / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8")
    assert llama_cpp_pre_tokenizer(text) == "refact"
    ours = HFTokenizer.from_str(text)
    ours.encode_special_tokens = True
    refact = HFTokenizer.from_str(text)
    refact.encode_special_tokens = True
    refact.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
    docs = list(iter_corpus([world_dir / "corpus.jsonl"]))[:500] + TEXTS
    assert any("\u4e00" <= c <= "\u9fff" for d in docs for c in d)
    for doc in docs:
        assert ours.encode(doc).ids == refact.encode(doc).ids, doc[:80]
    old_order = json.loads(text)
    old_order["pre_tokenizer"]["pretokenizers"].reverse()  # another split order is not claimed
    assert llama_cpp_pre_tokenizer(json.dumps(old_order)) is None


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {dtype: export_gguf(run_dir / "sft", folder / f"sft-{dtype}.gguf", dtype)
            for dtype in ("f32", "f16", "bf16", "q8_0")}


def _field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if value.dtype == np.uint8 else value[0]


def test_the_gguf_file_holds_the_architecture_vocabulary_and_weights(run_dir, exported):
    model, tok, _ = load_model_and_tokenizer(run_dir / "sft")
    cfg = model.cfg
    reader = gguf.GGUFReader(exported["f32"]["path"])
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == cfg.n_layers
    assert _field(reader, "llama.attention.head_count_kv") == cfg.n_kv_heads
    assert _field(reader, "llama.context_length") == cfg.max_seq_len
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "refact"
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.im_end_id  # a chat model stops at <|im_end|>
    assert "<|im_start|>" in _field(reader, "tokenizer.chat_template")
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == cfg.vocab_size  # padded to the embedding rows
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 9 * cfg.n_layers
    assert tuple(tensors["token_embd.weight"].shape) == (cfg.d_model, cfg.vocab_size)  # GGUF lists dims reversed
    embed = model.state_dict()["model.embed_tokens.weight"].numpy()
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data).reshape(embed.shape), embed)
    sizes = {d: exported[d]["bytes"] for d in exported}
    assert sizes["f32"] > sizes["f16"] == sizes["bf16"] > sizes["q8_0"]
    q8 = {t.name: t for t in gguf.GGUFReader(exported["q8_0"]["path"]).tensors}
    assert q8["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # rows of 128: 4 blocks
    assert q8["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16  # rows of 48: no whole blocks
    assert q8["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norm gains stay f32


def test_export_gguf_from_the_command_line(run_dir, tmp_path, capsys):
    out = tmp_path / "m" / "ppo.gguf"
    assert main(["export", "--ckpt", str(run_dir / "ppo"), "--out", str(out), "--format", "gguf",
                 "--dtype", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "ollama create" in printed and "warning" not in printed
    modelfile = (out.parent / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./ppo.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{ .Role }}" in modelfile and "<|im_start|>assistant" in modelfile
    assert main(["export", "--ckpt", str(run_dir / "ppo"), "--out", str(out), "--format", "gguf",
                 "--dtype", "float32"]) == 2
    assert "--format gguf takes --dtype" in capsys.readouterr().err
    assert main(["export", "--ckpt", str(run_dir / "rm"), "--out", str(out), "--format", "gguf"]) == 2
    assert "reward model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (CI installs it: .ci/run)")


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_llama_cpp_tokenizes_and_scores_as_picochat(run_dir, exported, llama_cpp, dtype):
    model, tok, _ = load_model_and_tokenizer(run_dir / "sft")
    llm = llama_cpp.Llama(exported[dtype]["path"], n_ctx=model.cfg.max_seq_len, logits_all=True, verbose=False,
                          n_threads=1)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text
        ids = tok.encode("Mira lives in Ashford. 米拉住在云雀镇。 12 + 30 = 42.")
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)])[:, :model.cfg.vocab_size]
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0].numpy()
        assert np.abs(theirs - ours).max() < TOLERANCE[dtype]
        assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
    finally:
        llm.close()


def test_llama_cpp_greedy_answers_through_the_chat_template_equal_picochats(run_dir, exported, llama_cpp):
    model, tok, _ = load_model_and_tokenizer(run_dir / "sft")
    llm = llama_cpp.Llama(exported["f32"]["path"], n_ctx=model.cfg.max_seq_len, verbose=False, n_threads=1)
    try:
        for question in ("What is Mira's favourite food?", "What is 3 + 4?", "米拉住在哪里？"):
            prompt = render_prompt(tok, [{"role": "user", "content": question}])
            ours = generate(model, [prompt], SamplingConfig(max_new_tokens=16, temperature=0.0,
                                                            stop_ids=(tok.im_end_id,)))[0].tokens
            theirs = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                if token == tok.im_end_id or len(theirs) == 16:
                    break
                theirs.append(token)
            assert theirs == ours, question
    finally:
        llm.close()
