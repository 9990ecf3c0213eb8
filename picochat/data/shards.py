"""Token shards: a tokenized corpus on disk, as two flat arrays of token ids.

Layout of `out_dir`:
    train.bin   raw token ids (uint16 if vocab_size <= 65536, else uint32), documents joined
                with <|endoftext|> after each one
    val.bin     same, for the held-out documents
    meta.json   ShardMeta, written last: its presence means the build finished

Train/val split is per document and depends only on the document's text (a keyed hash), so it
is deterministic, stable when files are added or reordered, and exact duplicates always land in
the same split (no train->val leakage through copies).

Counting the UTF-8 bytes of each split lets callers report tokenizer-independent
bits per byte:  bpb = loss_nats * n_tokens / (n_bytes * ln 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from picochat.core.tokenizer import Tokenizer
from picochat.data.readers import find_corpus_files, iter_corpus

log = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 1
SPLIT_KEY = b"picochat-split-v1"  # key of the document hash; changing it reshuffles the split
TRAIN_FILE, VAL_FILE, META_FILE = "train.bin", "val.bin", "meta.json"


@dataclass
class ShardMeta:
    vocab_size: int
    dtype: str  # "uint16" | "uint32"
    n_train_tokens: int
    n_val_tokens: int
    n_train_bytes: int  # UTF-8 bytes of the train documents' text (separators not counted)
    n_val_bytes: int
    n_docs: int  # documents in both splits
    fingerprint: str  # hash of sources, tokenizer and settings; equal -> shards reusable
    n_val_docs: int = 0


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def is_val_document(text: str, val_fraction: float) -> bool:
    """Deterministic per-document split: a keyed hash of the text mapped to [0, 1)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8,
                             key=SPLIT_KEY).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def shards_fingerprint(sources, tokenizer: Tokenizer, val_fraction: float,
                       text_field: str, exclude=()) -> str:
    """Hash of everything the shards depend on: files (path, size, mtime), tokenizer, settings."""
    files = []
    for path in find_corpus_files(sources, exclude):
        st = path.stat()
        files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    payload = {
        "format": SHARD_FORMAT_VERSION,
        "split_key": SPLIT_KEY.decode(),
        "files": files,
        "tokenizer_sha256": hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest(),
        "val_fraction": val_fraction,
        "text_field": text_field,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def read_meta(out_dir: str | os.PathLike) -> ShardMeta | None:
    """The ShardMeta of a finished build in out_dir, or None if there is none."""
    meta_path = Path(out_dir) / META_FILE
    if not meta_path.is_file():
        return None
    raw = json.loads(meta_path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(ShardMeta)}
    return ShardMeta(**{k: v for k, v in raw.items() if k in known})


def _bins_match(out_dir: Path, meta: ShardMeta) -> bool:
    itemsize = np.dtype(meta.dtype).itemsize
    for name, n_tokens in ((TRAIN_FILE, meta.n_train_tokens), (VAL_FILE, meta.n_val_tokens)):
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != n_tokens * itemsize:
            return False
    return True


class _SplitWriter:
    """Appends token arrays to a temp .bin file and remembers where the last document starts,
    so that document can be moved to the other split if that split would be empty."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.file = open(path, "ab")
        self.n_tokens = self.n_bytes = self.n_docs = 0
        self.last_doc = (0, 0)  # (token offset, n_bytes) of the last document written

    def write(self, tokens: list[int], n_bytes: int) -> None:
        self.last_doc = (self.n_tokens, n_bytes)
        self.file.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self.n_tokens += len(tokens)
        self.n_bytes += n_bytes
        self.n_docs += 1

    def pop_last_doc(self) -> tuple[np.ndarray, int]:
        """Remove the last document from the file; return (its tokens, its byte count)."""
        start, n_bytes = self.last_doc
        self.file.flush()
        tokens = np.fromfile(self.path, dtype=self.dtype, offset=start * self.dtype.itemsize)
        self.file.truncate(start * self.dtype.itemsize)
        self.n_tokens, self.n_bytes, self.n_docs = start, self.n_bytes - n_bytes, self.n_docs - 1
        return tokens, n_bytes

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def build_shards(
    sources: list[str | os.PathLike],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.05,
    text_field: str = "text",
    batch_docs: int = 1024,
    show_progress: bool = True,
) -> ShardMeta:
    """Tokenize the corpus into out_dir/{train,val}.bin, streaming (never all tokens in RAM).

    Returns immediately if out_dir already holds a finished build with the same fingerprint.
    Every document is followed by eot_id. With >= 2 documents both splits are non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out_dir = Path(out_dir)
    exclude = [out_dir]  # out_dir may sit inside a corpus directory; never read our own output
    fingerprint = shards_fingerprint(sources, tokenizer, val_fraction, text_field, exclude)
    old = read_meta(out_dir)
    if old is not None and old.fingerprint == fingerprint and _bins_match(out_dir, old):
        log.info("reusing token shards in %s (fingerprint matches)", out_dir)
        return old

    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(token_dtype(tokenizer.vocab_size))
    tmp_paths = {name: out_dir / f".{name}.tmp" for name in (TRAIN_FILE, VAL_FILE)}
    for p in tmp_paths.values():
        p.unlink(missing_ok=True)
    train = _SplitWriter(tmp_paths[TRAIN_FILE], dtype)
    val = _SplitWriter(tmp_paths[VAL_FILE], dtype)
    eot = tokenizer.eot_id

    def flush(batch: list[str]) -> None:
        for text, ids in zip(batch, tokenizer.encode_batch(batch)):
            ids.append(eot)
            split = val if is_val_document(text, val_fraction) else train
            split.write(ids, len(text.encode("utf-8")))

    try:
        with tqdm(desc="tokenizing", unit="doc", disable=not show_progress) as bar:
            batch: list[str] = []
            for doc in iter_corpus(sources, text_field, exclude):
                batch.append(doc)
                if len(batch) >= batch_docs:
                    flush(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                flush(batch)
                bar.update(len(batch))
        # Tiny corpora: make sure neither split is empty when that is possible.
        for empty, full in ((val, train), (train, val)):
            if empty.n_docs == 0 and full.n_docs >= 2:
                tokens, n_bytes = full.pop_last_doc()
                empty.write(tokens.tolist(), n_bytes)
    except BaseException:
        for split in (train, val):
            split.file.close()
            split.path.unlink(missing_ok=True)
        raise
    train.close()
    val.close()

    meta = ShardMeta(
        vocab_size=tokenizer.vocab_size,
        dtype=dtype.name,
        n_train_tokens=train.n_tokens,
        n_val_tokens=val.n_tokens,
        n_train_bytes=train.n_bytes,
        n_val_bytes=val.n_bytes,
        n_docs=train.n_docs + val.n_docs,
        fingerprint=fingerprint,
        n_val_docs=val.n_docs,
    )
    # Commit: drop the old meta first so a crash mid-rename never pairs old meta with new bins.
    (out_dir / META_FILE).unlink(missing_ok=True)
    os.replace(tmp_paths[TRAIN_FILE], out_dir / TRAIN_FILE)
    os.replace(tmp_paths[VAL_FILE], out_dir / VAL_FILE)
    tmp_meta = out_dir / f".{META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(asdict(meta), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_meta, out_dir / META_FILE)
    log.info("wrote %d train / %d val tokens (%d docs) to %s",
             meta.n_train_tokens, meta.n_val_tokens, meta.n_docs, out_dir)
    return meta


def load_shards(out_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, ShardMeta]:
    """Open a finished build read-only: (train_tokens, val_tokens, meta).

    The token arrays are np.memmap (an empty split is a read-only empty ndarray, since an
    empty file cannot be memory-mapped).
    """
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta is None:
        raise FileNotFoundError(
            f"no finished token shards in {out_dir} ({META_FILE} missing); run build_shards first")
    if not _bins_match(out_dir, meta):
        raise ValueError(
            f"token shards in {out_dir} do not match {META_FILE} (sizes differ); rebuild them")

    def open_bin(name: str, n_tokens: int) -> np.ndarray:
        if n_tokens == 0:
            empty = np.zeros(0, dtype=meta.dtype)
            empty.flags.writeable = False
            return empty
        return np.memmap(out_dir / name, dtype=meta.dtype, mode="r", shape=(n_tokens,))

    return open_bin(TRAIN_FILE, meta.n_train_tokens), open_bin(VAL_FILE, meta.n_val_tokens), meta
