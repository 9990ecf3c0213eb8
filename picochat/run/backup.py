"""A stage that is redone is moved aside, not deleted, until its replacement is complete.

Redoing a stage used to start with deleting its directory, so a typo in a setting (a misspelt
source file, a malformed line in it) cost the finished model and its checkpoints. Now the old
directory is renamed to `<stage>.previous` and the run's `config.yaml` is kept in memory:

- the new stage completes: `<stage>.previous` is deleted;
- the new stage fails or is interrupted before it saved any work of its own (no checkpoint, no
  labels): its directory is removed, the previous one and the previous config.yaml come back, and
  the run directory is exactly as it was before the command;
- it fails after it saved work: both are kept, the new one to resume, the previous one to go back
  to by hand (the message says where).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from picochat.core.io import atomic_write_text, resolve_swapped_directory

ASIDE_SUFFIX = ".previous"
REPLACED_SUFFIX = ".replaced"  # an unfinished attempt set aside while the previous one is still kept


def aside_dir(stage_dir: Path) -> Path:
    return stage_dir.with_name(stage_dir.name + ASIDE_SUFFIX)


def has_own_work(stage_dir: Path) -> bool:
    """Whether a stage directory holds work that took time and is not in a finished stage: a
    checkpoint to resume from, rankings already gathered (the label stage appends them), or a
    finished part of the stage (an ensemble's member, a later RLHF round's step), at any depth:
    `rm/members/1/checkpoint` and `rounds/round_2/label/preferences.jsonl` count as the stage's own."""
    for folder in [stage_dir, *(d for d in stage_dir.rglob("*") if d.is_dir())]:
        if resolve_swapped_directory(folder / "checkpoint") is not None:
            return True
        if any(p.stat().st_size > 0 for p in folder.glob("preferences*.jsonl")):
            return True
        if folder != stage_dir and ((folder / "summary.json").exists() or (folder / "member.json").exists()):
            return True
    return False


class StageBackup:
    """Set `stage_dir` (and the run's config file) aside while the stage is redone.

    `set_aside()` (or `remember_config()`) before anything is written; then exactly one of `commit()` (the new stage is
    complete) or `rollback()` (it failed or was interrupted)."""

    def __init__(self, stage_dir: Path, config_file: Path):
        self.stage_dir = Path(stage_dir)
        self.config_file = Path(config_file)
        self.aside = aside_dir(self.stage_dir)
        self.replaced = self.stage_dir.with_name(self.stage_dir.name + REPLACED_SUFFIX)
        self.config_text: str | None = None
        self.moved: list[tuple[Path, Path]] = []  # (original, where it went)

    def remember_config(self) -> str:
        """Keep the run's config file as it is now, for `rollback` (a stage run for the first time, or
        resumed, moves nothing aside but may still fail on a bad setting)."""
        self.config_text = self.config_file.read_text(encoding="utf-8") if self.config_file.exists() else None
        return ""

    def set_aside(self) -> str:
        """Move the stage directory out of the way; returns a sentence saying where it went."""
        self.remember_config()
        if not self.stage_dir.exists():
            return ""
        if self.aside.exists():
            # An earlier redo never completed: `.previous` still holds the last finished stage and
            # the directory is that attempt. Keep the finished one; park the attempt until this
            # command either replaces it (commit) or fails (rollback puts it back).
            if self.replaced.exists():
                shutil.rmtree(self.replaced)
            os.replace(self.stage_dir, self.replaced)
            self.moved.append((self.stage_dir, self.replaced))
            return f"the earlier finished stage stays in {self.aside} until this one completes"
        os.replace(self.stage_dir, self.aside)
        self.moved.append((self.stage_dir, self.aside))
        return f"the previous one is kept in {self.aside} until this one completes"

    def commit(self) -> None:
        for path in (self.replaced, self.aside):
            if path.exists():
                shutil.rmtree(path)

    def rollback(self) -> str:
        """Undo `set_aside` when the new attempt saved nothing; returns a sentence for the user."""
        if self.stage_dir.exists() and has_own_work(self.stage_dir):
            kept = [str(where) for _, where in self.moved if where.exists()]
            return ("this attempt saved a checkpoint, so it is kept to resume (rerun the same command)"
                    + (f"; the stage it replaces is in {' and '.join(kept)}" if kept else ""))
        if self.stage_dir.exists():
            shutil.rmtree(self.stage_dir)
        for original, where in reversed(self.moved):
            if where.exists():
                os.replace(where, original)
        if self.config_text is None:
            self.config_file.unlink(missing_ok=True)
        else:
            atomic_write_text(self.config_file, self.config_text)
        return f"nothing was changed: {self.stage_dir} and {self.config_file.name} are as they were"
