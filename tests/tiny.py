"""The tiny grid spec the grid tests run: gpt2 at seq_len 16 on the embedded Shakespeare corpus with the
bytes tokenizer, 4 sequences a step, heads from head_dim 8 and a 10% warmup. Each test names its axes
and what it changes; the rest is written here once.

Values are written as YAML text: a string as it is (so "3e-3" stays 3e-3 in the file), anything else
with str(). In `model`, `optim`, `train` and `rules` a key given None is left out of the section, and a
section left empty is left out of the spec."""
from typing import Any

MODEL = {"variant": "gpt2", "seq_len": 16}
OPTIM = {"lr": "3e-3"}
TRAIN = {"batch_size": 4, "steps_per_call": 4, "log_every": 4, "eval_every": 32, "eval_batches": 1,
         "ckpt_every": 16, "keep": 50}
RULES = {"heads": {"rule": "head_dim", "head_dim": 8}, "warmup": {"rule": "fraction", "fraction": 0.1}}


def tiny_spec(name: str, axes: dict[str, list[Any]], *, tokens_mode: str | None = None, root: str | None = "DATA",
              eval_every: int = 32, ckpt_every: int = 16, keep: int | None = 50, pack: int | None = None,
              model: dict[str, Any] | None = None, optim: dict[str, Any] | None = None,
              train: dict[str, Any] | None = None, rules: dict[str, Any] | None = None,
              cells: list[dict[str, Any]] | None = None) -> str:
    """The spec's YAML text. `root` is data.root (None: the default root); `model`, `optim`, `train` and
    `rules` update their defaults above (key order kept, new keys last); `cells` are extra cells."""
    data = {"source": "shakespeare", "tokenizer": "bytes", "root": root}
    train = {**TRAIN, "eval_every": eval_every, "ckpt_every": ckpt_every, "keep": keep, "pack": pack, **(train or {})}
    base = {"model": {**MODEL, **(model or {})}, "data": data, "optim": {**OPTIM, **(optim or {})}, "train": train}
    lines = [f"name: {name}"] + ([f"tokens_mode: {tokens_mode}"] if tokens_mode else []) + ["base:"]
    lines += [f"  {k}: {_flow(v)}" for k, v in base.items() if _kept(v)]
    lines += ["rules:"] + [f"  {k}: {_flow(v)}" for k, v in {**RULES, **(rules or {})}.items() if v is not None]
    lines += ["axes:"] + [f"  {k}: {_flow(v)}" for k, v in axes.items()]
    if cells:
        lines += ["cells:"] + [f"  - {_flow(c)}" for c in cells]
    return "\n".join(lines) + "\n"


def _kept(section: dict[str, Any]) -> bool:
    return any(v is not None for v in section.values())


def _flow(v: Any) -> str:
    """`v` in YAML's flow style, as the specs are written by hand: {a: 1, b: [2, 3]}."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items() if x is not None) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return v if isinstance(v, str) else str(v)
