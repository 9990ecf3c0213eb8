"""Import a local Hugging Face Llama checkpoint as a picochat model directory.

Any stage's init (`sft.init`, `rm.init`, `ppo.init`, `ppo.value_init`, `ppo.reward_model`,
`dpo.init`) and any `--ckpt` accepts `hf:PATH`, where PATH is a directory holding `config.json`,
safetensors weights (`model.safetensors`, or shards with `model.safetensors.index.json`) and
`tokenizer.json` — what `save_pretrained` writes, or a downloaded snapshot. The conversion is done
once and cached as an ordinary picochat model directory (fp32 weights, config, tokenizer) under
`$PICOCHAT_CACHE/hf-import/` (default `~/.cache/picochat/hf-import/`); it is redone when the
source files change.

The tokenizer. picochat's chat format and batching need `<|endoftext|>` (end of a document),
`<|im_start|>`/`<|im_end|>` (ChatML turns) and `<|pad|>`. Those the imported tokenizer lacks are
added as special tokens (SmolLM2, for one, has the first three and gets only `<|pad|>`). Their
embedding rows (and lm_head rows) start at the mean of the existing rows, as in Hewitt (2021) and
transformers' `resize_token_embeddings`: the model's predictions do not move until SFT teaches it
the new tokens, where a random row could take a large share of the probability. The mean is
deterministic, so every stage that imports the same checkpoint gets the same weights. The
vocabulary grows only when a new id falls beyond the embedding matrix; a model whose matrix has
spare rows past its tokenizer (Llama vocabularies are often padded) uses those. picochat encodes
without the tokenizer's post-processor, so no BOS token is prepended.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from picochat.core.chat import render_chat, render_text, write_tokenizer_config
from picochat.core.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, write_model_dir
from picochat.core.model import GPT, ModelConfig
from picochat.core.tokenizer import REQUIRED_TOKENS, Tokenizer
from picochat.hf import HF_PREFIX
from picochat.hf.llama_config import UnsupportedModelError, model_config_from_llama

INDEX_FILE = "model.safetensors.index.json"
CONVERTER_VERSION = 1  # bump when the conversion changes, so cached imports are redone
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


def is_hf_reference(path: str | os.PathLike) -> bool:
    return str(path).startswith(HF_PREFIX)


def cache_root() -> Path:
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = os.environ.get("PICOCHAT_CACHE") or xdg_cache / "picochat"
    return Path(root) / "hf-import"


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, or a FileNotFoundError saying what to do."""
    if (src / MODEL_FILE).exists():
        return [src / MODEL_FILE]
    if (src / INDEX_FILE).exists():
        index = json.loads((src / INDEX_FILE).read_text(encoding="utf-8"))
        return [src / name for name in sorted(set(index["weight_map"].values()))]
    hint = ""
    if any(src.glob("*.bin")) or any(src.glob("*.pt")):
        hint = (" It has PyTorch .bin weights: convert them once with transformers, "
                "`AutoModelForCausalLM.from_pretrained(PATH).save_pretrained(OUT)` (writes safetensors).")
    raise FileNotFoundError(f"no {MODEL_FILE} or {INDEX_FILE} in {src}.{hint}")


def source_fingerprint(src: Path) -> str:
    """Changes when any file the import reads changes (path, size, modification time)."""
    files = [src / CONFIG_FILE, src / TOKENIZER_FILE, src / INDEX_FILE]
    try:
        files += weight_files(src)
    except FileNotFoundError:
        pass  # `convert` says what is missing, after checking config.json
    parts = [str(src), str(CONVERTER_VERSION)]
    for f in (f for f in files if f.exists()):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def read_tensors(src: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(src):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def check_tensor_names(tensors: dict[str, torch.Tensor], cfg: ModelConfig, where: Path) -> dict[str, torch.Tensor]:
    """The weights picochat's GPT takes, refusing extra ones (biases, ...) and missing ones."""
    expected = set(gpt_parameter_names(cfg))
    # Old checkpoints store RoPE's inverse frequencies; picochat computes them from rope_theta.
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.head == "lm" and cfg.tie_embeddings:
        tensors.pop(LM_HEAD, None)  # tied: the embedding is the head (HF stores it once)
        expected.discard(LM_HEAD)
    extra = sorted(set(tensors) - expected)
    if extra:
        raise UnsupportedModelError(
            f"{where}: tensors picochat's Llama has no place for: {extra[:6]}{' ...' if len(extra) > 6 else ''} "
            "(biases? a different architecture?)")
    missing = sorted(expected - set(tensors))
    if missing:
        raise UnsupportedModelError(f"{where}: missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    return tensors


def gpt_parameter_names(cfg: ModelConfig) -> list[str]:
    """Parameter names of a GPT with this config, without building one."""
    names = [EMBEDDING, "model.norm.weight", LM_HEAD if cfg.head == "lm" else "score.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [p + f"self_attn.{n}_proj.weight" for n in "qkvo"]
        names += [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
    return names


def add_chat_tokens(tokenizer: HFTokenizer) -> list[str]:
    """Add the picochat special tokens this tokenizer lacks (in place) and return them. One that is
    in the vocabulary as an ordinary token keeps its id and becomes special, so that text spelling
    it matches it in one piece, as in picochat's own tokenizer."""
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    missing = [t for t in REQUIRED_TOKENS if tokenizer.token_to_id(t) is None]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in REQUIRED_TOKENS if t not in special])
    return missing


# Conversations that exercise what the chat template puts side by side: role names after
# <|im_start|>, newlines, digits, punctuation, Chinese, a system turn.
PROBE_CHATS = (
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"},
     {"role": "assistant", "content": "12 + 30 = 42."}],
    [{"role": "user", "content": "米拉住在哪里？Tell me!"}, {"role": "assistant", "content": "她住在灰石镇。"}],
)


def check_chat_encoding(tokenizer: Tokenizer, where: Path) -> None:
    """Refuse a tokenizer with which picochat's chat rendering would not be what transformers renders.

    picochat encodes a conversation piece by piece (header, content, end token) so that the SFT
    loss mask has exact boundaries; transformers' `apply_chat_template` encodes the rendered text
    in one go. For byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen style) the two agree. A
    SentencePiece-style tokenizer that marks the start of every encoded piece with a space
    (Llama 2, TinyLlama, Mistral v0.1) does not: the model would be fine-tuned on token sequences
    it never sees when served. Text must also decode back to itself (no lower-casing normaliser).
    """
    for messages in PROBE_CHATS:
        pieces, _ = render_chat(tokenizer, messages)
        text = render_text(messages)
        whole = tokenizer.encode(text, allow_special=True)
        if pieces != whole or tokenizer.decode(whole) != text:
            raise UnsupportedModelError(
                f"{where}: this tokenizer encodes the chat template's pieces differently alone than together "
                f"(or does not decode text back exactly): {tokenizer.decode(pieces)!r} vs {text!r}. picochat "
                "would train on tokens that apply_chat_template never produces. Byte-level BPE tokenizers "
                "(SmolLM, Llama 3, GPT-2 style) work; SentencePiece-style ones (Llama 2, TinyLlama) do not.")


def init_new_rows(weight: torch.Tensor, new_ids: list[int], n_known: int, n_rows: int) -> torch.Tensor:
    """`weight` (V, C) grown to at least n_rows rows, with the rows of `new_ids` set to the mean
    of the first n_known rows (those of the tokens the model was trained with)."""
    weight = weight.float()
    if n_rows > weight.size(0):
        weight = torch.cat([weight, weight.new_zeros(n_rows - weight.size(0), weight.size(1))])
    if new_ids:
        weight[new_ids] = weight[:n_known].mean(dim=0)
    return weight


def convert(src: Path) -> tuple[GPT, HFTokenizer, dict]:
    """(picochat model, tokenizer with the chat tokens, meta) of an HF checkpoint directory."""
    config_file = src / CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {src}: expected a Hugging Face checkpoint directory "
                                "(what `save_pretrained` writes)")
    hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    cfg = model_config_from_llama(hf_config, where=str(config_file))
    tensors = check_tensor_names(read_tensors(src), cfg, src)

    tokenizer_file = src / TOKENIZER_FILE
    if not tokenizer_file.exists():
        raise FileNotFoundError(
            f"no {TOKENIZER_FILE} in {src}: picochat needs a fast tokenizer. Write one with "
            "`AutoTokenizer.from_pretrained(PATH).save_pretrained(PATH)` (transformers converts slow ones)")
    tokenizer = HFTokenizer.from_file(str(tokenizer_file))
    n_known = tokenizer.get_vocab_size(with_added_tokens=True)
    if n_known > cfg.vocab_size:
        raise UnsupportedModelError(f"{tokenizer_file} has {n_known} tokens but the model's vocab_size is "
                                    f"{cfg.vocab_size}: tokenizer and weights do not belong together")
    added = add_chat_tokens(tokenizer)
    check_chat_encoding(Tokenizer(tokenizer), tokenizer_file)
    new_ids = [tokenizer.token_to_id(t) for t in added]
    vocab_size = max([cfg.vocab_size] + [i + 1 for i in new_ids])
    tensors[EMBEDDING] = init_new_rows(tensors[EMBEDDING], new_ids, n_known, vocab_size)
    if LM_HEAD in tensors:
        tensors[LM_HEAD] = init_new_rows(tensors[LM_HEAD], new_ids, n_known, vocab_size)
    cfg.vocab_size = vocab_size

    model = GPT(cfg)
    try:
        model.load_state_dict(tensors, strict=not (cfg.head == "lm" and cfg.tie_embeddings))
    except RuntimeError as e:  # shape mismatches: the config does not describe these weights
        raise UnsupportedModelError(f"{src}: weights do not fit {config_file}: {e}") from None
    meta = {"stage": "hf-import", "step": 0, "init": f"{HF_PREFIX}{src}", "hf_source": str(src),
            "hf_architecture": (hf_config.get("architectures") or ["LlamaForCausalLM"])[0],
            "added_tokens": added}
    if "reward_gain" in hf_config or "reward_bias" in hf_config:  # a picochat reward model, exported
        meta["reward_normalization"] = {"gain": float(hf_config.get("reward_gain", 1.0)),
                                        "bias": float(hf_config.get("reward_bias", 0.0)),
                                        "fitted_on": f"read from {config_file}"}
    return model, tokenizer, meta


def import_hf(source: str | os.PathLike) -> Path:
    """The picochat model directory of HF checkpoint `source` (converted on first use, then cached).

    `source` may carry the `hf:` prefix. Raises FileNotFoundError or UnsupportedModelError (a
    ValueError) with a message that names the file and the problem.
    """
    text = str(source)
    text = text[len(HF_PREFIX):] if is_hf_reference(text) else text
    if not text:
        raise FileNotFoundError("hf: needs a directory, e.g. hf:~/models/SmolLM2-135M-Instruct")
    src = Path(text).expanduser().resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{HF_PREFIX}{text}: {src} is not a directory (a local Hugging Face checkpoint; "
                                "picochat does not download models)")
    target = cache_root() / f"{src.name}-{source_fingerprint(src)}"
    if (target / MODEL_FILE).exists():
        return target
    model, hf_tokenizer, meta = convert(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        Tokenizer(hf_tokenizer).save(tmp)
        write_model_dir(tmp, model, tmp / TOKENIZER_FILE, meta)
        write_tokenizer_config(tmp, model_max_length=model.cfg.max_seq_len)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same import first: use its copy
            if not (target / MODEL_FILE).exists():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    added = f"; added tokens {meta['added_tokens']} (rows start at the mean embedding)" if meta["added_tokens"] else ""
    print(f"[hf] imported {src} ({model.num_params():,} parameters, vocab {model.cfg.vocab_size}){added} -> {target}")
    return target
