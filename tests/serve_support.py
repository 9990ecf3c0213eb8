"""Helpers for the server tests: a tiny model that has learned fixed answers by heart, and a live
uvicorn server on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time

import torch

from picochat.core.chat import render_chat, render_prompt
from picochat.core.model import GPT, ModelConfig, lm_loss

# Greedy decoding of the memorizer reproduces these answers exactly.
ANSWERS = {
    "hi": "Hello there! 你好，猫狗世界。 The cat sat. The dog ran.",
    "count": "one two three four five six seven eight nine ten eleven twelve",
}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


_memorizers: dict[int, GPT] = {}


def memorizer(tokenizer) -> GPT:
    """train_memorizer, once per tokenizer per test session (several test files share it)."""
    if id(tokenizer) not in _memorizers:
        _memorizers[id(tokenizer)] = train_memorizer(tokenizer)
    return _memorizers[id(tokenizer)]


def train_memorizer(tokenizer, steps: int = 300, seed: int = 0) -> GPT:
    """A 2-layer GPT trained (assistant tokens only, as SFT does) until it answers ANSWERS by heart."""
    torch.manual_seed(seed)
    vocab = int(math.ceil(tokenizer.vocab_size / 64) * 64)
    model = GPT(ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                            max_seq_len=128))
    rows = [render_chat(tokenizer, user(q) + [{"role": "assistant", "content": a}]) for q, a in ANSWERS.items()]
    T = max(len(ids) for ids, _ in rows)
    inputs = torch.full((len(rows), T), tokenizer.pad_id)
    targets = torch.full((len(rows), T), -100)
    for i, (ids, mask) in enumerate(rows):
        inputs[i, :len(ids)] = torch.tensor(ids)
        shifted = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
        targets[i, :len(shifted)] = torch.tensor(shifted)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = lm_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    return model.eval()


def prompt_ids(tokenizer, question: str) -> list[int]:
    return render_prompt(tokenizer, user(question))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def labeling_server(tokenizer, out, prompts: list[list[dict]], **service_options):
    """A live server of the memorizer with the labeling page on (K=3, rankings to `out`), as
    `picochat serve --ckpt DIR --label-prompts ...` starts it; `live.out` is the rankings file."""
    from picochat.serve.api import create_app
    from picochat.serve.engine import BatchEngine
    from picochat.serve.labeling import LabelStore
    from picochat.serve.service import Service

    engine = BatchEngine(memorizer(tokenizer), tokenizer, threads=1).start()
    service = Service(engine=engine, tokenizer=tokenizer, labeling=LabelStore(out, prompts, k=3), **service_options)
    live = LiveServer(create_app(service))
    live.out = out
    try:
        yield live
    finally:
        live.stop()
        engine.stop()
