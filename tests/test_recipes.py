"""Real-data recipes (sentiment, hh, chinese) and the coherence of every preset.

The end-to-end runs read a few hundred records of the public data copied into ../shared/data
(skipped when that folder is absent); nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest

from picochat.cli.main import main
from picochat.config import ConfigError, available_presets, build_config, save_config
from picochat.data.readers import CorpusError
from picochat.data.sources import parse_hf_spec, resolve_source
from picochat.run.pipeline import check_run
from picochat.run.registry import run_stages, upstream_of

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = {"sentiment": ["tokenizer", "pretrain", "rm", "ppo"], "hh": ["tokenizer", "pretrain", "sft", "rm", "ppo"],
           "chinese": ["tokenizer", "pretrain", "sft"]}
# A model and stages small enough for seconds, whatever the preset.
MICRO = ["tokenizer.vocab_size=512", "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=4",
         "model.ffn_hidden=128", "model.max_seq_len=128", "pretrain.seq_len=64", "pretrain.train.max_steps=30",
         "pretrain.train.eval_every=15", "pretrain.train.log_every=10", "pretrain.train.ckpt_every=15",
         "pretrain.sample.max_new_tokens=12"]


def _head_jsonl(src: Path, n: int, dst: Path) -> Path:
    with gzip.open(src, "rt", encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for _, line in zip(range(n), f):
            out.write(line)
    return dst


def _needs_shared_data(*names: str) -> None:
    for name in names:
        if not (SHARED_DATA / name).exists():
            pytest.skip(f"{SHARED_DATA / name} not present")


def test_every_preset_is_coherent_and_states_time_and_memory():
    for name in available_presets():
        cfg = build_config(name)
        check_run(cfg)  # every stage finds what it reads; sequence lengths fit the model
        path = Path(__file__).resolve().parents[1] / "picochat" / "configs" / f"{name}.yaml"
        text = path.read_text(encoding="utf-8")
        header = " ".join(line for line in text.splitlines() if line.startswith("#"))
        expected = header[header.find("Expected"):]
        assert "Expected" in header and re.search(r"\d ?(min|h)\b", expected), f"{name}.yaml: no expected time"
        assert re.search(r"memory ≈\d", expected), f"{name}.yaml: no expected memory"
    for name, stages in RECIPES.items():
        cfg = build_config(name)
        assert run_stages(cfg) == stages
        specs = [*cfg.pretrain.sources, *cfg.sft.sources, *cfg.rm.sources, *cfg.ppo.prompts]
        assert specs and all(parse_hf_spec(s)["path"] for s in specs)  # Hugging Face names by default


def test_recipe_stages_read_the_models_they_name():
    cfg = build_config("sentiment")
    assert upstream_of("tokenizer", cfg) == []  # learns from the pretraining corpus, not the world
    assert upstream_of("rm", cfg) == ["pretrain"]  # no SFT, no labels: scalar-labelled reviews
    assert upstream_of("ppo", cfg) == ["rm", "pretrain"]
    assert cfg.ppo.format == "text" and cfg.rm.loss == "bce"
    tiny = build_config("tiny")
    assert upstream_of("ppo", tiny) == ["sft", "rm", "world"] and run_stages(tiny)[0] == "world"
    with pytest.raises(ValueError, match="reads stage 'pretrain', which this run does not have"):
        check_run(build_config("sentiment", overrides={"stages": ["tokenizer", "rm", "ppo"]}))
    with pytest.raises(ConfigError, match="ppo.format=text needs ppo.prompts"):
        build_config("tiny", overrides={"ppo.format": "text"})


def test_data_root_and_a_missing_source_say_how_to_get_the_data(tmp_path, capsys):
    cfg = build_config("sentiment", overrides={"data_root": str(tmp_path), "pretrain.sources": ["unsup.jsonl"],
                                               "rm.sources": ["hf:stanfordnlp/imdb?split=train"]})
    assert cfg.pretrain.sources == [str(tmp_path / "unsup.jsonl")]
    assert cfg.rm.sources == ["hf:stanfordnlp/imdb?split=train"]  # names on the Hub stay names
    save_config(cfg, tmp_path / "config.yaml")  # a saved run config resolves to the same paths again
    assert build_config(preset=None, base_file=tmp_path / "config.yaml").pretrain.sources == cfg.pretrain.sources
    assert main(["run", "--preset", "sentiment", "--out", str(tmp_path / "run"), "--no-progress",
                 f"data_root={tmp_path}", "pretrain.sources=[unsup.jsonl]"]) == 2
    err = capsys.readouterr().err
    assert "unsup.jsonl" in err and "no such file" in err and "pretrain.sources=[" in err and "hf:" in err
    with pytest.raises(CorpusError, match="from rm.sources"):  # found before the first stage runs
        check_run(build_config("sentiment", overrides={"rm.sources": [str(tmp_path / "train.jsonl")]}))


def test_hf_source_needs_datasets_and_is_downloaded_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PICOCHAT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(CorpusError, match=r"pip install 'picochat\[hf\]'.*pretrain.sources=\["):
        resolve_source("hf:stanfordnlp/imdb?split=unsupervised", "pretrain.sources")
    calls = []

    def load_dataset(path, name=None, data_dir=None, split="train", streaming=False):
        calls.append((path, name, data_dir, split, streaming))
        return iter([{"text": f"review {i}", "label": i % 2} for i in range(10)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = "hf:Anthropic/hh-rlhf?data_dir=harmless-base&split=test&limit=4"
    first = resolve_source(spec, "rm.sources")
    again = resolve_source(spec, "rm.sources")
    assert first == again and first.parent == tmp_path / "datasets"
    assert calls == [("Anthropic/hh-rlhf", None, "harmless-base", "test", True)]  # limit: streamed, once
    rows = [json.loads(x) for x in gzip.open(first, "rt", encoding="utf-8")]
    assert rows == [{"text": f"review {i}", "label": i % 2} for i in range(4)]
    with pytest.raises(CorpusError, match="unknown option 'splt'"):
        parse_hf_spec("hf:imdb?splt=train")


def test_scalar_label_reward_model_learns_with_bce(run_dir, tmp_path):
    """Scalar labels end to end: texts whose last words carry the label, a bce reward model from
    the session's pretrained model; the loss falls and held-out texts are told apart."""
    corpus = (run_dir / "world" / "corpus.jsonl").read_text(encoding="utf-8")
    docs = [json.loads(x)["text"] for x in corpus.splitlines()]
    data = tmp_path / "labels.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs[:240]):
            label = i % 2
            f.write(json.dumps({"text": doc[:150] + (" It was wonderful." if label else " It was awful."),
                                "label": label}) + "\n")
    out = tmp_path / "rm_run"
    args = [f"init={run_dir / 'pretrain'}", f"sources={data}", "loss=bce", "normalize=none", "seq_len=48",
            "val_fraction=0.2", "train.max_steps=60", "train.batch_size=8", "train.lr=0.005", "train.eval_every=30",
            "train.log_every=5", "train.ckpt_every=30", "train.precision=fp32"]
    assert main(["rm", "--out", str(out), "--no-progress", *args]) == 0
    summary = json.loads((out / "rm" / "summary.json").read_text())
    losses = [json.loads(x)["loss"] for x in (out / "rm" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert summary["loss"] == "bce" and summary["n_scalar"] > 30
    assert sum(losses[-2:]) / 2 < 0.5 * losses[0], losses  # from ≈ln 2 towards 0
    # ~46 held-out texts: one text is 0.02 of accuracy; chance is 0.5. fp32, so that a CPU without
    # fast bf16 computes the same figures (measured: final loss 0.03-0.08 over seeds 1, 2, 1337).
    assert summary["scalar_accuracy"] > 0.85 and summary["scalar_auc"] > 0.95
    assert summary["score_mean_positive"] > summary["score_mean_negative"]


def test_sentiment_recipe_micro_run_end_to_end(tmp_path, capsys):
    _needs_shared_data("pretrain_en/imdb_unsup_10k.jsonl.gz", "sentiment/imdb_train_10k.jsonl.gz",
                       "sentiment/imdb_test_2k.jsonl.gz")
    _head_jsonl(SHARED_DATA / "pretrain_en/imdb_unsup_10k.jsonl.gz", 300, tmp_path / "unsup.jsonl")
    _head_jsonl(SHARED_DATA / "sentiment/imdb_train_10k.jsonl.gz", 300, tmp_path / "train.jsonl")
    _head_jsonl(SHARED_DATA / "sentiment/imdb_test_2k.jsonl.gz", 200, tmp_path / "test.jsonl")
    out = tmp_path / "run"
    args = ["run", "--preset", "sentiment", "--out", str(out), "--no-progress", f"data_root={tmp_path}",
            "pretrain.sources=[unsup.jsonl]", "rm.sources=[train.jsonl]", "ppo.prompts=[test.jsonl]", *MICRO,
            "rm.seq_len=64", "rm.train.max_steps=10", "rm.train.batch_size=8", "rm.train.eval_every=5",
            "rm.train.log_every=5", "rm.train.ckpt_every=5", "ppo.train.max_steps=3", "ppo.rollout_prompts=8",
            "ppo.minibatch_size=4", "ppo.max_new_tokens=8", "ppo.eval_prompts=16", "ppo.eval_samples=1"]
    assert main(args) == 0
    for stage in ("tokenizer", "pretrain", "rm", "ppo"):
        assert (out / stage / "summary.json").exists(), stage
    assert not any((out / stage).exists() for stage in ("world", "sft", "label", "dpo"))
    rm = json.loads((out / "rm" / "summary.json").read_text())
    assert rm["loss"] == "bce" and 0 <= rm["scalar_accuracy"] <= 1 and rm["normalization"] == {"gain": 1.0, "bias": 0.0}
    ppo = json.loads((out / "ppo" / "summary.json").read_text())
    assert ppo["baseline"] == "pretrain" and ppo["reward_eval_prompts"] == 16 and ppo["reward_eval_samples"] == 16
    for key in ("reward_before_mean", "reward_before_median", "reward_after_mean", "reward_after_median", "kl"):
        assert isinstance(ppo[key], float), key
    assert "gold_score" not in ppo  # no world, no gold scorer
    sample = ppo["samples"][0]
    assert sample["prompt"] and isinstance(sample["after_reward"], float)
    assert (out / "ppo" / "samples.md").read_text(encoding="utf-8").startswith("# PPO vs pretrain")
    assert json.loads((out / "ppo" / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    log = [json.loads(x) for x in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3] and "gold_score" not in log[-1]
    capsys.readouterr()
    assert main(args) == 0  # everything reused
    assert capsys.readouterr().out.count("up to date") == 4


def test_chinese_recipe_micro_tokenizer_pretrain_and_sft(tmp_path):
    _needs_shared_data("sentiment/waimai_10k.jsonl.gz", "sft_zh/llamafactory_alpaca_zh_demo.jsonl.gz")
    _head_jsonl(SHARED_DATA / "sentiment/waimai_10k.jsonl.gz", 1500, tmp_path / "reviews.jsonl")
    _head_jsonl(SHARED_DATA / "sft_zh/llamafactory_alpaca_zh_demo.jsonl.gz", 80, tmp_path / "alpaca_zh.jsonl")
    out = tmp_path / "run"
    assert main(["run", "--preset", "chinese", "--out", str(out), "--no-progress", f"data_root={tmp_path}",
                 "pretrain.sources=[reviews.jsonl]", "sft.sources=[alpaca_zh.jsonl]", *MICRO,
                 "tokenizer.vocab_size=1200", "sft.seq_len=96", "sft.train.max_steps=4", "sft.train.batch_size=4",
                 "sft.train.eval_every=2", "sft.train.eval_batches=2", "sft.train.log_every=2",
                 "sft.val_fraction=0.2"]) == 0
    from picochat.core.tokenizer import Tokenizer

    tok = Tokenizer.load(out / "tokenizer" / "tokenizer.json")
    for ch in "的好吃送":
        assert len(tok.encode(ch)) == 1, ch  # frequent characters are tokens of their own
    tokenizer_summary = json.loads((out / "tokenizer" / "summary.json").read_text())
    assert tokenizer_summary["bytes_per_token"] > 2.0  # ≈ a character (3 UTF-8 bytes) or more per token
    pre = json.loads((out / "pretrain" / "summary.json").read_text())
    assert pre["val_loss"] < 0.85 * math.log(tokenizer_summary["vocab_size"])  # well below a uniform guess
    prompts = build_config("chinese").pretrain.sample.prompts
    continuations = "".join(s[len(p):] for p, s in zip(prompts, pre["samples"]))
    assert sum("\u4e00" <= c <= "\u9fff" for c in continuations) > len(continuations) / 3  # continues in Chinese
    sft = json.loads((out / "sft" / "summary.json").read_text())
    assert sft["n_conversations_read"] == 80 and sft["val_loss"] > 0 and "gold_score" not in sft
    assert sft["samples"] and all(s["prompt"] and "reference" in s for s in sft["samples"])  # held-out answers
    assert (out / "sft" / "samples.md").read_text(encoding="utf-8").startswith("# SFT model answers")
    assert not (out / "world").exists()


def test_ppo_prompts_from_files_in_every_shape(tmp_path, world_tokenizer):
    from picochat.config import PPOConfig
    from picochat.data.ppo_prompts import load_ppo_prompts, split_held_out

    chat = tmp_path / "prompts.jsonl"
    lines = [
        {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi there\n\nAssistant: What."},
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
        {"instruction": "把这句话翻译成英文", "input": "你好", "output": "Hello"},
        {"prompt": "Tell me a story."},
        {"prompt": "Tell me a story."},  # the same prompt twice is one prompt
        {"prompt": "x " * 400},  # too long to leave room for an answer
        {"chosen": "no dialogue", "rejected": "here"},  # invalid: skipped and reported
    ]
    chat.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    sets = load_ppo_prompts(PPOConfig(prompts=[str(chat)], eval_prompts=0, max_new_tokens=32), tmp_path,
                            world_tokenizer, max_seq_len=256)
    assert [p[-1]["content"] for p in sets.train] == ["Hi there", "Name a colour.", "把这句话翻译成英文\n\n你好",
                                                      "Tell me a story."]
    assert sets.n_too_long == 1 and sets.held_out == []
    assert len(sets.problems) == 1 and "prompts.jsonl, line 7" in sets.problems[0]

    text = tmp_path / "reviews.jsonl"
    text.write_text("".join(json.dumps({"review": f"{i:03d} was a film, and something else entirely."}) + "\n"
                            for i in range(40)) + json.dumps({"review": "Hi"}) + "\n", encoding="utf-8")
    pcfg = PPOConfig(prompts=[str(text)], format="text", prompt_field="review", prompt_tokens=3, eval_prompts=5)
    sets = load_ppo_prompts(pcfg, tmp_path, world_tokenizer, max_seq_len=128)
    assert len(sets.train) == 35 and len(sets.held_out) == 5  # "Hi" has nothing left to continue
    assert sorted(sets.train + sets.held_out) == [f"{i:03d}" for i in range(40)]  # the first 3 tokens
    again = load_ppo_prompts(pcfg, tmp_path, world_tokenizer, max_seq_len=128)
    assert again.held_out == sets.held_out  # the same prompts are held out on every run
    train, held = split_held_out(list("abcdefgh"), 100)
    assert len(held) == 2 and sorted(train + held) == list("abcdefgh")  # at most a quarter held out
