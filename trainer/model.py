"""Decoder-only Transformer (Flax linen) with named variants built from orthogonal switches.

Shapes in names: B batch, T sequence, D width (d_model), H heads, K head dim, F MLP hidden, V vocab.
Blocks run under ``nn.scan`` (parameters stacked on a leading layer axis), so compile time need not
grow with depth; ``Arch.unroll`` blocks are unrolled per scan iteration.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .sharding import batch_sharded

if TYPE_CHECKING:
    from .config import ModelConfig


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

INIT_STD = 0.02


def resolve_variant(name: str, qk_norm: bool = False) -> Variant:
    v = VARIANTS[name]
    return dataclasses.replace(v, qk_norm=True) if qk_norm else v


def mlp_hidden(variant: Variant, width: int) -> int:
    if variant.mlp == "swiglu":  # 3 matrices of D x F with F = 8D/3 keep ~8 D^2 parameters, as GELU's 4x
        return 8 * math.ceil(8 * width / 3 / 8)
    return 4 * width


@dataclass(frozen=True)
class Arch:
    """Everything the network needs to know: a ModelConfig resolved against its data's vocabulary."""
    variant: Variant
    vocab: int
    width: int
    depth: int
    heads: int
    seq_len: int
    dtype: Any = jnp.float32        # compute dtype; parameters are always float32
    unroll: int = 0                 # blocks per scan iteration; 0 = auto (resolve_unroll, at trace time)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def make_arch(model_cfg: ModelConfig, vocab: int, dtype: Any = jnp.float32) -> Arch:
    return Arch(resolve_variant(model_cfg.variant, model_cfg.qk_norm), vocab, model_cfg.width,
                model_cfg.depth, model_cfg.heads, model_cfg.seq_len, dtype, model_cfg.unroll)


def resolve_unroll(unroll: int, depth: int) -> int:
    """0 = auto. On CPU, unroll every block: a rolled scan slices each layer's weights out of the stack
    and writes its activations back into stacked buffers, copies that cost 20-50% of the step there
    (benchmarks/throughput.py, w64-256 x d4-16), while compiling 16 unrolled blocks still takes ~7 s.
    On GPU/TPU keep the loop rolled, so compile time stays flat in depth. Resolved when the model is
    traced, not in make_arch: describing a cell (dry runs, store records) must not start a JAX backend,
    which would also be too early for jax.distributed.initialize."""
    if unroll:
        return min(unroll, depth)
    return depth if jax.default_backend() == "cpu" else 1


def _norm(arch: Arch, name: str) -> nn.Module:
    if arch.variant.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-6, dtype=arch.dtype, name=name)
    return nn.LayerNorm(epsilon=1e-5, use_bias=arch.variant.bias, dtype=arch.dtype, name=name)


def _dense(arch: Arch, features: int, name: str, std: float = INIT_STD) -> nn.Dense:
    return nn.Dense(features, use_bias=arch.variant.bias, dtype=arch.dtype,
                    kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros, name=name)


def rope(x_BHTK: jax.Array) -> jax.Array:
    """Rotary position embedding, rotating pairs (i, i + K/2) by position-dependent angles."""
    T, K = x_BHTK.shape[-2:]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, K, 2, dtype=np.float32) / K))
    angles_TK2 = np.arange(T, dtype=np.float32)[:, None] * inv_freq[None, :]
    cos, sin = jnp.asarray(np.cos(angles_TK2), x_BHTK.dtype), jnp.asarray(np.sin(angles_TK2), x_BHTK.dtype)
    x1, x2 = x_BHTK[..., : K // 2], x_BHTK[..., K // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def causal_attention(q_BHTK: jax.Array, k_BHTK: jax.Array, v_BHTK: jax.Array) -> jax.Array:
    """Softmax attention with a causal mask; softmax in float32."""
    T, K = q_BHTK.shape[-2:]
    scores_BHTT = jnp.einsum("bhqk,bhsk->bhqs", q_BHTK, k_BHTK).astype(jnp.float32) / math.sqrt(K)
    mask_TT = np.tril(np.ones((T, T), dtype=bool))
    scores_BHTT = jnp.where(mask_TT, scores_BHTT, -1e30)
    probs_BHTT = jax.nn.softmax(scores_BHTT, axis=-1).astype(v_BHTK.dtype)
    return jnp.einsum("bhqs,bhsk->bhqk", probs_BHTT, v_BHTK)


class Attention(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        a = self.arch
        B, T, D = x_BTD.shape
        qkv_BTD3 = _dense(a, 3 * D, "qkv")(x_BTD)
        qkv_3BHTK = qkv_BTD3.reshape(B, T, 3, a.heads, a.head_dim).transpose(2, 0, 3, 1, 4)
        q_BHTK, k_BHTK, v_BHTK = qkv_3BHTK[0], qkv_3BHTK[1], qkv_3BHTK[2]
        if a.variant.qk_norm:
            q_BHTK = nn.RMSNorm(epsilon=1e-6, dtype=a.dtype, name="q_norm")(q_BHTK)
            k_BHTK = nn.RMSNorm(epsilon=1e-6, dtype=a.dtype, name="k_norm")(k_BHTK)
        if a.variant.position == "rope":
            q_BHTK, k_BHTK = rope(q_BHTK), rope(k_BHTK)
        y_BHTK = causal_attention(q_BHTK, k_BHTK, v_BHTK)
        y_BTD = y_BHTK.transpose(0, 2, 1, 3).reshape(B, T, D)
        return _dense(a, D, "proj", INIT_STD / math.sqrt(2 * a.depth))(y_BTD)


class Mlp(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        a = self.arch
        F, out_std = mlp_hidden(a.variant, a.width), INIT_STD / math.sqrt(2 * a.depth)
        if a.variant.mlp == "swiglu":
            h_BTF = nn.silu(_dense(a, F, "gate")(x_BTD)) * _dense(a, F, "up")(x_BTD)
        else:
            h_BTF = nn.gelu(_dense(a, F, "up")(x_BTD), approximate=True)
        return _dense(a, a.width, "down", out_std)(h_BTF)


class Block(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x_BTD: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        x_BTD = batch_sharded(x_BTD)
        x_BTD = x_BTD + Attention(self.arch, name="attn")(_norm(self.arch, "norm1")(x_BTD))
        x_BTD = x_BTD + Mlp(self.arch, name="mlp")(_norm(self.arch, "norm2")(x_BTD))
        return x_BTD, None


class Transformer(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        """Token ids [B, T] -> logits [B, T, V] in float32."""
        a = self.arch
        T = tokens_BT.shape[1]
        embed = nn.Embed(a.vocab, a.width, embedding_init=nn.initializers.normal(INIT_STD), name="embed")
        x_BTD = batch_sharded(embed(tokens_BT).astype(a.dtype))
        if a.variant.position == "learned":
            pos_TD = self.param("pos_embed", nn.initializers.normal(INIT_STD), (a.seq_len, a.width))
            x_BTD = x_BTD + pos_TD[:T].astype(a.dtype)
        blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                         length=a.depth, unroll=resolve_unroll(a.unroll, a.depth))(a, name="blocks")
        x_BTD, _ = blocks(x_BTD, None)
        x_BTD = _norm(a, "norm_f")(x_BTD)
        if a.variant.tied_embeddings:
            logits_BTV = embed.attend(x_BTD)
        else:
            logits_BTV = nn.Dense(a.vocab, use_bias=False, dtype=a.dtype,
                                  kernel_init=nn.initializers.normal(INIT_STD), name="head")(x_BTD)
        return batch_sharded(logits_BTV.astype(jnp.float32))


def param_counts(params: Any) -> dict[str, int]:
    """Split parameter counts the way a scaling fit needs them.

    embedding: token (and learned position) embeddings; head: the unembedding matrix if untied (0 if
    tied); non_embedding: everything else (blocks and final norm), the N of N ~ 12 m^2 l."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    counts = {"embedding": 0, "head": 0, "non_embedding": 0}
    for path, leaf in flat:
        keys = [getattr(p, "key", str(p)) for p in path]
        n = int(np.prod(leaf.shape))
        if keys[0] in ("embed", "pos_embed"):
            counts["embedding"] += n
        elif keys[0] == "head":
            counts["head"] += n
        else:
            counts["non_embedding"] += n
    counts["total"] = sum(counts.values())
    return counts


def non_embedding_formula(arch: Arch) -> int:
    """Closed-form non-embedding parameter count (tests check it against the real pytree)."""
    v, m, F = arch.variant, arch.width, mlp_hidden(arch.variant, arch.width)
    norm = (2 if v.norm == "layernorm" and v.bias else 1) * m
    attn = 4 * m * m + (4 * m if v.bias else 0) + (2 * arch.head_dim if v.qk_norm else 0)
    mlp = (3 * m * F) if v.mlp == "swiglu" else (2 * m * F + (F + m if v.bias else 0))
    return arch.depth * (attn + mlp + 2 * norm) + norm


def flops_per_token(arch: Arch, n_non_embedding: int) -> int:
    """Training FLOPs per token (forward + backward = 3 x forward, 2 FLOPs per multiply-add):

        6 N  +  6 V m  +  12 l T m
        |       |         attention scores and weighted values, 2 matmuls x 2T m per token per layer,
        |       |         counted over the full T x T square as is conventional for MFU (PaLM, and
        |       |         ../shared/bench/torch_reference.py), although causal masking needs half
        |       the head (unembedding) matmul, tied or not
        non-embedding parameters (matmuls in the blocks; norms and biases are negligible)
    """
    return 6 * n_non_embedding + 6 * arch.vocab * arch.width + 12 * arch.depth * arch.seq_len * arch.width
