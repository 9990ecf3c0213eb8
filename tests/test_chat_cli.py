"""Terminal chat tests: a tiny random model driven through a pipe (io.StringIO)."""

import argparse
import io
import math

import pytest
import torch

import picochat.cli.chat as chat_cli
from picochat.cli.chat import _Streamer, add_chat_arguments, cmd_chat, fit_history
from picochat.core.chat import render_prompt
from picochat.core.checkpoint import write_model_dir
from picochat.core.model import GPT, ModelConfig
from picochat.core.tokenizer import train_tokenizer

LINES = ["hello there, how are you? again and again.", "你好，今天天气很好。我们去公园吧。"] * 50


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(LINES, vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat_model")
    torch.manual_seed(0)
    vocab = int(math.ceil(tok.vocab_size / 64) * 64)
    model = GPT(ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                            ffn_hidden=64, max_seq_len=128))
    tok_file = tok.save(out / "tok")
    write_model_dir(out / "model", model, tok_file)
    return out / "model"


def parse_args(*argv):
    parser = argparse.ArgumentParser()
    add_chat_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults():
    args = parse_args("--ckpt", "x")
    assert (args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.system, args.seed) == (
        0.7, 0, 0.95, 256, None, None)


def test_chat_through_a_pipe(model_dir, tok, monkeypatch):
    prompts = []
    real_generate = chat_cli.generate

    def spy(model, batch, cfg, **kw):
        prompts.append(batch[0])
        return real_generate(model, batch, cfg, **kw)

    monkeypatch.setattr(chat_cli, "generate", spy)
    stdin = io.StringIO("hello\n\n你好\n/reset\nagain\n/quit\nnever read\n")
    stdout = io.StringIO()
    args = parse_args("--ckpt", str(model_dir), "--system", "Be kind.", "--max-new-tokens", "8", "--seed", "1")
    assert cmd_chat(args, stdin=stdin, stdout=stdout) == 0
    out = stdout.getvalue()
    assert out.count("bot> ") == 3 and len(prompts) == 3
    assert "you> hello\n" in out and "you> 你好\n" in out  # piped input is echoed
    assert "(conversation cleared)" in out
    assert "never read" not in out  # /quit stopped reading
    system = {"role": "system", "content": "Be kind."}
    # The second turn saw the first; after /reset only the system prompt and the new message.
    assert tok.decode(prompts[1]).count("<|im_start|>user") == 2
    assert prompts[2] == render_prompt(tok, [system, {"role": "user", "content": "again"}])


def test_long_max_new_tokens_is_clamped_and_eof_exits(model_dir):
    stdout = io.StringIO()
    args = parse_args("--ckpt", str(model_dir), "--temperature", "0", "--max-new-tokens", "1000")
    assert cmd_chat(args, stdin=io.StringIO("hi\n"), stdout=stdout) == 0  # EOF after one turn
    out = stdout.getvalue()
    assert "using 64" in out and out.count("bot> ") == 1


def test_fit_history_drops_oldest_turns_keeps_system(tok):
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": "again " * 5}]
    history.append({"role": "user", "content": "last"})
    full = render_prompt(tok, [{"role": "system", "content": "S"}] + history)
    prompt, dropped = fit_history(tok, "S", history, max_prompt_tokens=len(full) // 2)
    assert dropped >= 1 and len(prompt) <= len(full) // 2
    assert history[0]["role"] == "user" and history[-1]["content"] == "last"
    assert tok.decode(prompt).startswith("<|im_start|>system\nS<|im_end|>\n")
    assert "hello 0" not in tok.decode(prompt)
    # Even the last message alone does not fit: the caller is told (None), nothing is invented.
    assert fit_history(tok, "S", [{"role": "user", "content": "x"}], max_prompt_tokens=3)[0] is None


def test_streamer_never_splits_a_character(tok):
    stdout = io.StringIO()
    streamer = _Streamer(tok, stdout)
    text = "你好，猫狗é"  # 猫, 狗 and é are not in the training text: several byte tokens each
    writes = []
    stdout.write = lambda s: writes.append(s)  # record each chunk
    byte_ids = tok.encode(text)
    assert len(byte_ids) > len(text)
    for token in byte_ids:
        streamer.on_token(0, token)
    assert streamer.finish() == text
    assert "".join(writes) == text
    assert all("\ufffd" not in w for w in writes)


def test_compiled_chat_replies_as_the_eager_one(model_dir, monkeypatch):
    """--compile decodes each reply with the compiled step: greedy replies are the eager ones."""
    asked = []
    real_generate = chat_cli.generate

    def spy(model, batch, cfg, **kw):
        asked.append(kw.get("compiled", False))
        return real_generate(model, batch, cfg, **kw)

    monkeypatch.setattr(chat_cli, "generate", spy)
    replies = {}
    for flags in ((), ("--compile",)):
        stdout = io.StringIO()
        args = parse_args("--ckpt", str(model_dir), "--temperature", "0", "--max-new-tokens", "12", *flags)
        assert cmd_chat(args, stdin=io.StringIO("hello\nwho are you?\n"), stdout=stdout) == 0
        replies[flags] = stdout.getvalue()
    assert replies[()].count("bot> ") == 2
    assert replies[("--compile",)] == replies[()]
    assert asked == [False, False, True, True]  # two turns each, the second chat compiled
