"""The Python-code corpus: every `.py` file of this interpreter's standard library and site-packages.

Files are deduplicated by content hash and split into train/validation by that hash (stable across
machines and runs), then streamed through the tokenizer into uint16 token shards with a manifest.
Files are joined by the end-of-text token, so each file starts right after one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
SHARD_TOKENS = 16_000_000  # tokens per shard file (32 MB as uint16)


@dataclass(frozen=True)
class SourceFile:
    path: str
    sha256: str
    size: int


@dataclass
class CorpusFiles:
    """The deduplicated files of each split, in a stable order (by content hash)."""

    roots: list[str]
    splits: dict[str, list[SourceFile]]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files

    def digest(self) -> str:
        h = hashlib.sha256()
        for split in SPLITS:
            for f in self.splits[split]:
                h.update(f"{split}:{f.sha256}\n".encode())
        return h.hexdigest()


def default_roots() -> list[Path]:
    """This interpreter's standard library and site-packages (the base interpreter's own
    site-packages inside the stdlib folder is not part of the running environment)."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"])]
    for key in ("purelib", "platlib"):
        p = Path(paths[key])
        if p not in roots:
            roots.append(p)
    return [r for r in roots if r.is_dir()]


def _walk(root: Path) -> Iterator[Path]:
    nested_ok = "site-packages" in root.parts  # a stdlib folder's own site-packages is another environment
    for p in sorted(root.rglob("*.py")):
        if nested_ok or "site-packages" not in p.relative_to(root).parts[:-1]:
            yield p


def split_of(sha256: str, val_per_mille: int) -> str:
    return "validation" if int(sha256[:8], 16) % 1000 < val_per_mille else "train"


def collect_files(
    roots: Iterable[Path], val_per_mille: int, max_file_bytes: int, max_train_bytes: int | None = None
) -> CorpusFiles:
    """Scan roots for `.py` files; a ValueError naming the roots when none is usable.

    `max_train_bytes` keeps the train split's first files in content-hash order (a stable sample)
    up to that many bytes; the rest count as skipped ("train_cap")."""
    roots = [Path(r) for r in roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise ValueError(f"corpus folder(s) not found: {', '.join(missing)}")
    seen: set[str] = set()
    splits: dict[str, list[SourceFile]] = {s: [] for s in SPLITS}
    skipped = {"duplicate": 0, "too_large": 0, "not_utf8": 0, "empty": 0, "unreadable": 0, "train_cap": 0}
    paths = [p for r in roots for p in _walk(r)]
    for p in tqdm(paths, desc="scan .py files", unit="file", mininterval=2):
        try:
            data = p.read_bytes()
        except OSError:
            skipped["unreadable"] += 1
            continue
        reason = None
        if not data.strip():
            reason = "empty"
        elif len(data) > max_file_bytes:
            reason = "too_large"
        else:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                reason = "not_utf8"
        digest = hashlib.sha256(data).hexdigest()
        if reason is None and digest in seen:
            reason = "duplicate"
        if reason:
            skipped[reason] += 1
            continue
        seen.add(digest)
        splits[split_of(digest, val_per_mille)].append(SourceFile(str(p), digest, len(data)))
    if not seen:
        raise ValueError(
            f"no usable Python files (*.py) under corpus folder(s): {', '.join(str(r) for r in roots)}"
        )
    for files in splits.values():
        files.sort(key=lambda f: f.sha256)
    if max_train_bytes is not None:
        total, kept = 0, []
        for f in splits["train"]:
            if total + f.size > max_train_bytes and kept:
                break
            total += f.size
            kept.append(f)
        skipped["train_cap"] = len(splits["train"]) - len(kept)
        splits["train"] = kept
    if not splits["validation"]:  # tiny corpora: keep at least one file held out
        splits["validation"].append(splits["train"].pop())
    if not splits["train"]:
        raise ValueError(f"corpus folder(s) {', '.join(map(str, roots))} hold too few files to split")
    log.info(
        "corpus: %d train / %d validation files (%.1f / %.1f MB), skipped %s",
        len(splits["train"]),
        len(splits["validation"]),
        sum(f.size for f in splits["train"]) / 1e6,
        sum(f.size for f in splits["validation"]) / 1e6,
        skipped,
    )
    return CorpusFiles([str(r) for r in roots], splits, skipped)


def iter_texts(files: Iterable[SourceFile], max_bytes: int | None = None) -> Iterator[str]:
    """File contents in order, stopping once max_bytes have been yielded."""
    total = 0
    for f in files:
        if max_bytes is not None and total >= max_bytes:
            return
        total += f.size
        yield Path(f.path).read_bytes().decode("utf-8")


def write_shards(corpus: CorpusFiles, tokenizer, eot_id: int, out_dir: Path, tokenizer_digest: str) -> dict:
    """Tokenize both splits into `{split}_{i:03d}.npy` uint16 shards; return (and write) the manifest.

    A manifest with the same corpus and tokenizer digests means the shards are already there.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("digest") == corpus.digest() and old.get("tokenizer_digest") == tokenizer_digest:
            log.info("corpus shards up to date in %s", out_dir)
            return old
    assert tokenizer.get_vocab_size() <= 65536, "uint16 shards need a vocabulary of at most 65536"
    manifest: dict = {
        "roots": corpus.roots,
        "digest": corpus.digest(),
        "tokenizer_digest": tokenizer_digest,
        "skipped": corpus.skipped,
        "splits": {},
    }
    for split in SPLITS:
        manifest["splits"][split] = _write_split(corpus.splits[split], split, tokenizer, eot_id, out_dir)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(manifest_path)
    (out_dir / "files.json").write_text(
        json.dumps({s: [asdict(f) for f in corpus.splits[s]] for s in SPLITS})
    )
    return manifest


def _write_split(files: list[SourceFile], split: str, tokenizer, eot_id: int, out_dir: Path) -> dict:
    """Tokenize one split's files (each followed by end-of-text) into shards of ~SHARD_TOKENS tokens."""
    shards: list[str] = []
    buf: list[np.ndarray] = []
    pending = n_tokens = 0
    bar = tqdm(
        total=sum(f.size for f in files), desc=f"tokenize {split}", unit="B", unit_scale=True, mininterval=2
    )
    for i in range(0, len(files), 256):
        chunk = files[i : i + 256]
        for enc in tokenizer.encode_batch(list(iter_texts(chunk))):  # encodes in parallel
            ids = np.asarray(enc.ids + [eot_id], dtype=np.uint16)
            buf.append(ids)
            pending, n_tokens = pending + len(ids), n_tokens + len(ids)
        bar.update(sum(f.size for f in chunk))
        if pending >= SHARD_TOKENS or (i + 256 >= len(files) and buf):
            shards.append(f"{split}_{len(shards):03d}.npy")
            np.save(out_dir / shards[-1], np.concatenate(buf))
            buf, pending = [], 0
    bar.close()
    log.info("%s: %d files, %d tokens in %d shard(s)", split, len(files), n_tokens, len(shards))
    return {"files": len(files), "bytes": sum(f.size for f in files), "tokens": n_tokens, "shards": shards}


def load_split(shard_dir: Path, split: str) -> np.ndarray:
    """All token ids of a split as one uint16 array (the shards, concatenated)."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    arrays = [np.load(shard_dir / name, mmap_mode="r") for name in manifest["splits"][split]["shards"]]
    return np.concatenate(arrays) if len(arrays) > 1 else np.asarray(arrays[0])
