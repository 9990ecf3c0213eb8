"""Presets, config files and dotted overrides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from picochat.config import (
    ConfigError,
    SampleConfig,
    available_presets,
    build_config,
    parse_overrides,
    save_config,
)
from picochat.stages.pretrain import pretrain_model_config


def test_presets_load_and_validate():
    assert {"tiny", "small", "gpt2"} <= set(available_presets())
    for name in available_presets():
        cfg = build_config(name)
        assert cfg.preset == name
        assert cfg.pretrain.seq_len <= cfg.model.max_seq_len


def test_overrides_are_typed_and_relative_to_the_command_section():
    ov = parse_overrides(["train.lr=3e-4", "model.d_model=240", "train.compile=true", "sources=a.txt,b.jsonl"],
                         default_section="pretrain")
    assert ov == {"pretrain.train.lr": 3e-4, "model.d_model": 240, "pretrain.train.compile": True,
                  "pretrain.sources": "a.txt,b.jsonl"}
    cfg = build_config("tiny", overrides=ov)
    assert cfg.pretrain.train.lr == 3e-4 and isinstance(cfg.pretrain.train.lr, float)
    assert cfg.model.d_model == 240
    assert cfg.pretrain.train.compile is True
    assert cfg.pretrain.sources == ["a.txt", "b.jsonl"]


def test_frozen_world_section_can_be_overridden():
    cfg = build_config("tiny", overrides={"world.n_characters": 20, "world.corpus_mb": 0.5})
    assert cfg.world.n_characters == 20 and cfg.world.corpus_mb == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ({"pretrain.train.lrr": 1.0}, "unknown config key 'pretrain.train.lrr'"),
        ({"model.d_model": "big"}, "model.d_model: expected an integer"),
        ({"pretrain.train.max_steps": 0}, "train.max_steps must be > 0"),
        ({"pretrain.train.precision": "fp16"}, "train.precision must be"),
        ({"model.n_heads": 5}, "model:"),
        ({"world.colour": "red"}, "unknown config key"),
        ({"ppo.entropy_rows": "some"}, "ppo.entropy_rows must be all or reinforced"),
        ({"label.task_mix": "balanced"}, "label.task_mix must be one of natural, even"),
        ({"rm.ensemble": 0}, "rm.ensemble must be at least 1"),
        ({"rm.ensemble": 3, "rm.ensemble_combine": "median"}, "rm.ensemble_combine must be one of mean_minus_std"),
        ({"rm.ensemble": 3, "rm.ensemble_std_coef": -1.0}, "rm.ensemble_std_coef must be >= 0"),
        ({"rm.ensemble_combine": "min"}, "rm.ensemble is 1: there are no members to combine"),
        ({"rlhf.rounds": 0}, "rlhf.rounds must be at least 1"),
        ({"rlhf.policy_start": "rm"}, "rlhf.policy_start must be one of last, sft"),
        ({"rlhf.labeler": "crowd"}, "rlhf.labeler must be one of auto, people"),
        ({"rlhf.rounds": 2, "ppo.reward": "gold"}, "set ppo.reward=rm or rlhf.rounds=1"),
        ({"rlhf.rounds": 2, "rm.sources": ["x.jsonl"]}, "rm.sources is set"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config("tiny", overrides=override)


def test_unknown_preset_and_malformed_override():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_config("huge")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["train.lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = build_config("tiny", overrides={"pretrain.train.lr": 1e-3, "world.seed": 9})
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(preset=None, base_file=tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_config_file_layers_over_preset(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("pretrain:\n  train:\n    max_steps: 7\n", encoding="utf-8")
    cfg = build_config("tiny", config_file=f, overrides={"pretrain.train.batch_size": 3})
    assert cfg.pretrain.train.max_steps == 7 and cfg.pretrain.train.batch_size == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        build_config("tiny", config_file=bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"ppo.train.schedule": "wsd"}, "ppo.train.schedule='wsd' is not used: PPO's learning rate is constant"),
        ({"ppo.train.min_lr_ratio": 0.5}, "ppo.train.min_lr_ratio=0.5 is not used"),
        ({"ppo.train.batch_size": 8}, "ppo.rollout_prompts"),
        ({"ppo.train.eval_every": 5}, "PPO evaluates once, after training"),
        ({"ppo.train.tensorboard": True}, "ppo.train.tensorboard=True is not used"),
        ({"ppo.prompt_tokens": 4}, "ppo.format is chat"),
        ({"ppo.prompts": ["p.jsonl"], "ppo.eval_max_new_tokens": 32}, "the rollout length"),
        ({"rm.train.eval_batches": 4}, "all its held-out prompts"),
        ({"dpo.sources": ["d.jsonl"], "dpo.eval_samples": 2}, "dpo.kl_samples"),
        ({"sft.sources": ["s.jsonl"], "sft.eval_samples": 2}, "no gold scorer"),
        ({"model.head": "scalar"}, "model.head='scalar'"),
    ],
)
def test_settings_a_stage_does_not_read_are_rejected_with_the_reason(override, message):
    with pytest.raises(ConfigError, match="remove the key|Remove the key") as e:
        build_config("tiny", overrides=override)
    assert message in str(e.value)


def test_unread_settings_at_their_defaults_or_switched_on_are_accepted():
    build_config("tiny", overrides={"ppo.train.schedule": "cosine", "ppo.train.batch_size": 16})  # the defaults
    # a feature switched off by its own switch keeps its settings, ready to be switched on again
    cfg = build_config("tiny", overrides={"ppo.adaptive_kl": False, "ppo.kl_target": 3.0, "ppo.ptx_coef": 0.0,
                                          "ppo.ptx_batch_size": 4, "ppo.train.threads": 1, "sft.sources": ["s.jsonl"],
                                          "sft.eval_prompts": 0, "sft.eval_samples": 2})
    assert cfg.ppo.kl_target == 3.0 and cfg.ppo.ptx_batch_size == 4 and cfg.sft.eval_samples == 2


def test_a_saved_run_config_with_an_unread_setting_still_loads_unchanged(tmp_path, capsys):
    """A run started before the checks may have saved such a value: continuing it keeps the value
    (its stages' fingerprints hash it) and says it is not used; setting it anew is still an error."""
    cfg = build_config("tiny")
    cfg.ppo.train.schedule = "wsd"
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(preset=None, base_file=tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert "ppo.train.schedule='wsd'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="ppo.train.schedule='constant' is not used"):
        build_config(preset=None, base_file=tmp_path / "config.yaml", overrides={"ppo.train.schedule": "constant"})


def test_model_vocab_size_comes_from_the_tokenizer(capsys):
    tokenizer = SimpleNamespace(vocab_size=400)
    assert pretrain_model_config(build_config("tiny"), tokenizer).vocab_size == 448  # the default is replaced...
    assert "model.vocab_size 4,096 replaced by 448" in capsys.readouterr().out  # ...and a line says so
    same = build_config("tiny", overrides={"model.vocab_size": 448})
    assert pretrain_model_config(same, tokenizer).vocab_size == 448
    with pytest.raises(ConfigError, match="Set tokenizer.vocab_size"):
        pretrain_model_config(build_config("tiny", overrides={"model.vocab_size": 8192}), tokenizer)


def test_sample_config_converts_its_off_values_to_the_samplers():
    s = SampleConfig(top_k=0, top_p=1.0, seed=3).sampling(stop_ids=(7,))
    assert (s.top_k, s.top_p, s.seed, s.stop_ids) == (None, None, 3, (7,))
    s = SampleConfig(top_k=20, top_p=0.9).sampling()
    assert (s.top_k, s.top_p) == (20, 0.9)


def test_an_entropy_term_on_every_row_makes_ppo_forward_the_idle_rows_too():
    def skips(**ppo):
        return build_config("tiny", overrides={f"ppo.{k}": v for k, v in ppo.items()}).ppo.update_skips_idle_rows

    assert skips(advantage="best", entropy_coef=0.0)
    assert skips(advantage="best", entropy_coef=-0.05, entropy_rows="reinforced")
    assert not skips(advantage="best", entropy_coef=-0.05, entropy_rows="all")
    assert not skips(advantage="gae", samples_per_prompt=1)  # a value model reads every row
