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
