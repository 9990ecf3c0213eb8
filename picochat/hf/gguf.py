"""`picochat export --format gguf`: a picochat model as one GGUF file for llama.cpp, Ollama, LM Studio.

Written with `gguf` (the writer llama.cpp maintains, `pip install 'picochat[gguf]'`) as llama.cpp's
own converter would write a Llama checkpoint:
- architecture `llama`: context, width, layers, heads, KV heads, FFN width, RoPE base, RMSNorm eps;
- weights under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ..., `output`). picochat keeps
  the query and key rows in Hugging Face's rotate-half order; llama.cpp rotates adjacent pairs,
  so those two matrices are permuted per head, as the converter does for HF Llama checkpoints;
- the byte-level BPE vocabulary and merges (`tokenizer.ggml.model = gpt2`), the special tokens as
  control tokens, padding rows up to the model's vocabulary as unused tokens, EOS = <|im_end|> for
  a chat model (<|endoftext|> for a pretrained one), and the ChatML template;
- `tokenizer.ggml.pre = refact`: digits one by one, then GPT-2's regex, which is how picochat's
  tokenizers split text (`picochat.core.tokenizer._pre_tokenizer`), so llama.cpp produces the
  same tokens. Tokenizers trained before that order split whitespace before a CJK character
  differently: exporting one says so (about 1.5% of the demo corpus's documents tokenize
  differently; retrain the tokenizer for an exact match).

dtype f32, f16 or bf16 stores the matrices in that type; q8_0 quantizes them to 8 bits in blocks of
32 (a matrix whose rows are not a whole number of blocks falls back to f16, as in llama.cpp's
converter). Norm gains stay f32 in every case, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from picochat.core.chat import CHAT_TEMPLATE
from picochat.core.checkpoint import TOKENIZER_FILE, load_model_dir
from picochat.core.io import atomic_write, atomic_write_text
from picochat.core.model import GPT
from picochat.core.tokenizer import EOT, IM_END, SPECIAL_TOKENS, Tokenizer, llama_cpp_pre_tokenizer
from picochat.hf.export import model_kind

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


def rope_rows_for_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder a query/key projection's rows from rotate-half (HF) to adjacent-pair (llama.cpp)
    RoPE order, per head: rows [0..d/2) and [d/2..d) of a head interleave."""
    out_features, in_features = weight.shape
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, in_features).swapaxes(1, 2).reshape(out_features, in_features)


def llama_cpp_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Every weight under its llama.cpp name, q and k in llama.cpp's RoPE order."""
    cfg, sd = model.cfg, model.state_dict()
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
           "output.weight": sd["model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"]}
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            weight = sd[f"model.layers.{i}.{ours}.weight"]
            if theirs == "attn_q":
                weight = rope_rows_for_llama_cpp(weight, cfg.n_heads)
            elif theirs == "attn_k":
                weight = rope_rows_for_llama_cpp(weight, cfg.n_kv_heads)
            out[f"blk.{i}.{theirs}.weight"] = weight
    return out


def vocabulary(tokenizer_json: dict, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(token strings by id, their GGUF token types, merges as "a b") padded to `vocab_size` rows."""
    import gguf

    by_id = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    for added in tokenizer_json.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if by_id[i] in SPECIAL_TOKENS else gguf.TokenType.NORMAL)
        else:  # the model's embedding rows past the tokenizer (its size rounded up to 64)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    return tokens, [int(t) for t in types], merges


def _tensor_data(name: str, weight: torch.Tensor, dtype: str):
    """(array, raw dtype or None) for GGUFWriter.add_tensor: 1-d tensors (norm gains) stay f32."""
    import gguf

    array = weight.detach().float().numpy()
    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), None
    if dtype == "f16":
        return array.astype(np.float16), None
    quant = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    block = gguf.GGML_QUANT_SIZES[quant][0]
    if array.shape[-1] % block:  # rows that do not fill whole blocks: f16, as llama.cpp's converter does
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, quant), quant


def export_gguf(ckpt: str | Path, out_file: str | Path, dtype: str = "f16") -> dict:
    """Write the model at `ckpt` as one GGUF file (and an Ollama Modelfile beside it); returns
    {"path", "bytes", "pre_tokenizer_exact", "modelfile"}."""
    import gguf  # the optional `gguf` extra: only this export needs it

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"--dtype for gguf must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    model, meta = load_model_dir(ckpt, "cpu")
    cfg = model.cfg
    if cfg.head != "lm":
        raise ValueError(f"{ckpt}: a reward model (scalar head) has no GGUF form llama.cpp can run; export an "
                         "SFT, PPO, DPO or pretrained model")
    kind = model_kind(cfg, meta)
    tokenizer_path = Path(meta["model_dir"]) / TOKENIZER_FILE
    tokenizer_text = tokenizer_path.read_text(encoding="utf-8")
    tokenizer = Tokenizer.load(tokenizer_path)
    pre = llama_cpp_pre_tokenizer(tokenizer_text)
    tokens, types, merges = vocabulary(json.loads(tokenizer_text), cfg.vocab_size)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(str(path), arch="llama")
        writer.add_name(f"picochat {meta.get('stage', 'model')}")
        writer.add_context_length(cfg.max_seq_len)
        writer.add_embedding_length(cfg.d_model)
        writer.add_block_count(cfg.n_layers)
        writer.add_feed_forward_length(cfg.ffn_hidden)
        writer.add_head_count(cfg.n_heads)
        writer.add_head_count_kv(cfg.n_kv_heads)
        writer.add_rope_dimension_count(cfg.d_model // cfg.n_heads)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre or "refact")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(tokenizer.eot_id)
        writer.add_add_bos_token(False)  # picochat never prepends a token
        writer.add_eos_token_id(tokenizer.eot_id if kind == "base" else tokenizer.im_end_id)
        writer.add_eot_token_id(tokenizer.im_end_id)
        writer.add_pad_token_id(tokenizer.pad_id)
        writer.add_chat_template(CHAT_TEMPLATE)
        for name, weight in llama_cpp_tensors(model).items():
            data, raw_dtype = _tensor_data(name, weight, dtype)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(out_file, write)
    modelfile = out_file.with_name("Modelfile")
    atomic_write_text(modelfile, ollama_modelfile(out_file.name, eos=EOT if kind == "base" else IM_END))
    return {"path": str(out_file), "bytes": out_file.stat().st_size, "pre_tokenizer_exact": pre is not None,
            "modelfile": str(modelfile)}


def ollama_modelfile(gguf_name: str, eos: str) -> str:
    """An Ollama Modelfile: the GGUF, ChatML as a Go template, and the stop tokens."""
    return (
        f"FROM ./{gguf_name}\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
        '{{ .Content }}<|im_end|>\n'
        '{{ end }}<|im_start|>assistant\n"""\n'
        f'PARAMETER stop "{IM_END}"\n'
        f'PARAMETER stop "{EOT}"\n'
        + ("" if eos == IM_END else "# a pretrained model: it continues text, it was never trained on chats\n")
    )
