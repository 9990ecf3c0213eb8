"""The model card (`README.md`) of an exported model: what it is, how it was trained, the run's
figures from the stage's `summary.json`, and how to use it with `transformers`."""

from __future__ import annotations

from picochat.core.model import ModelConfig

KIND_TAGS = {
    "chat": ("text-generation", ["picochat", "llama", "chat"]),
    "base": ("text-generation", ["picochat", "llama"]),
    "reward": ("text-classification", ["picochat", "llama", "reward-model", "rlhf"]),
}
STAGE_NAMES = {
    "pretrain": "pretrained base model (next-token prediction)",
    "sft": "assistant after supervised fine-tuning (SFT)",
    "ppo": "assistant after RLHF with PPO",
    "dpo": "assistant after direct preference optimisation (DPO)",
    "rm": "reward model",
    "hf-import": "imported Hugging Face checkpoint",
}
SKIP_KEYS = {"fingerprint", "stage", "init"}


def _format(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def metrics_table(summary: dict) -> str:
    """The summary's top-level figures (numbers and short strings) as a Markdown table."""
    rows = [f"| `{k}` | {_format(v)} |" for k, v in summary.items()
            if k not in SKIP_KEYS and isinstance(v, (int, float, str)) and len(str(v)) < 80]
    if not rows:
        return "(no figures)"
    return "\n".join(["| figure | value |", "|---|---|", *rows])


def _usage(kind: str, repo: str) -> str:
    if kind == "reward":
        return f'''```python
import torch
from transformers import AutoTokenizer, LlamaForSequenceClassification

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = LlamaForSequenceClassification.from_pretrained("{repo}").eval()
conversation = [{{"role": "user", "content": "What is 2 + 3?"}}, {{"role": "assistant", "content": "5."}}]
# The score is read at the final <|im_end|>: render the chat, drop the newline the template adds after it.
text = tokenizer.apply_chat_template(conversation, tokenize=False).removesuffix("\\n")
batch = tokenizer([text], add_special_tokens=False, return_tensors="pt")  # pad on the right if you batch
with torch.no_grad():
    raw = model(**batch).logits[:, 0]
score = model.config.reward_gain * raw + model.config.reward_bias  # picochat's normalised score
```'''
    if kind == "base":
        return f'''```python
from transformers import AutoTokenizer, AutoModelForCausalLM

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}")
# Documents start after <|endoftext|> in pretraining, so prompts should too.
inputs = tokenizer("<|endoftext|>Once upon a time", return_tensors="pt", add_special_tokens=False)
out = model.generate(**inputs, max_new_tokens=60, do_sample=True, temperature=0.8, top_p=0.95)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```'''
    return f'''```python
from transformers import AutoTokenizer, AutoModelForCausalLM

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}")
messages = [{{"role": "user", "content": "Hello! Who are you?"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=96, do_sample=False)  # stops at <|im_end|>
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```'''


def _training_line(meta: dict) -> str:
    parts = [f"Stage `{meta.get('stage', '?')}`"]
    parts += [f"{key} {meta[key]}" for key in ("step", "iterations") if key in meta]
    if meta.get("init"):
        parts.append(f"started from `{meta['init']}`")
    if meta.get("reward_model"):
        parts.append(f"reward model `{meta['reward_model']}`")
    return ", ".join(parts) + "."


def _reward_section(normalization: dict | None) -> list[str]:
    gain = (normalization or {}).get("gain", 1.0)
    bias = (normalization or {}).get("bias", 0.0)
    return [
        "## Reward score and its normalisation", "",
        ("The score head reads the hidden state at the last token of prompt + response: the response's "
         "closing `<|im_end|>` (without the newline the chat template puts after it). "
         "`LlamaForSequenceClassification` pools at the last non-pad token (`pad_token_id` is set), so pad "
         "batches on the right."), "",
        (f"picochat normalises raw scores so that SFT samples score mean 0 and standard deviation 1: "
         f"`score = reward_gain * logit + reward_bias` with `reward_gain = {gain:.6g}` and "
         f"`reward_bias = {bias:.6g}` (both in `config.json`, so `model.config.reward_gain` reads them)."), "",
    ]


def model_card(cfg: ModelConfig, meta: dict, kind: str, summary: dict | None, n_params: int,
               normalization: dict | None = None, repo: str = "path/to/this/directory") -> str:
    """README.md text for an exported model."""
    pipeline_tag, tags = KIND_TAGS[kind]
    stage = meta.get("stage", "?")
    if stage in ("ppo", "dpo"):
        tags = tags + ["rlhf"]
    architecture = "LlamaForSequenceClassification" if kind == "reward" else "LlamaForCausalLM"
    lines = [
        "---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "tags:", *[f"- {t}" for t in tags],
        "---", "",
        f"# picochat {stage} model: {STAGE_NAMES.get(stage, 'model')}", "",
        ("Trained with picochat (the full ChatGPT recipe — tokenizer, pretraining, SFT, reward model, "
         "PPO/DPO — at a size a laptop CPU trains), exported with `picochat export`. "
         f"Architecturally a Llama: it loads as `{architecture}`."), "",
        "## Architecture", "",
        "| | |",
        "|---|---|",
        f"| parameters | {n_params:,} |",
        f"| layers × width | {cfg.n_layers} × {cfg.d_model} |",
        f"| attention heads (key/value heads) | {cfg.n_heads} ({cfg.n_kv_heads}) |",
        f"| SwiGLU hidden width | {cfg.ffn_hidden} |",
        f"| vocabulary | {cfg.vocab_size:,} (byte-level BPE) |",
        f"| context | {cfg.max_seq_len} tokens (RoPE θ = {cfg.rope_theta:g}) |",
        f"| tied embeddings | {'yes' if cfg.tie_embeddings and kind != 'reward' else 'no'} |", "",
        "## Training", "",
        _training_line(meta), "",
    ]
    if summary:
        lines += [("Figures from the stage's `summary.json` (gold scores are the built-in world's scorer, "
                   "in [0, 1]; losses in nats per token):"), "", metrics_table(summary), ""]
    else:
        lines += ["No `summary.json` was found next to the weights (an intermediate checkpoint?), so no figures.", ""]
    lines += ["## Chat format", "",
              ("ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message; a reply ends with "
               "`<|im_end|>`. The Jinja template is in `tokenizer_config.json`, so `apply_chat_template` renders "
               "what picochat trained on. No BOS token is added."), ""]
    if kind == "reward":
        lines += _reward_section(normalization)
    world = summary is not None and any(k.startswith("gold") for k in summary)
    limitation = "A small model: its answers are not reliable facts."
    if world:
        limitation = ("Trained on picochat's built-in fictional world: it knows that world and nothing else. "
                      + limitation)
    lines += ["## Use with transformers", "", _usage(kind, repo), "", "## Limitations", "", limitation, ""]
    return "\n".join(lines)
