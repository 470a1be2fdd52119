"""Typed run configuration: YAML in, validated frozen dataclasses out.

A run config has five sections (model, data, optim, train, mesh) and an output directory. Every field is
checked before any compute; an error names the field, the value and what is allowed. Command-line
overrides use dotted keys: ``model.width=256 train.tokens=20M``. Each field carries its meaning in
its metadata (``help``); :func:`describe` (``scaling-grid config``) prints them all.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config field is invalid. The message names the field, the value and what is allowed."""


_SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(value: Any, name: str = "value") -> int:
    """Parse an integer count that may carry a suffix: ``2M``, ``1.5B``, ``20k``, ``4096``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected an integer count such as 4096, 20M or 1.5B")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKMBGT]?)\s*", str(value))
    if not m:
        raise ConfigError(f"{name}={value!r}: expected an integer count such as 4096, 20M or 1.5B")
    n = float(m.group(1)) * _SUFFIX[m.group(2)]
    if not n.is_integer():
        raise ConfigError(f"{name}={value!r}: is not a whole number")
    return int(n)


def format_count(n: int) -> str:
    """Inverse of :func:`parse_count` for readable names: 20000000 -> '20M', 1500 -> '1.5k'."""
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            v = n / scale
            return f"{v:g}{suffix}" if v == round(v, 3) else str(n)
    return str(n)


def _f(default: Any, meaning: str) -> Any:
    """A dataclass field with its meaning, which `scaling-grid config` prints."""
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class ModelConfig:
    variant: str = _f("gpt2", "architecture: a name in model.VARIANTS")
    width: int = _f(128, "m = d_model, the residual stream width")
    depth: int = _f(4, "l = number of transformer blocks")
    heads: int = _f(2, "attention heads; width must be divisible by heads, and width/heads even")
    seq_len: int = _f(256, "tokens per training sequence (the context length)")
    qk_norm: bool = _f(False, "normalise q and k per head (on top of any variant)")
    unroll: int = _f(0, "blocks per scan iteration; 0 = auto: all on CPU, 1 on GPU/TPU")
    attention: str = _f("auto", "attention kernel: auto (cuDNN's fused attention on an NVIDIA GPU when the "
                        "compute dtype is bf16/fp16 and the head dim a multiple of 8 up to 128, else XLA's; "
                        "a hand-written one on CPU) | xla (jax.nn.dot_product_attention's XLA path) | cudnn "
                        "(NVIDIA GPU, bf16/fp16) | splash (TPU Pallas kernel; seq_len a multiple of 128)")
    remat: str = _f("none", "recompute in the backward pass instead of keeping, per block: none | full "
                    "(keep only each block's input: least memory, ~1/3 more FLOPs) | dots_saveable (keep "
                    "matmul outputs, recompute the rest)")
    logits_fp32: bool = _f(False, "run the head (unembedding) matmul in float32 even when the compute dtype "
                           "is bf16; the loss is float32 either way")
    vocab_pad: bool = _f(False, "pad the embedding and head to a multiple of 128 rows (e.g. GPT-2's 50257 -> "
                         "50304) so accelerator matmul tiles and mesh axes divide the vocabulary; the padded "
                         "rows are never inputs and their logits are cut before the loss, but the init draw "
                         "differs, so it is a different run (and cell)")
    param: str = _f("sp", "parametrization: sp (standard, GPT-2 init) | mup (muP: per-layer init, output and "
                    "Adam lr multipliers, so a base lr transfers across widths) | completep (muP plus residual "
                    "branches scaled by base_depth/depth, so it also transfers across depths)")
    base_width: int = _f(128, "mup/completep: the width at which they equal sp exactly; keep it fixed across a grid")
    base_depth: int = _f(4, "completep: the depth at which it equals mup (and sp at base_width); keep it fixed "
                         "across a grid")
    base_head_dim: int = _f(0, "mup/completep: the head dim at the base shape (attention logits scale as "
                            "sqrt(base_head_dim)/head_dim); 0 = this model's head dim, right when head_dim is fixed "
                            "across widths (grid rule heads: head_dim); set base_width/heads when heads is fixed")


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("shakespeare", "where documents come from: shakespeare (embedded, offline), text (local "
                     "text files), jsonl (local JSON Lines files, .jsonl or .jsonl.gz), parquet (local parquet "
                     "files), fineweb (streamed from the Hugging Face Hub)")
    paths: tuple[str, ...] = _f((), "files, globs or folders, for text, jsonl and parquet")
    documents: str = _f("file", "text: how a file is cut into documents: file (the whole file is one "
                        "document) | blank_lines (paragraphs separated by one or more blank lines) | lines "
                        "(one document per non-empty line) | any other string: a delimiter to split on, "
                        "e.g. '<|endoftext|>'; newlines around each document are dropped")
    text_key: str = _f("text", "jsonl: the key of each record's document text; parquet: the column")
    hf_config: str = _f("sample-10BT", "FineWeb config name, for fineweb")
    max_docs: int = _f(0, "stop after this many documents (0 = all)")
    tokenizer: str = _f("bytes", "bytes (UTF-8 bytes, vocab 256) | gpt2 (GPT-2's BPE) | bpe (a byte-level "
                        "BPE trained on this corpus)")
    bpe_vocab: int = _f(4096, "vocabulary size of a trained bpe tokenizer")
    val_fraction: float = _f(0.02, "fraction of documents (chosen by a hash of their text) held out for validation")
    root: str = _f("data", "prepared token stores live under here, one folder per data config")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(3e-3, "peak learning rate")
    schedule: str = _f("cosine", "learning rate schedule after warmup: cosine | wsd (warmup-stable-decay) "
                       "| constant")
    warmup_steps: int = _f(50, "steps of linear warmup from 0 to the peak lr")
    decay_fraction: float = _f(0.2, "wsd: fraction of the run spent in the final linear decay")
    final_lr_ratio: float = _f(0.1, "cosine: final lr = ratio * peak; wsd decays to 0")
    weight_decay: float = _f(0.1, "AdamW weight decay, applied to matrices only")
    b1: float = _f(0.9, "AdamW beta1, the decay of the gradient's running mean")
    b2: float = _f(0.95, "AdamW beta2, the decay of the squared gradient's running mean")
    eps: float = _f(1e-8, "AdamW epsilon, added to the denominator")
    clip_norm: float = _f(1.0, "global gradient-norm clip; 0 disables")


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = _f(2_000_000, "token budget; steps = tokens // (batch_size * seq_len)")
    batch_size: int = _f(16, "global sequences per optimizer step")
    grad_accum: int = _f(1, "micro-batches per step (batch_size must divide by it)")
    steps_per_call: int = _f(1, "optimizer steps fused into one compiled call (CPU dispatch overhead)")
    pack: int = _f(1, "a grid trains up to this many cells together in one compiled step (jax.vmap) when they "
                   "differ only in seeds, lr schedule and token budget; each keeps its own metrics and "
                   "checkpoints. 1 = off (on a CPU packing lowered aggregate tokens/s: README, Speed)")
    seed: int = _f(0, "parameter init")
    data_seed: int = _f(0, "batch order: the batch at step s is a function of (data_seed, s)")
    log_every: int = _f(10, "record train metrics every k steps (fetched from device in batches)")
    eval_every: int = _f(100, "eval on the fixed validation set every k steps (and at the end)")
    eval_batches: int = _f(4, "validation set size, in batches of batch_size sequences")
    ckpt_every: int = _f(500, "checkpoint every k steps ...")
    ckpt_minutes: float = _f(10.0, "... and every t minutes, on SIGTERM and at the end")
    keep: int = _f(3, "checkpoints kept")
    dtype: str = _f("auto", "auto (bf16 compute on GPU/TPU, fp32 on CPU) | float32 | bfloat16")


@dataclass(frozen=True)
class MeshConfig:
    data: int = _f(-1, "devices the batch is split over (data parallel, parameters whole on each); -1 = the "
                   "devices left over by the other axes")
    fsdp: int = _f(1, "devices the batch is split over AND parameters plus Adam's moments are sharded over "
                   "(fully sharded data parallel); -1 = the devices left over")
    tensor: int = _f(1, "devices each matrix is split over along its heads / hidden / vocab dimension "
                     "(tensor parallel; the batch is not split over it); -1 = the devices left over")


# Fields added after cell ids were first pinned: to_dict() leaves them out while they hold their
# defaults, so the ids of existing grid cells (a hash of to_dict()) and existing runs' configs stay as
# they were. A non-default value is a different run and is written out.
_OMITTED_AT_DEFAULT = {"data": ("documents", "text_key"), "train": ("pack",),
                       "model": ("attention", "remat", "logits_fp32", "param", "base_width", "base_depth",
                                 "base_head_dim", "vocab_pad")}


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    out_dir: str = field(default="runs/default",
                         metadata={"help": "run folder: config.yaml, metrics/ and checkpoints/"})

    @property
    def steps(self) -> int:
        return self.train.tokens // (self.train.batch_size * self.model.seq_len)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.seq_len

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data, except fields of ``_OMITTED_AT_DEFAULT`` at their defaults and
        the mesh section at its default (it was added after cell ids were pinned, too)."""
        d = dataclasses.asdict(self)
        if self.mesh == MeshConfig():
            del d["mesh"]
        d["data"]["paths"] = list(d["data"]["paths"])
        for section, names in _OMITTED_AT_DEFAULT.items():
            for f in fields(_SECTIONS[section]):
                if f.name in names and d[section][f.name] == f.default:
                    del d[section][f.name]
        return d


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
             "mesh": MeshConfig}
_COUNT_FIELDS = {"tokens", "bpe_vocab", "max_docs"}


def _coerce(section: str, f: dataclasses.Field[Any], value: Any) -> Any:
    name = f"{section}.{f.name}"
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if f.name in _COUNT_FIELDS:
        return parse_count(value, name)
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{name}={value!r}: expected an integer")
        try:
            return parse_count(value, name)
        except ConfigError:
            raise ConfigError(f"{name}={value!r}: expected an integer") from None
    if typ == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected a number") from None
    if typ == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{name}={value!r}: expected true or false")
    if typ == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return str(value)
    if typ.startswith("tuple"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: expected a list of strings")
        return tuple(str(v) for v in value)
    raise AssertionError(f"unhandled field type {typ} for {name}")


def from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from nested plain data (as loaded from YAML), checking every key and type."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(d).__name__}")
    allowed = set(_SECTIONS) | {"out_dir"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
    kwargs: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        raw = d.get(section) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{section}: expected a mapping of fields, got {raw!r}")
        by_name = {f.name: f for f in fields(cls)}
        bad = sorted(set(raw) - set(by_name))
        if bad:
            raise ConfigError(f"unknown key(s) {[f'{section}.{b}' for b in bad]}; "
                              f"{section} allows: {sorted(by_name)}")
        kwargs[section] = cls(**{k: _coerce(section, by_name[k], v) for k, v in raw.items()})
    if "out_dir" in d:
        if not isinstance(d["out_dir"], str):  # str(None) would train into a folder named "None"
            raise ConfigError(f"out_dir={d['out_dir']!r}: must be a folder path")
        kwargs["out_dir"] = d["out_dir"]
    return RunConfig(**kwargs)


def _yaml_value(v: Any) -> str:
    """One value as a single-line YAML scalar or flow list."""
    if isinstance(v, str) and not v.isprintable():  # newlines, tabs: a JSON string is valid YAML
        return json.dumps(v)
    text = yaml.safe_dump(list(v) if isinstance(v, tuple) else v, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...")


def describe(cfg: RunConfig | None = None, width: int = 100) -> str:
    """Every field of a run config as YAML with its meaning in a comment: the defaults, or with
    ``cfg`` that config's values (a value that is not the default names the default). The text
    loads back with ``yaml.safe_load`` to every field's value."""
    from .model import VARIANTS  # late import, as in validate: config stays importable without jax

    allowed = {"model.variant": f"; one of {', '.join(VARIANTS)}"}
    rows: list[tuple[str, str]] = []  # (yaml line, comment)

    def add(prefix: str, f: dataclasses.Field[Any], value: Any) -> None:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[operator]
        note = f.metadata["help"] + allowed.get(prefix + f.name, "")
        if value != default:
            note += f" (default:\xa0{_yaml_value(default)})"  # no line break inside "(default: x)"
        rows.append((f"{'  ' if prefix else ''}{f.name}: {_yaml_value(value)}", note))

    cfg = RunConfig() if cfg is None else cfg
    for f in fields(RunConfig):
        if f.name in _SECTIONS:
            rows.append((f"{f.name}:", ""))
            for g in fields(_SECTIONS[f.name]):
                add(f"{f.name}.", g, getattr(getattr(cfg, f.name), g.name))
        else:
            add("", f, getattr(cfg, f.name))
    col = min(max(len(line) for line, _ in rows), 34) + 2
    out = []
    for line, note in rows:
        if not note:
            out.append(line)
            continue
        wrapped = [w.replace("\xa0", " ") for w in textwrap.wrap(note, max(width - col - 2, 30))] or [""]
        out.append(f"{line.ljust(col)}# {wrapped[0]}" if len(line) < col else f"{line}  # {wrapped[0]}")
        out += [f"{'':{col}}# {w}" for w in wrapped[1:]]
    return "\n".join(out) + "\n"


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars) to nested plain data."""
    d = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. model.width=256")
        parsed = yaml.safe_load(value) if value else ""
        parts = key.split(".")
        if len(parts) == 1:
            d[key] = parsed
        elif len(parts) == 2:
            d.setdefault(parts[0], {})
            if not isinstance(d[parts[0]], dict):
                raise ConfigError(f"override {item!r}: {parts[0]} is not a section")
            d[parts[0]][parts[1]] = parsed
        else:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. model.width=256")
    return d


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file, or a ConfigError naming it if it is not UTF-8 (a binary file, or
    Latin-1 text) or cannot be read. ``what`` names the file's role, e.g. "config file"."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}: "
                          f"{e.object[e.start:e.start + 1]!r}): expected a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from None


def load(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML run config (or the defaults when path is None), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            raw = yaml.safe_load(read_yaml_text(p, "config file"))
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if raw is None:  # empty, or only comments: the defaults
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config file {str(p)!r}: expected a mapping of sections "
                              f"{sorted(_SECTIONS)} and out_dir, got a {type(raw).__name__}")
    cfg = from_dict(apply_overrides(raw, overrides))
    validate(cfg)
    return cfg


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r}: {allowed}")


def validate(cfg: RunConfig, check_paths: bool = True) -> None:
    """Check every field's value; raise ConfigError naming the first bad one. No compute, no I/O
    beyond checking that input files exist and the output directory is writable."""
    from .model import ATTENTION, REMAT, VARIANTS  # late import: config must stay importable without jax
    from .parametrization import PARAMS
    from .sources import SOURCES
    from .tokenizers import TOKENIZERS

    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
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
        _check(cfg.train.dtype != "float32", "model.attention", m.attention,
               "cuDNN's fused attention needs bf16/fp16 compute, but train.dtype='float32'; use train.dtype="
               "bfloat16 (or auto on a GPU), or model.attention=xla")
    if m.attention == "splash":  # the backend (a TPU) is checked when the model is traced
        _check(m.seq_len % 128 == 0, "model.attention", m.attention,
               f"the splash kernel works in blocks of 128 positions: model.seq_len={m.seq_len} must be a "
               "multiple of 128; use model.attention=xla or auto")

    # "" would be the current folder: checkpoints and metrics would land among the user's files.
    _check(cfg.out_dir != "", "out_dir", cfg.out_dir, "must be a folder path")
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
    axes = dataclasses.asdict(cfg.mesh)
    for name, v in axes.items():
        _check(v == -1 or v > 0, f"mesh.{name}", v, "must be a positive device count or -1 (the devices left over)")
    _check(list(axes.values()).count(-1) <= 1, "mesh", axes, "at most one axis can be -1 (the devices left over)")

    if check_paths:
        _check_writable("out_dir", cfg.out_dir)
        check_data_paths(d)


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
