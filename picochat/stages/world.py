"""The world stage: generate the built-in fictional world, its EN/ZH pretraining corpus and its
chat tasks (SFT demonstrations and held-out prompts)."""

from __future__ import annotations

import time
from pathlib import Path

from picochat.config import RunConfig
from picochat.world import build_world, write_chat_tasks, write_world


def run(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    t0 = time.perf_counter()
    summary = write_world(out / "world", cfg.world)
    chat = write_chat_tasks(out / "world", build_world(cfg.world), cfg.chat)
    return {"stage": "world", **summary, "chat_tasks": chat, "wall_s": time.perf_counter() - t0}
