"""The names a run config may use, jax-free, at the bottom of the trainer: model variants, attention
kernels, remat policies, parametrizations, data sources, tokenizers and the vocabulary sizes that are
fixed by a tokenizer's name. `config` validates against these without importing JAX; the modules
that implement them (model, parametrization, sources, tokenizers) import their names from here, so
one list is both what is allowed and what exists."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """Architecture switches. A new variant is one more entry in VARIANTS."""
    norm: str = "layernorm"         # layernorm | rmsnorm
    mlp: str = "gelu"               # gelu (4x) | swiglu (8/3 x, rounded up to a multiple of 8)
    position: str = "learned"       # learned absolute | rope
    tied_embeddings: bool = True    # the head reuses the token embedding matrix
    bias: bool = True               # biases in dense layers and norms
    qk_norm: bool = False           # RMS-normalise queries and keys per head


VARIANTS: dict[str, Variant] = {
    "gpt2": Variant(),
    "llama": Variant(norm="rmsnorm", mlp="swiglu", position="rope", tied_embeddings=False, bias=False),
    "gpt2-qknorm": Variant(qk_norm=True),
    "llama-qknorm": Variant(norm="rmsnorm", mlp="swiglu", position="rope", tied_embeddings=False,
                            bias=False, qk_norm=True),
}
ATTENTION = ("auto", "xla", "cudnn", "splash")
REMAT = ("none", "full", "dots_saveable")
PARAMS = ("sp", "mup", "completep")
SOURCES = ("shakespeare", "text", "jsonl", "parquet", "fineweb")
TOKENIZERS = ("bytes", "gpt2", "bpe")
# Vocabulary sizes a tokenizer's name fixes (a trained bpe has the size its config asks for).
VOCAB = {"bytes": 256, "gpt2": 50257}


def expected_vocab(tokenizer: str, bpe_vocab: int) -> int:
    """The vocabulary a data config's tokenizer will have: exact for bytes and gpt2, the requested size
    for bpe (before any token store is prepared, e.g. for a dry run's memory and FLOP figures)."""
    return VOCAB.get(tokenizer, bpe_vocab)
