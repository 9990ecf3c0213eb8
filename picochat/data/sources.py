"""Where a stage's data comes from: local files, or a Hugging Face dataset named `hf:NAME?...`.

Every `sources` (and `ppo.prompts`) entry is either a local file/directory, read by the readers of
`picochat.data` (text/JSONL/Parquet corpora, chat JSONL, preference JSONL), or a dataset on the
Hugging Face Hub:

    hf:stanfordnlp/imdb?split=unsupervised
    hf:Anthropic/hh-rlhf?data_dir=harmless-base&split=train
    hf:wikimedia/wikipedia?name=20231101.zh&split=train&limit=20000

`name` is the dataset config, `data_dir` a folder of the repository, `split` the split (default
train), `limit` keeps the first N rows (streamed, so a huge dataset is not downloaded whole). The
rows are written once as JSON lines to `$PICOCHAT_CACHE/datasets/` (default
`~/.cache/picochat/datasets/`) and read from there like any local file, so every reader and format
of picochat applies to them unchanged. Needs the `datasets` package (`pip install 'picochat[hf]'`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl

from picochat.data.readers import CorpusError
from picochat.hf import HF_PREFIX

HF_OPTIONS = ("split", "name", "data_dir", "limit")


def cache_dir() -> Path:
    return Path(os.environ.get("PICOCHAT_CACHE", Path.home() / ".cache" / "picochat")).expanduser() / "datasets"


def parse_hf_spec(spec: str) -> dict:
    """`hf:NAME?split=S&name=C&data_dir=D&limit=N` -> {"path", "split", "name", "data_dir", "limit"}."""
    path, _, query = spec.removeprefix(HF_PREFIX).partition("?")
    if not path:
        raise CorpusError(spec, "no dataset name; expected hf:NAME?split=SPLIT, e.g. hf:stanfordnlp/imdb?split=train")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)) if query else [])
    unknown = sorted(set(options) - set(HF_OPTIONS))
    if unknown:
        raise CorpusError(spec, f"unknown option {unknown[0]!r}; known: {', '.join(HF_OPTIONS)}")
    limit = options.get("limit", "0")
    if not limit.isdigit():
        raise CorpusError(spec, f"limit must be a whole number of rows, got {limit!r}")
    return {"path": path, "split": options.get("split", "train"), "name": options.get("name") or None,
            "data_dir": options.get("data_dir") or None, "limit": int(limit)}


def cached_file(spec: str) -> Path:
    """Where the rows of an `hf:` source are kept: a readable name plus a hash of the whole spec."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.removeprefix(HF_PREFIX))[:80]
    digest = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:10]
    return cache_dir() / f"{readable}-{digest}.jsonl.gz"


def _download(spec: str, key: str, target: Path) -> None:
    try:
        import datasets
    except ImportError:
        raise CorpusError(spec, f"{key} names a Hugging Face dataset, which needs the `datasets` package: "
                          f"pip install 'picochat[hf]'. Or download the data yourself and pass local files: "
                          f"{key}=[path/to/file.jsonl,...]") from None
    opts = parse_hf_spec(spec)
    print(f"[data] downloading {spec} with Hugging Face datasets (once; kept in {target.parent})")
    try:
        rows = datasets.load_dataset(opts["path"], opts["name"], data_dir=opts["data_dir"], split=opts["split"],
                                     streaming=bool(opts["limit"]))
    except Exception as e:  # network, unknown name or split: say which setting to change
        raise CorpusError(spec, f"could not load it with datasets.load_dataset ({type(e).__name__}: {e}); "
                          f"check the name and the network, or pass local files: "
                          f"{key}=[path/to/file.jsonl,...]") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    n = 0
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n")
            n += 1
            if opts["limit"] and n >= opts["limit"]:
                break
    if n == 0:
        tmp.unlink(missing_ok=True)
        raise CorpusError(spec, f"the dataset has no rows in split {opts['split']!r}")
    os.replace(tmp, target)  # complete or absent: a killed download starts over
    print(f"[data] {n:,} rows of {spec} -> {target}")


def resolve_source(spec: str, key: str) -> Path:
    """A local path (checked to exist) or the cached JSONL of an `hf:` dataset (downloaded once).
    `key` names the setting (`pretrain.sources`) so errors say what to change."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        target = cached_file(spec)
        if not target.exists():
            _download(spec, key, target)
        return target
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(path, f"no such file or directory (from {key}). Download the data and pass local "
                          f"files with {key}=[path,...] (relative paths are taken from data_root when it is "
                          f"set), or name a Hugging Face dataset: {key}=[hf:NAME?split=SPLIT] "
                          f"(needs pip install 'picochat[hf]')")
    return path


def resolve_sources(specs: list[str], key: str) -> list[Path]:
    """`resolve_source` for each entry of a sources list, in order."""
    return [resolve_source(s, key) for s in specs]
