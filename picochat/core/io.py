"""Crash-safe file writes and the metrics log every stage keeps.

A run may be killed at any moment (Ctrl-C, OOM killer, a closed laptop lid), so nothing is ever
written in place: files go to a temp name in the same directory and are renamed over the target,
which POSIX makes atomic. Directories of several files are swapped as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then atomically rename tmp_path to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def make_temp_dir(parent: Path, name: str) -> Path:
    """An empty `parent/.<name>.XXXX/` to write a directory into before `swap_in_directory`.

    Temp directories of earlier writes that were killed halfway are removed first: a directory
    has one writer at a time (rank 0 of one run), so any that exist now are orphans."""
    remove_orphan_temp_dirs(parent, name)
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))


def remove_orphan_temp_dirs(parent: Path, name: str) -> None:
    """Delete the `parent/.<name>.*` temp directories left by writes that were killed halfway."""
    for tmp in Path(parent).glob(f".{name}.*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_in_directory(tmp_dir: Path, final_dir: Path) -> None:
    """Replace `final_dir` by the fully written `tmp_dir`.

    The old directory is renamed to `<final>.old` first and deleted last, so at every instant
    either `final_dir` or `<final>.old` is a complete copy (see `resolve_swapped_directory`).
    """
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists() and final_dir.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def resolve_swapped_directory(final_dir: Path) -> Path | None:
    """The complete copy of a directory written with `swap_in_directory`, or None."""
    if final_dir.exists():
        return final_dir
    old = final_dir.with_name(final_dir.name + ".old")
    return old if old.exists() else None


class MetricsLog:
    """Append-only `metrics.jsonl`: one JSON object per logged step.

    On resume from step k, records after k are dropped first, so a resumed run's log reads as if
    the run had never stopped.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]
