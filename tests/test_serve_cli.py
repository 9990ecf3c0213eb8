"""`picochat serve` options, without loading a model: a bad port is a clear argparse error, the API
key comes from PICOCHAT_API_KEY (a key on the command line is visible in `ps`), and binding every
interface without a key or --allowed-hosts is refused before anything is loaded."""

import argparse

import pytest

from picochat.cli.serve import add_serve_arguments, cmd_serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="picochat serve")
    add_serve_arguments(p)
    return p


@pytest.mark.parametrize("port", ["99999", "-1", "eighty"])
def test_a_port_out_of_range_is_a_clear_error(port, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["--ckpt", "runs/tiny/sft", "--port", port])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--port" in err and "0..65535" in err and "Traceback" not in err
    assert parser().parse_args(["--ckpt", "d", "--port", "0"]).port == 0


def test_api_key_from_the_environment_is_preferred_and_documented(monkeypatch, capsys):
    from picochat.cli.serve import resolve_api_key

    help_text = " ".join(parser().format_help().split())
    assert "PICOCHAT_API_KEY" in help_text and "ps" in help_text
    monkeypatch.setenv("PICOCHAT_API_KEY", "from-env")
    assert resolve_api_key(parser().parse_args(["--ckpt", "d"])) == "from-env"
    assert capsys.readouterr().err == ""
    assert resolve_api_key(parser().parse_args(["--ckpt", "d", "--api-key", "typed"])) == "typed"
    assert "visible" in capsys.readouterr().err  # works, with a warning
    monkeypatch.delenv("PICOCHAT_API_KEY")
    assert resolve_api_key(parser().parse_args(["--ckpt", "d"])) is None


def test_binding_every_interface_without_key_or_allowed_hosts_is_refused(monkeypatch):
    pytest.importorskip("uvicorn")
    monkeypatch.delenv("PICOCHAT_API_KEY", raising=False)
    args = parser().parse_args(["--ckpt", "no/such/dir", "--host", "0.0.0.0"])
    with pytest.raises(ValueError, match="--allowed-hosts"):  # before the (missing) model is loaded
        cmd_serve(args)
    assert parser().parse_args(["--ckpt", "d", "--allowed-hosts", "a.example, b.example"]).allowed_hosts == [
        "a.example", "b.example"]


def test_labeling_page_offers_the_runs_world_prompts_when_no_file_is_given(run_dir, tmp_path, capsys):
    """A newcomer who opens /label on a demo model finds prompts to rank: the training prompts of
    the run's built-in world (those the label stage draws from), not an empty queue."""
    from picochat.cli.serve import label_store
    from picochat.layout import load_model_and_tokenizer

    _, tokenizer, _ = load_model_and_tokenizer(run_dir / "sft")
    args = argparse.Namespace(label_prompts=None, label_out=str(tmp_path / "labels.jsonl"), label_k=3,
                              ckpt=str(run_dir / "sft"))
    store = label_store(args, tokenizer, context=128)
    train_prompts = (run_dir / "world" / "chat_train.jsonl").read_text(encoding="utf-8")
    assert store.progress()["total"] > 10
    assert all(messages[-1]["content"] in train_prompts for messages in store.prompts.values())
    assert "prompts of the run's world" in capsys.readouterr().out
    elsewhere = argparse.Namespace(label_prompts=None, label_out=str(tmp_path / "l2.jsonl"), label_k=3,
                                   ckpt=str(tmp_path / "model"))  # a model outside any run: people type prompts
    assert label_store(elsewhere, tokenizer, context=128).progress()["total"] == 0
