"""Building a token store's arrays: the split rule (`ValSplit`), the array layout (`array_spec`), and
`build`, which tokenizes a corpus on worker threads into the ``train`` and ``val`` arrays of one
``data-<id>/`` folder. Committing that folder as a store is `tokenstore.prepare`'s."""
from __future__ import annotations

import dataclasses
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import paths
from .config import ConfigError, DataConfig, approx_count
from .logsinks import within
from .sources import DocBatches, document_batches, empty_corpus
from .tokenizers import Tokenizer, get_tokenizer, n_cpus, train_bpe

if TYPE_CHECKING:
    import tensorstore as ts

FORMAT_VERSION = 2             # bump when the stored content for a given config changes (2: split by tokens)
SHARD_TOKENS = 1 << 20         # tokens per shard file (and per aligned write)
INNER_CHUNK = 4096             # unit of a random read inside a shard (8 KB of uint16)
CAPACITY = 1 << 40             # arrays are pre-sized to this and shrunk once at the end
BPE_SAMPLE_CHARS = 50_000_000  # bpe is trained on at most this much train-split text


class ValSplit:
    """The validation split: whole documents, in reading order, each sent to the split that leaves val's
    share of the tokens so far nearest `val_fraction`. Val then holds val_fraction of the tokens to within
    one document (|val - f * total| <= max(f, 1 - f) x the longest document), however uneven the
    documents, and the split is a function of the corpus in reading order (which the store's key fixes):
    every preparer of a store makes the same one. A long document goes to train unless val lags by
    about its length, so val is mostly the corpus's shorter documents, spread through it."""

    def __init__(self, val_fraction: float) -> None:
        self.f = float(val_fraction)
        self.total = self.val = 0

    def to_val(self, n: int) -> bool:
        """Route one document of `n` tokens; True: validation."""
        target = self.f * (self.total + n)
        v = abs(self.val + n - target) < abs(self.val - target)  # a tie goes to train
        self.total += n
        self.val += n if v else 0
        return v

    def assign(self, sizes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Route documents of these sizes, in order: a bool mask, True for validation."""
        return np.array([self.to_val(int(n)) for n in sizes], bool)

    def cut(self, tokens: np.ndarray, lengths: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Route the next documents, given as their tokens concatenated, the tokens of each and the size
        the rule measures of each: (train tokens, val tokens, documents to val)."""
        to_val = self.assign(sizes)
        in_val = np.repeat(to_val, lengths)
        return tokens[~in_val], tokens[in_val], int(to_val.sum())


def array_spec(path: Any, dtype: str | None = None) -> dict[str, Any]:
    """The TensorStore spec of a store's token array at `path`; with `dtype`, the layout to create."""
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
        self.arr = ts.open(array_spec(path, dtype), create=True).result()
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


def _encode(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One worker job: tokenize, concatenate with EOT before each document. Returns (tokens, tokens per
    document, UTF-8 bytes per document, documents with more than whitespace)."""
    ids = tok.encode_arrays(texts)
    eot = [] if tok.eot is None else [np.array([tok.eot], dtype)]
    parts = [p for a in ids for p in (*eot, a)]
    tokens = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
    lengths = np.array([len(a) + len(eot) for a in ids], np.int64)
    nbytes = np.array([len(t.encode("utf-8")) for t in texts], np.int64)
    n_text = sum(not t.isspace() for t in texts)  # stops at the first non-space character: cheap
    return tokens, lengths, nbytes, n_text


def build(cfg: DataConfig, files: list[Path], source: Callable[[], DocBatches], out: Any,
          progress: bool, total_docs: int | None) -> dict[str, Any]:
    """Build the arrays (and a bpe tokenizer) into the folder `out`; returns the store's meta."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    tok = _tokenizer(cfg, source, out, progress)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    train_w = _ArrayWriter(out / "train", dtype.name)
    val_w = _ArrayWriter(out / "val", dtype.name)

    t1 = time.perf_counter()
    workers = n_cpus()
    docs = [0, 0]
    nbytes = n_text = 0
    # disable=None: a bar only on a terminal (a log file would fill with carriage returns); the
    # "prepared ..." line below is the summary either way.
    bar = tqdm(total=total_docs, unit="doc", disable=None if progress else True, file=sys.stderr, mininterval=0.5,
               desc=f"prepare {out.parent.name}", dynamic_ncols=True)

    split = ValSplit(cfg.val_fraction)

    def collect(fut: Future[tuple[np.ndarray, np.ndarray, np.ndarray, int]]) -> None:
        nonlocal nbytes, n_text
        tokens, lengths, doc_bytes, nx = fut.result()
        # In reading order, here: each document's split depends on those before it. bpe splits by
        # bytes, as its tokenizer was trained on the train split before tokens existed (_tokenizer).
        train, val, nv = split.cut(tokens, lengths, doc_bytes if cfg.tokenizer == "bpe" else lengths)
        train_w.append(train)
        val_w.append(val)
        nt = len(lengths) - nv
        docs[0] += nt
        docs[1] += nv
        nbytes += int(doc_bytes.sum())
        n_text += nx
        so_far = train_w.pos + train_w.buffered + val_w.pos + val_w.buffered
        bar.update(nt + nv)
        bar.set_postfix(tokens=f"{so_far:,}", tok_s=f"{so_far / (time.perf_counter() - t1):,.0f}", refresh=False)

    # Tokenizer jobs on worker threads (tiktoken and tokenizers release the GIL); this thread reads
    # the next documents and hands finished jobs, in order, to the asynchronous TensorStore writers.
    with ThreadPoolExecutor(workers, thread_name_prefix="tokenize") as pool:
        inflight: deque[Future[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = deque()
        try:
            for texts in document_batches(source, cfg.max_docs):
                inflight.append(pool.submit(_encode, tok, texts, dtype))
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
    _check_split(cfg, files, docs, n_text)
    n_tokens, n_docs = n_train + n_val, docs[0] + docs[1]
    stats = {"wall_s": round(wall, 3), "tokenize_wall_s": round(time.perf_counter() - t1, 3),
             "tokens_per_s": round(n_tokens / wall), "docs_per_s": round(n_docs / wall, 1),
             "text_bytes": nbytes, "threads": workers}
    if progress:
        print(within(f"prepared {out.parent.name}: {approx_count(n_tokens)} tokens, {100 * n_val / n_tokens:.1f}% "
                     f"val, {n_docs:,} documents in {wall:.1f} s, {approx_count(n_tokens / wall, 3)} tok/s"),
              file=sys.stderr)
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


def _tokenizer(cfg: DataConfig, source: Callable[[], DocBatches], out: Any, progress: bool) -> Tokenizer:
    """The store's tokenizer: a named one, or bpe trained here (into `out`) on train-split text."""
    if cfg.tokenizer != "bpe":
        return get_tokenizer(cfg.tokenizer)

    def sample() -> Iterator[str]:  # train-split documents only, so val text stays unseen
        chars = 0
        split = ValSplit(cfg.val_fraction)  # by UTF-8 bytes, as `build` splits for bpe
        for batch in document_batches(source, cfg.max_docs):
            for t in batch:
                if not split.to_val(len(t.encode("utf-8"))):
                    yield t
                    chars += len(t)
                    if chars >= BPE_SAMPLE_CHARS:
                        return
    # Its bars only on a terminal too: elsewhere the trainer prints stray blank lines to stdout.
    return train_bpe(sample(), cfg.bpe_vocab, out / "tokenizer.json", progress and sys.stderr.isatty())


def _check_split(cfg: DataConfig, files: list[Path], docs: list[int], n_text: int) -> None:
    """ConfigError for a corpus of only whitespace, or one whose train or val split came out empty."""
    if n_text == 0:  # before the split check, which would blame val_fraction for an empty corpus
        raise empty_corpus(cfg, files, "no text but whitespace")
    if docs[1] == 0 or docs[0] == 0:
        split = "validation" if docs[1] == 0 else "training"
        raise ConfigError(
            f"data.val_fraction={cfg.val_fraction}: the {split} split is empty ({docs[0]} train / "
            f"{docs[1]} val documents; whole documents go to val until it holds that share of the tokens). Use more "
            "documents or change data.val_fraction"
            + (" (for source 'text' with data.documents=file, one file is one document: data.documents="
               "blank_lines, lines or a delimiter cuts files into more)"
               if cfg.source == "text" and cfg.documents == "file" else ""))
