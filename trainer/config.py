"""Typed run configuration: YAML in, validated frozen dataclasses out.

A run config has five sections (model, data, optim, train, mesh) and an output directory. Every field is
checked before any compute; an error names the field, the value and what is allowed. Command-line
overrides use dotted keys: ``model.width=256 train.tokens=20M``. Each field carries its meaning in
its metadata (``help``); :func:`describe` (``scaling-grid config``) prints them all.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


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


# What a field is, in one place: each field declares its role, and the keys that must agree with it are
# derived from the roles (a new field is one line here, never an edit of five lists). A role says
# (part of a cell's id, part of the resume fingerprint, may differ between the runs of one pack):
ROLES: dict[str, tuple[bool, bool, bool]] = {
    "curve": (True, True, False),       # changes the loss curve; compiled into the step or its data
    "schedule": (True, True, True),     # read into the lr table (trainer.step.lr_table), not compiled in
    "budget": (True, True, True),       # the token budget: the run's length
    "seed": (True, True, True),         # the init draw and the batch order
    "record": (True, False, False),     # when metrics are recorded: changes the record, not the curve
    "cadence": (False, False, False),   # when checkpoints are written and how many are kept
    "placement": (False, False, False), # where it runs and where shared data lives (mesh, data root)
    "output": (False, False, True),     # where this run writes (its folder)
    "packing": (False, False, True),    # how many runs train together
}


def approx_count(x: float, digits: int = 4) -> str:
    """A count for reading, rounded to ``digits`` significant digits with parse_count's suffixes:
    16384000 -> '16.38M', 2.1e9 -> '2.1B'. The one rule for counts on screen (tokens, FLOPs, rates);
    `format_count` is its exact form, for names."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g}{suffix}"
    return f"{x:.{digits}g}" if x != int(x) else f"{x:.0f}"


def _f(default: Any, meaning: str, role: str = "curve", late: bool = False) -> Any:
    """A dataclass field with its meaning (`scaling-grid config` prints it) and its role. ``late``: the
    field was added after cell ids were first pinned, so `to_dict` leaves it out at its default and the
    ids of existing cells and the configs of existing runs stay as they were."""
    assert role in ROLES, role
    return field(default=default, metadata={"help": meaning, "role": role, "late": late})


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
                        "(NVIDIA GPU, bf16/fp16) | splash (TPU Pallas kernel; seq_len a multiple of 128)", late=True)
    remat: str = _f("none", "recompute in the backward pass instead of keeping, per block: none | full "
                    "(keep only each block's input: least memory, ~1/3 more FLOPs) | dots_saveable (keep "
                    "matmul outputs, recompute the rest)", late=True)
    logits_fp32: bool = _f(False, "run the head (unembedding) matmul in float32 even when the compute dtype "
                           "is bf16; the loss is float32 either way", late=True)
    vocab_pad: bool = _f(False, "pad the embedding and head to a multiple of 128 rows (e.g. GPT-2's 50257 -> "
                         "50304) so accelerator matmul tiles and mesh axes divide the vocabulary; the padded "
                         "rows are never inputs and their logits are cut before the loss, but the init draw "
                         "differs, so it is a different run (and cell)", late=True)
    param: str = _f("sp", "parametrization: sp (standard, GPT-2 init) | mup (muP: per-layer init, output and "
                    "Adam lr multipliers, so a base lr transfers across widths) | completep (muP plus residual "
                    "branches scaled by base_depth/depth, so it also transfers across depths)", late=True)
    base_width: int = _f(128, "mup/completep: the width at which they equal sp exactly; keep it fixed across a grid",
                              late=True)
    base_depth: int = _f(4, "completep: the depth at which it equals mup (and sp at base_width); keep it fixed "
                         "across a grid", late=True)
    base_head_dim: int = _f(0, "mup/completep: the head dim at the base shape (attention logits scale as "
                            "sqrt(base_head_dim)/head_dim); 0 = this model's head dim, right when head_dim is fixed "
                            "across widths (grid rule heads: head_dim); set base_width/heads when heads is fixed",
                            late=True)


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("shakespeare", "where documents come from: shakespeare (embedded, offline), text (local "
                     "text files), jsonl (local JSON Lines files, .jsonl or .jsonl.gz), parquet (local parquet "
                     "files), fineweb (streamed from the Hugging Face Hub)")
    paths: tuple[str, ...] = _f((), "files, globs or folders, for text, jsonl and parquet")
    documents: str = _f("file", "text: how a file is cut into documents: file (the whole file is one "
                        "document) | blank_lines (paragraphs separated by one or more blank lines) | lines "
                        "(one document per non-empty line) | any other string: a delimiter to split on, "
                        "e.g. '<|endoftext|>'; newlines around each document are dropped", late=True)
    text_key: str = _f("text", "jsonl: the key of each record's document text; parquet: the column", late=True)
    hf_config: str = _f("sample-10BT", "FineWeb config name, for fineweb")
    max_docs: int = _f(0, "stop after this many documents (0 = all)")
    tokenizer: str = _f("bytes", "bytes (UTF-8 bytes, vocab 256) | gpt2 (GPT-2's BPE) | bpe (a byte-level "
                        "BPE trained on this corpus)")
    bpe_vocab: int = _f(4096, "vocabulary size of a trained bpe tokenizer")
    val_fraction: float = _f(0.02, "share of the TOKENS held out for validation: whole documents, in reading "
                             "order, go to val while it holds less than this share (within one document)")
    root: str = _f("data", "prepared token stores live under here, one folder per data config", role="placement")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(3e-3, "peak learning rate", role="schedule")
    schedule: str = _f("cosine", "learning rate schedule after warmup: cosine | wsd (warmup-stable-decay) "
                       "| constant", role="schedule")
    warmup_steps: int = _f(50, "steps of linear warmup from 0 to the peak lr", role="schedule")
    decay_fraction: float = _f(0.2, "wsd: fraction of the run spent in the final linear decay", role="schedule")
    final_lr_ratio: float = _f(0.1, "cosine: final lr = ratio * peak; wsd decays to 0", role="schedule")
    weight_decay: float = _f(0.1, "AdamW weight decay, applied to matrices only")
    b1: float = _f(0.9, "AdamW beta1, the decay of the gradient's running mean")
    b2: float = _f(0.95, "AdamW beta2, the decay of the squared gradient's running mean")
    eps: float = _f(1e-8, "AdamW epsilon, added to the denominator")
    clip_norm: float = _f(1.0, "global gradient-norm clip; 0 disables")

    def decay_steps(self, total_steps: int) -> int:
        """wsd: the steps of its final linear decay (at least one) in a run of ``total_steps``; else 0."""
        return max(1, round(self.decay_fraction * total_steps)) if self.schedule == "wsd" else 0


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = _f(2_000_000, "token budget; steps = tokens // (batch_size * seq_len)", role="budget")
    batch_size: int = _f(16, "global sequences per optimizer step")
    grad_accum: int = _f(1, "micro-batches per step (batch_size must divide by it)")
    steps_per_call: int = _f(1, "optimizer steps fused into one compiled call (CPU dispatch overhead)")
    pack: int = _f(1, "a grid trains up to this many cells together in one compiled step (jax.vmap) when they "
                   "differ only in seeds, lr schedule and token budget; each keeps its own metrics and "
                   "checkpoints. 1 = off (on a CPU packing lowered aggregate tokens/s: docs/speed.md)",
                   role="packing", late=True)
    seed: int = _f(0, "parameter init", role="seed")
    data_seed: int = _f(0, "batch order: the batch at step s is a function of (data_seed, s)", role="seed")
    log_every: int = _f(10, "record train metrics every k steps (fetched from device in batches)", role="record")
    eval_every: int = _f(100, "eval on the fixed validation set every k steps (and at the end)", role="record")
    eval_batches: int = _f(4, "validation set size, in batches of batch_size sequences")
    ckpt_every: int = _f(500, "checkpoint every k steps ...", role="cadence")
    ckpt_minutes: float = _f(10.0, "... and every t minutes, on SIGTERM and at the end", role="cadence")
    keep: int = _f(3, "checkpoints kept", role="cadence")
    dtype: str = _f("auto", "auto (bf16 compute on GPU/TPU, fp32 on CPU) | float32 | bfloat16")


@dataclass(frozen=True)
class MeshConfig:
    data: int = _f(-1, "devices the batch is split over (data parallel, parameters whole on each); -1 = the "
                   "devices left over by the other axes", role="placement", late=True)
    fsdp: int = _f(1, "devices the batch is split over AND parameters plus Adam's moments are sharded over "
                   "(fully sharded data parallel); -1 = the devices left over", role="placement", late=True)
    tensor: int = _f(1, "devices each matrix is split over along its heads / hidden / vocab dimension "
                     "(tensor parallel; the batch is not split over it); -1 = the devices left over",
                     role="placement", late=True)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    out_dir: str = _f("runs/default", "run folder: config.yaml, metrics/ and checkpoints/", role="output")

    @property
    def steps(self) -> int:
        return self.train.tokens // (self.train.batch_size * self.model.seq_len)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.seq_len

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data, except late fields at their defaults. A section whose fields are
        all late (mesh) came as a whole: it is left out whole at its defaults, else written whole."""
        d = dataclasses.asdict(self)
        d["data"]["paths"] = list(d["data"]["paths"])
        for section, cls in SECTIONS.items():
            late = [f for f in fields(cls) if f.metadata["late"]]
            if len(late) == len(fields(cls)):
                if getattr(self, section) == cls():
                    del d[section]
                continue
            for f in late:
                if d[section][f.name] == f.default:
                    del d[section][f.name]
        return d


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig,
             "mesh": MeshConfig}


def role_of(section: str | None, name: str) -> str:
    """The role of ``section.name`` (``section`` None: a top-level field such as out_dir)."""
    cls = RunConfig if section is None else SECTIONS[section]
    return str({f.name: f for f in fields(cls)}[name].metadata["role"])


def _keep(cfg: RunConfig, column: int) -> dict[str, Any]:
    """``cfg.to_dict()`` without the fields whose role says no in ``column`` of ROLES; a section left
    empty is dropped (a key present but empty would change the hash)."""
    d = cfg.to_dict()
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            for g in fields(SECTIONS[f.name]):
                if f.name in d and not ROLES[g.metadata["role"]][column]:
                    d[f.name].pop(g.name, None)
            if f.name in d and not d[f.name]:
                del d[f.name]
        elif not ROLES[f.metadata["role"]][column]:
            d.pop(f.name, None)
    return d


def identity(cfg: RunConfig) -> dict[str, Any]:
    """What a grid cell's id hashes: every field that changes the curve or what is recorded."""
    return _keep(cfg, 0)


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a config that change the loss curve: a resume must match them (a checkpoint
    restores onto any mesh, and cadences may change between launches)."""
    return _keep(cfg, 1)


def reset(section: Any, *roles: str) -> Any:
    """A config section with its fields of these roles at their defaults."""
    return dataclasses.replace(section, **{f.name: f.default for f in fields(section)
                                           if f.metadata.get("role") in roles})


def pack_key(cfg: RunConfig) -> RunConfig:
    """What the runs of one pack (``loop.train_pack``) share: every field whose role may not differ
    between them. Bookkeeping that does not change a curve (cadences of logs, evals and checkpoints)
    is shared too: the loop runs them together."""
    free = [r for r, (_, _, differs) in ROLES.items() if differs]
    return reset(dataclasses.replace(cfg, **{s: reset(getattr(cfg, s), *free) for s in SECTIONS}), *free)
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
    allowed = set(SECTIONS) | {"out_dir"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
    kwargs: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
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


