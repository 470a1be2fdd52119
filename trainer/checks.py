"""Every field of a run config checked before any compute: values against what is allowed (the names
in `registry`), and the file system side (input files exist, output folders can be written)."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from .config import ConfigError, DataConfig, ModelConfig, OptimConfig, RunConfig
from .registry import ATTENTION, PARAMS, REMAT, SOURCES, TOKENIZERS, VARIANTS


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r}: {allowed}")


def validate(cfg: RunConfig, check_paths: bool = True) -> None:
    """Check every field's value; raise ConfigError naming the first bad one. No compute, no I/O
    beyond checking that input files exist and the output directory is writable."""
    _check_model(cfg.model, cfg.train.dtype)
    _check_data(cfg.data, cfg.out_dir)
    _check_optim(cfg.optim)
    _check_train(cfg)
    axes = dataclasses.asdict(cfg.mesh)
    for name, v in axes.items():
        _check(v == -1 or v > 0, f"mesh.{name}", v, "must be a positive device count or -1 (the devices left over)")
    _check(list(axes.values()).count(-1) <= 1, "mesh", axes, "at most one axis can be -1 (the devices left over)")

    if check_paths:
        _check_writable("out_dir", cfg.out_dir)
        check_data_paths(cfg.data)


def _check_model(m: ModelConfig, dtype: str) -> None:
    _check(m.variant in VARIANTS, "model.variant", m.variant, f"allowed: {sorted(VARIANTS)}")
    _check(m.unroll >= 0, "model.unroll", m.unroll, "must be >= 0 (0 = auto)")
    _check(m.attention in ATTENTION, "model.attention", m.attention, f"allowed: {list(ATTENTION)}")
    _check(m.remat in REMAT, "model.remat", m.remat, f"allowed: {list(REMAT)}")
    _check(m.param in PARAMS, "model.param", m.param, f"allowed: {list(PARAMS)}")
    for name in ("base_width", "base_depth"):
        _check(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "must be a positive integer")
    _check(m.base_head_dim >= 0, "model.base_head_dim", m.base_head_dim, "must be >= 0 (0 = this model's head dim)")
    for name in ("width", "depth", "heads", "seq_len"):
        v = getattr(m, name)
        _check(v > 0, f"model.{name}", v, "must be a positive integer")
    _check(m.width % m.heads == 0, "model.width", m.width,
           f"must be divisible by model.heads={m.heads} (head dim = width / heads)")
    _check((m.width // m.heads) % 2 == 0, "model.heads", m.heads,
           f"head dim width/heads = {m.width / m.heads:g} must be even (rotary embeddings pair dims)")
    if m.attention == "cudnn":  # the backend (an NVIDIA GPU) is checked when the model is traced
        _check(m.width // m.heads % 8 == 0 and m.width // m.heads <= 128, "model.attention", m.attention,
               f"cuDNN needs a head dim (width/heads = {m.width // m.heads}) that is a multiple of 8 and at "
               "most 128; use model.attention=xla or auto")
        _check(dtype != "float32", "model.attention", m.attention,
               "cuDNN's fused attention needs bf16/fp16 compute, but train.dtype='float32'; use train.dtype="
               "bfloat16 (or auto on a GPU), or model.attention=xla")
    if m.attention == "splash":  # the backend (a TPU) is checked when the model is traced
        _check(m.seq_len % 128 == 0, "model.attention", m.attention,
               f"the splash kernel works in blocks of 128 positions: model.seq_len={m.seq_len} must be a "
               "multiple of 128; use model.attention=xla or auto")



def _check_data(d: DataConfig, out_dir: str) -> None:
    # "" would be the current folder: checkpoints and metrics would land among the user's files.
    _check(out_dir != "", "out_dir", out_dir, "must be a folder path")
    _check(d.source in SOURCES, "data.source", d.source, f"allowed: {sorted(SOURCES)}")
    _check(d.tokenizer in TOKENIZERS, "data.tokenizer", d.tokenizer, f"allowed: {sorted(TOKENIZERS)}")
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _check(d.max_docs >= 0, "data.max_docs", d.max_docs, "must be >= 0 (0 = all documents)")
    _check(256 < d.bpe_vocab <= 2**20, "data.bpe_vocab", d.bpe_vocab, "must be in (256, 1048576]")
    if d.source in ("text", "jsonl", "parquet"):
        _check(len(d.paths) > 0, "data.paths", list(d.paths), f"source {d.source!r} needs at least one file or glob")
        for p in d.paths:  # read with open() and pyarrow: a bucket URL would be looked for as a local folder 'gs:'
            _check("://" not in p or p.startswith("file://"), "data.paths", p,
                   "must be local files, folders or globs (or file:// URLs); for a corpus in a bucket, copy it to "
                   "a local disk, or prepare its token store once into a bucket data.root from a machine that has it")
    # Any other string is a delimiter, so only "" is wrong; a field the source ignores is an error,
    # not a silent no-op.
    _check(d.documents != "", "data.documents", d.documents,
           "expected file, blank_lines, lines or a delimiter string such as '<|endoftext|>'; not empty")
    _check(d.documents == "file" or d.source == "text", "data.documents", d.documents,
           f"applies to data.source='text' only (source is {d.source!r})")
    _check(d.text_key != "", "data.text_key", d.text_key, "must be a non-empty key or column name")
    _check(d.text_key == "text" or d.source in ("jsonl", "parquet"), "data.text_key", d.text_key,
           f"applies to data.source 'jsonl' and 'parquet' only (source is {d.source!r})")



def _check_optim(o: OptimConfig) -> None:
    _check(o.schedule in ("cosine", "wsd", "constant"), "optim.schedule", o.schedule,
           "allowed: ['constant', 'cosine', 'wsd']")
    _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", o.lr, "must be a positive finite number")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _check(0 < o.decay_fraction <= 1, "optim.decay_fraction", o.decay_fraction, "must be in (0, 1]")
    _check(0 <= o.final_lr_ratio <= 1, "optim.final_lr_ratio", o.final_lr_ratio, "must be in [0, 1]")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(0 <= o.b1 < 1, "optim.b1", o.b1, "must be in [0, 1)")
    _check(0 <= o.b2 < 1, "optim.b2", o.b2, "must be in [0, 1)")
    _check(o.eps > 0, "optim.eps", o.eps, "must be > 0")
    _check(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, "must be >= 0 (0 disables clipping)")



def _check_train(cfg: RunConfig) -> None:
    o, t = cfg.optim, cfg.train
    for name in ("batch_size", "grad_accum", "steps_per_call", "pack", "log_every", "eval_every",
                 "eval_batches", "ckpt_every", "keep"):
        v = getattr(t, name)
        _check(v > 0, f"train.{name}", v, "must be a positive integer")
    _check(t.tokens > 0, "train.tokens", t.tokens, "must be a positive token count such as 20M")
    _check(t.batch_size % t.grad_accum == 0, "train.grad_accum", t.grad_accum,
           f"must divide train.batch_size={t.batch_size}")
    _check(cfg.steps >= 1, "train.tokens", t.tokens,
           f"is below one batch: batch_size * seq_len = {cfg.tokens_per_step} tokens per step")
    for name in ("log_every", "eval_every", "ckpt_every"):
        v = getattr(t, name)
        _check(v % t.steps_per_call == 0, f"train.{name}", v,
               f"must be a multiple of train.steps_per_call={t.steps_per_call}")
    _check(t.ckpt_minutes > 0, "train.ckpt_minutes", t.ckpt_minutes, "must be > 0")
    _check(t.dtype in ("auto", "float32", "bfloat16"), "train.dtype", t.dtype,
           "allowed: ['auto', 'bfloat16', 'float32']")
    _check(o.warmup_steps <= cfg.steps, "optim.warmup_steps", o.warmup_steps,
           f"exceeds the run's {cfg.steps} steps")


def check_data_paths(d: DataConfig) -> None:
    """The file system side of a data config, before any compute: its input files exist and its
    token store root can be created (not under a regular file, not read-only)."""
    if d.source in ("text", "jsonl", "parquet"):
        import glob
        for p in d.paths:
            _check(bool(glob.glob(os.path.expanduser(p.removeprefix("file://")), recursive=True)), "data.paths", p,
                   "matches no file")
    _check_writable("data.root", d.root)


def _check_writable(name: str, path: str) -> None:
    """Try to create a file in the nearest existing ancestor (permission bits lie to root). A gs:// URL
    is probed instead (trainer.paths.check_writable: the bucket answers and takes a write); any other
    scheme is refused by name."""
    import tempfile

    from .paths import check_writable, is_remote, local
    check_writable(name, path)
    if is_remote(path):
        return
    p = Path(local(path))
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():  # mkdir would fail later, after compute, with a bare NotADirectoryError
        raise ConfigError(f"{name}={path!r}: is not writable: {str(probe)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(f"{name}={path!r}: is not writable (nearest existing ancestor {str(probe)!r}: "
                          f"{type(e).__name__}: {e.strerror or e})") from None
