"""Write a world and its corpus to disk: world.json (the facts and the config that drew them)
and corpus.jsonl (one document per line). Both files are written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from picochat.world.corpus import generate_corpus
from picochat.world.entities import World, WorldConfig, build_world


def _atomic_writer(path: Path):
    """A text file in path's directory that becomes `path` only by os.replace (see _commit)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return os.fdopen(fd, "w", encoding="utf-8", newline="\n"), Path(tmp)


def _commit(f, tmp: Path, path: Path) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)


def write_world(out_dir: str | os.PathLike, cfg: WorldConfig | None = None) -> dict:
    """Build the world for cfg (default WorldConfig()), write out_dir/world.json and
    out_dir/corpus.jsonl, return a summary {n_characters, n_places, n_docs, n_bytes (UTF-8 bytes
    of document text), n_docs_zh, n_docs_arithmetic}."""
    if cfg is None:
        cfg = WorldConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(cfg)
    summary = {"n_characters": len(world.characters), "n_places": len(world.places),
               "n_docs": 0, "n_bytes": 0, "n_docs_zh": 0, "n_docs_arithmetic": 0}

    f, tmp = _atomic_writer(out / "corpus.jsonl")
    try:
        for doc in generate_corpus(world, cfg):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            summary["n_docs"] += 1
            summary["n_bytes"] += len(doc["text"].encode("utf-8"))
            summary["n_docs_zh"] += doc["lang"] == "zh"
            summary["n_docs_arithmetic"] += doc["kind"] == "arithmetic"
        _commit(f, tmp, out / "corpus.jsonl")
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise

    f, tmp = _atomic_writer(out / "world.json")
    try:
        json.dump({"config": asdict(cfg), "world": world.to_dict(), "summary": summary},
                  f, ensure_ascii=False, indent=1)
        _commit(f, tmp, out / "world.json")
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    return summary


def read_world(path: str | os.PathLike) -> tuple[World, WorldConfig]:
    """Load (world, config) from a world.json written by write_world (or from its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "world.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return World.from_dict(d["world"]), WorldConfig(**d["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a world.json written by picochat.world.write_world ({e})") from e
