"""Measure ``prepare`` end to end (read parquet, hash, tokenize, write) and ``TokenStore.batch`` reads.

Generates an English-like corpus in FineWeb's parquet schema from the embedded Shakespeare (documents
are random runs of 5-60 speeches of a random scene), then runs ``prepare`` in a fresh subprocess
``--repeats`` times, each into an empty store root, and prints JSON: tokens/s (best, median, worst),
peak RSS of each run, the two parquet readers' raw speed, and random-batch read latency.

    python benchmarks/prepare_speed.py --chars 240M --files 8 --repeats 3

Times are reported, never asserted (DESIGN.md). The CPU may be shared: compare the best of several runs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ["text", "id", "dump", "url", "date", "file_path", "language", "language_score", "token_count"]


def make_corpus(out: Path, n_chars: int, n_files: int, seed: int = 0) -> dict:
    """FineWeb-schema parquet files with ~n_chars characters of shuffled Shakespeare in total."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scaling_grid.trainer.sources import shakespeare_documents

    marker = out / "corpus.json"
    want = {"n_chars": n_chars, "n_files": n_files, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()).get("params") == want:
        return json.loads(marker.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scenes = [[p for p in d.split("\n\n") if p.strip()] for d in shakespeare_documents()]
    rng = random.Random(seed)
    n_docs = 0
    for f in range(n_files):
        cols: dict[str, list] = {c: [] for c in COLUMNS}
        chars = 0
        while chars < n_chars / n_files:
            paras = rng.choice(scenes)
            a = rng.randrange(len(paras))
            text = "\n\n".join(paras[a:a + rng.randint(5, 60)])
            chars += len(text)
            cols["text"].append(text)
            cols["id"].append(f"<urn:uuid:{rng.getrandbits(128):032x}>")
            cols["dump"].append("CC-MAIN-2024-10")
            cols["url"].append(f"https://example.com/{n_docs}")
            cols["date"].append("2024-02-21T08:15:04Z")
            cols["file_path"].append(f"s3://commoncrawl/crawl-data/CC-MAIN-2024-10/{f:05d}.warc.gz")
            cols["language"].append("en")
            cols["language_score"].append(0.9)
            cols["token_count"].append(len(text) // 4)
            n_docs += 1
        pq.write_table(pa.table(cols), out / f"{f:03d}_00000.parquet", row_group_size=1000)
    info = {"params": want, "docs": n_docs, "bytes_on_disk": sum(p.stat().st_size for p in out.glob("*.parquet"))}
    marker.write_text(json.dumps(info))
    return info


def child(corpus: Path, tokenizer: str, root: Path, batch_probe: bool) -> None:
    """One measured run in a fresh process: prepare, then (optionally) time random batches."""
    import numpy as np

    from scaling_grid.trainer import tokenstore
    from scaling_grid.trainer.config import DataConfig

    cfg = DataConfig(source="parquet", paths=(str(corpus / "*.parquet"),), tokenizer=tokenizer, root=str(root))
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    store = tokenstore.prepare(cfg, progress=False)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out = {"tokens": store.n_train + store.n_val, "docs": store.meta["docs_train"] + store.meta["docs_val"],
           "prepare_wall_s": round(wall, 3), "tokens_per_s": round((store.n_train + store.n_val) / wall),
           "docs_per_s": round((store.meta["docs_train"] + store.meta["docs_val"]) / wall),
           # CPU seconds used: less sensitive to other processes on a shared machine than wall time.
           "cpu_s": round(cpu, 2), "tokens_per_cpu_s": round((store.n_train + store.n_val) / cpu),
           "meta_prepare": store.meta["prepare"],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if batch_probe:
        out["batch_ms"] = {}
        for b in (16, 64, 256):
            times = []
            for step in range(30):
                t = time.perf_counter()
                store.batch(0, step, b, 256)
                times.append(time.perf_counter() - t)
            out["batch_ms"][f"B={b},T=256"] = round(1e3 * float(np.median(times)), 2)
    print(json.dumps(out))


def reader_speeds(corpus: Path) -> dict:
    """Raw text-reading speed (MB/s of text) of pyarrow and of datasets streaming, no tokenizing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    import pyarrow.parquet as pq
    files = sorted(str(p) for p in corpus.glob("*.parquet"))
    res = {}
    t = time.perf_counter()
    n = sum(len(s) for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=256, columns=["text"])
            for s in b.column(0).to_pylist())
    res["pyarrow_iter_batches_MBps"] = round(n / 1e6 / (time.perf_counter() - t))
    t = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True, columns=["text"])
    n = sum(len(s) for tb in ds.with_format("arrow").iter(batch_size=256) for s in tb.column("text").to_pylist())
    res["datasets_streaming_arrow_MBps"] = round(n / 1e6 / (time.perf_counter() - t))
    t = time.perf_counter()
    n = sum(len(s) for b in ds.iter(batch_size=256) for s in b["text"])
    res["datasets_streaming_python_MBps"] = round(n / 1e6 / (time.perf_counter() - t))
    return res


def main() -> None:
    from scaling_grid.trainer.config import parse_count

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "scaling-grid-bench", "corpus"))
    ap.add_argument("--chars", default="240M", help="corpus size in characters (Shakespeare: ~3 per GPT-2 token)")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--tokenizer", default="gpt2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--batch-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if args.child:
        return child(corpus, args.tokenizer, Path(args.root), args.batch_probe)

    t = time.perf_counter()
    info = make_corpus(corpus, parse_count(args.chars, "--chars"), args.files)
    info["generate_s"] = round(time.perf_counter() - t, 1)
    runs = []
    for i in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="sg-bench-store-"))
        try:
            cmd = [sys.executable, __file__, "--child", "--corpus", str(corpus), "--tokenizer", args.tokenizer,
                   "--root", str(root)] + (["--batch-probe"] if i == 0 else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    tps = [r["tokens_per_s"] for r in runs]
    print(json.dumps({
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpus": len(os.sched_getaffinity(0)), "load_avg_1m": round(os.getloadavg()[0], 2),
        "corpus": {"path": str(corpus), **info}, "tokenizer": args.tokenizer,
        "tokens": runs[0]["tokens"],
        "tokens_per_s": {"best": max(tps), "median": round(statistics.median(tps)), "worst": min(tps)},
        "tokens_per_cpu_s_best": max(r["tokens_per_cpu_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "batch_read_ms_median": runs[0].get("batch_ms"),
        "readers": reader_speeds(corpus),
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
