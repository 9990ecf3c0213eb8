"""`picochat chat`: talk to a trained model in the terminal, one turn after another.

The whole conversation so far is rendered with the chat template every turn (no KV cache is
kept between turns: simple, and cheap at picochat's sizes). The reply streams as it is sampled
and stops at <|im_end|>. Typing `/reset` starts over (the system prompt stays); `/quit` or
end of input (Ctrl-D) exits. Works the same when stdin is a pipe, which is how tests drive it:

    printf 'hello\\n你好\\n' | picochat chat --ckpt runs/tiny/sft

With `--url` the same conversation runs against a server (`picochat serve`, or any
OpenAI-compatible API) instead of a local checkpoint:

    picochat chat --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import torch

from picochat.cli.chat_remote import RemoteReplier
from picochat.core.chat import render_prompt
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT
from picochat.core.precision import autocast, default_device, resolve_precision
from picochat.core.text_stream import IncrementalDecoder
from picochat.core.tokenizer import Tokenizer
from picochat.layout import load_model_and_tokenizer

USER_MARK = "you> "
BOT_MARK = "bot> "
HELP = "(/reset starts a new conversation, /quit exits)"


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", default=None,
                        help="model directory, or a stage directory such as runs/tiny/sft")
    parser.add_argument("--url", default=None,
                        help="chat with a running server instead, e.g. http://127.0.0.1:8000 (picochat serve)")
    parser.add_argument("--api-key", default=None, help="API key of the server (--url)")
    parser.add_argument("--model", default=None, help="model id on the server (--url; default: its first model)")
    parser.add_argument("--system", default=None, help="system prompt (kept across /reset)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling; 1 = off")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible replies")
    parser.add_argument("--compile", action="store_true",
                        help="decode with a compiled step (--ckpt): the first two replies wait while it compiles "
                             "(about 10 s each on a 2-core CPU, less once inductor's disk cache has it), later "
                             "ones stream 2-2.5x faster on a CPU (bench/README.md)")


def cmd_chat(args, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout  # looked up per call: tests and pipes replace them
    """Load the model of `args.ckpt` (or connect to `args.url`) and chat until /quit or end of
    input. Returns an exit code."""
    if (args.ckpt is None) == (args.url is None):
        raise ValueError("give either --ckpt DIR (a local model) or --url URL (a running server)")
    replier = RemoteReplier(args, stdout) if args.url else local_replier(args, stdout)
    chat_loop(replier, args.system, stdin, stdout)
    return 0


def local_replier(args, stdout: TextIO) -> LocalReplier:
    """The model of `args.ckpt`, loaded on the best device, with the sampling the options ask for."""
    device = default_device()
    model, tokenizer, _ = load_model_and_tokenizer(args.ckpt, device)
    model.eval()
    max_new_tokens = args.max_new_tokens
    if max_new_tokens > model.cfg.max_seq_len // 2:
        # A reply may not take the whole context: leave at least half of it for the conversation.
        max_new_tokens = max(1, model.cfg.max_seq_len // 2)
        stdout.write(f"(--max-new-tokens {args.max_new_tokens} is too long for this model's "
                     f"{model.cfg.max_seq_len}-token context; using {max_new_tokens})\n")
    if args.seed is not None:
        torch.manual_seed(args.seed)  # one seed for the session, so every turn differs but reruns repeat
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k if args.top_k and args.top_k > 0 else None,
        top_p=args.top_p if args.top_p and args.top_p < 1 else None,
        stop_ids=(tokenizer.im_end_id, tokenizer.eot_id),
    )
    return LocalReplier(model, tokenizer, sampling, resolve_precision("auto", device),
                        compiled=args.compile)


def fit_history(tokenizer: Tokenizer, system: str | None, history: list[dict], max_prompt_tokens: int
                ) -> tuple[list[int] | None, int]:
    """Drop the oldest turns of `history` (in place) until the prompt fits max_prompt_tokens.

    Returns (prompt ids or None if even the last user message alone does not fit, turns dropped).
    The system prompt is never dropped; a turn is a user message and the reply that follows it.
    """
    head = [{"role": "system", "content": system}] if system else []
    dropped = 0
    while True:
        prompt = render_prompt(tokenizer, head + history)
        if len(prompt) <= max_prompt_tokens:
            return prompt, dropped
        if len(history) <= 1:
            return None, dropped
        del history[0]  # the oldest user message ...
        if len(history) > 1 and history[0]["role"] == "assistant":
            del history[0]  # ... and the reply to it
        dropped += 1


class _Streamer:
    """Prints a reply as tokens arrive without ever splitting a UTF-8 character.

    One Chinese character is often 2-3 byte tokens; `IncrementalDecoder` (shared with the
    server) holds a character back until its last byte token arrives.
    """

    def __init__(self, tokenizer: Tokenizer, stdout: TextIO):
        self.tokenizer, self.stdout = tokenizer, stdout
        self.decoder = IncrementalDecoder(tokenizer)
        self.printed = ""

    def _emit(self, text: str) -> None:
        if text:
            self.stdout.write(text)
            self.stdout.flush()
            self.printed += text

    def on_token(self, row: int, token: int) -> None:
        self._emit(self.decoder.push(token))

    def finish(self) -> str:
        self._emit(self.decoder.flush())  # anything held back (an incomplete character at the very end)
        return self.printed


class LocalReplier:
    """Answers with a model loaded in this process: fits the conversation into the context
    (dropping the oldest turns) and streams the reply. Returns the reply, or None if the last
    message alone is too long."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, sampling: SamplingConfig, precision: str,
                 compiled: bool = False):
        self.model, self.tokenizer, self.sampling, self.precision = model, tokenizer, sampling, precision
        self.compiled = compiled

    def __call__(self, system: str | None, history: list[dict], stdout: TextIO) -> str | None:
        model, sampling = self.model, self.sampling
        max_prompt_tokens = model.cfg.max_seq_len - sampling.max_new_tokens
        prompt, dropped = fit_history(self.tokenizer, system, history, max_prompt_tokens)
        if prompt is None:
            stdout.write(f"(that message is too long for this model's {model.cfg.max_seq_len}-token "
                         f"context with replies of up to {sampling.max_new_tokens} tokens; "
                         "please shorten it)\n")
            return None
        if dropped:
            stdout.write(f"(the conversation is longer than the model's context; "
                         f"forgot the oldest {dropped} turn{'s' if dropped > 1 else ''})\n")
        stdout.write(BOT_MARK)
        stdout.flush()
        streamer = _Streamer(self.tokenizer, stdout)
        with autocast(self.precision, next(model.parameters()).device):
            generate(model, [prompt], sampling, pad_id=self.tokenizer.pad_id, on_token=streamer.on_token,
                     compiled=self.compiled)
        return streamer.finish()


def chat_loop(reply, system: str | None, stdin: TextIO, stdout: TextIO) -> None:
    """Read user lines from stdin and answer each, keeping the conversation, until /quit or EOF.

    reply(system, history, stdout) streams an answer to the conversation (which ends with the
    new user message) and returns its text, or None when it could not answer (it says why).
    """
    # A terminal shows what the user types; piped input is not shown, so echo it for a readable log.
    echo = not (hasattr(stdin, "isatty") and stdin.isatty())
    history: list[dict] = []
    stdout.write(HELP + "\n")
    while True:
        command = read_line(stdin, stdout, echo)
        if command is None or command == "/quit":
            return
        if command == "/reset":
            history.clear()
            stdout.write("(conversation cleared)\n")
        elif command:
            take_turn(reply, system, history, command, stdout)


def read_line(stdin: TextIO, stdout: TextIO, echo: bool) -> str | None:
    """The user's next line, stripped, after the prompt mark; None at end of input (or Ctrl-C)."""
    stdout.write(USER_MARK)
    stdout.flush()
    try:
        line = stdin.readline()
    except KeyboardInterrupt:
        line = ""
    if not line:  # end of input
        stdout.write("\n")
        return None
    text = line.rstrip("\r\n")
    if echo:
        stdout.write(text + "\n")
    return text.strip()


def take_turn(reply, system: str | None, history: list[dict], text: str, stdout: TextIO) -> None:
    """Answer one user message; the conversation keeps the message only when it got an answer."""
    history.append({"role": "user", "content": text})
    try:
        answer = reply(system, history, stdout)
    except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat
        history.pop()
        stdout.write("\n(interrupted)\n")
        return
    if answer is None:
        history.pop()
        return
    history.append({"role": "assistant", "content": answer})
    stdout.write("\n")
