"""Presets, config files and dotted overrides."""

from __future__ import annotations

import pytest

from picochat.config import ConfigError, available_presets, build_config, parse_overrides, save_config


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
