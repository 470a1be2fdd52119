"""Decoder-only Transformer (Flax linen) with named variants built from orthogonal switches.

Shapes in names: B batch, T sequence, D width (d_model), H heads, K head dim, F MLP hidden, V vocab.
Blocks run under ``nn.scan`` (parameters stacked on a leading layer axis), so compile time need not
grow with depth; ``Arch.unroll`` blocks are unrolled per scan iteration, and ``Arch.remat`` decides
what the backward pass recomputes instead of keeping.

Precision: parameters are float32; every matmul runs in the compute dtype (``Arch.dtype``), the tied
or untied head included, unless ``Arch.logits_fp32`` asks for a float32 head. Attention scores and
softmax are float32 whatever the compute dtype; the logits leave the model as float32, so the loss
is computed in float32.

Parametrization (``Arch.param``: sp | mup | completep): the init stds of the hidden matrices, the
attention logit scale and the residual-branch and output-logit multipliers come from
``parametrization.py``; under sp they are the standard ones and take the code paths they always did.
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

from . import parametrization as pz
from .config import ConfigError
from .registry import ATTENTION, VARIANTS, Variant
from .sharding import BATCH, batch_sharded

if TYPE_CHECKING:
    from .config import ModelConfig

INIT_STD = 0.02
VOCAB_PAD = 128  # a multiple of TPU/GPU matmul tiles and of any power-of-two mesh axis up to 128


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
    attention: str = "auto"         # auto | xla | cudnn | splash (resolve_attention, at trace time)
    remat: str = "none"             # none | full | dots_saveable: what the backward pass recomputes
    logits_fp32: bool = False       # the head's matmul in float32 (else in the compute dtype)
    param: str = "sp"               # sp | mup | completep (trainer/parametrization.py)
    base_width: int = 128           # mup/completep equal sp at width = base_width ...
    base_depth: int = 4             # ... and depth = base_depth
    base_head_dim: int = 0          # ... and head dim = base_head_dim (0: this model's head dim)
    vocab_pad: bool = False         # embedding and head rows rounded up to a multiple of VOCAB_PAD
    platform: str = ""              # cpu | tpu | cuda | rocm: what it compiles for (step.build sets it
                                    # from the mesh's devices; "" = this process's default backend)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def vocab_rows(self) -> int:
        """Rows of the embedding and the head: the vocabulary, padded when ``vocab_pad`` asks."""
        return -(-self.vocab // VOCAB_PAD) * VOCAB_PAD if self.vocab_pad else self.vocab


def make_arch(model_cfg: ModelConfig, vocab: int, dtype: Any = jnp.float32) -> Arch:
    return Arch(resolve_variant(model_cfg.variant, model_cfg.qk_norm), vocab, model_cfg.width,
                model_cfg.depth, model_cfg.heads, model_cfg.seq_len, dtype, model_cfg.unroll,
                model_cfg.attention, model_cfg.remat, model_cfg.logits_fp32, model_cfg.param,
                model_cfg.base_width, model_cfg.base_depth, model_cfg.base_head_dim, model_cfg.vocab_pad)


def platform_of(devices: Any) -> str:
    """cpu | tpu | cuda | rocm: the kind of chip these devices are (the first one's), whether they are
    this process's devices or a topology's that a compiler targets without the chip (trainer/target.py)."""
    d = next(iter(devices))
    if d.platform in ("gpu", "cuda", "rocm"):
        return "rocm" if d.platform == "rocm" or "amd" in d.device_kind.lower() else "cuda"
    return str(d.platform)


def compute_dtype(name: str, platform: str = "") -> Any:
    """train.dtype resolved: auto is bf16 where matmuls pay for it (GPU, TPU) and float32 on CPU, where
    bf16 gained nothing (docs/speed.md); ``platform`` as platform_of says ("" = the default backend)."""
    if name == "auto":
        return jnp.bfloat16 if (platform or _backend()) != "cpu" else jnp.float32
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _backend() -> str:
    return platform_of(jax.devices()[:1])


def resolve_unroll(unroll: int, depth: int, platform: str = "") -> int:
    """0 = auto. On CPU, unroll every block: a rolled scan slices each layer's weights out of the stack
    and writes its activations back into stacked buffers, copies that cost 20-50% of the step there
    (benchmarks/throughput.py, w64-256 x d4-16), while compiling 16 unrolled blocks still takes ~7 s.
    On GPU/TPU keep the loop rolled, so compile time stays flat in depth. Resolved when the model is
    traced, not in make_arch: describing a cell (dry runs, store records) must not start a JAX backend,
    which would also be too early for jax.distributed.initialize."""
    if unroll:
        return min(unroll, depth)
    return depth if (platform or _backend()) == "cpu" else 1


def _norm(arch: Arch, name: str) -> nn.Module:
    if arch.variant.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-6, dtype=arch.dtype, name=name)
    return nn.LayerNorm(epsilon=1e-5, use_bias=arch.variant.bias, dtype=arch.dtype, name=name)


def _dense(arch: Arch, features: int, name: str, std: float = INIT_STD) -> nn.Dense:
    return nn.Dense(features, use_bias=arch.variant.bias, dtype=arch.dtype,
                    kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros, name=name)


def rope(x_BTHK: jax.Array) -> jax.Array:
    """Rotary position embedding, rotating pairs (i, i + K/2) by position-dependent angles."""
    T, K = x_BTHK.shape[1], x_BTHK.shape[-1]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, K, 2, dtype=np.float32) / K))
    angles_T1K2 = (np.arange(T, dtype=np.float32)[:, None] * inv_freq[None, :])[:, None, :]
    cos, sin = jnp.asarray(np.cos(angles_T1K2), x_BTHK.dtype), jnp.asarray(np.sin(angles_T1K2), x_BTHK.dtype)
    x1, x2 = x_BTHK[..., : K // 2], x_BTHK[..., K // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def resolve_attention(arch: Arch) -> str:
    """The attention kernel for this arch on its platform (``arch.platform``, the mesh's devices; else
    this process's backend): xla | cudnn | splash | manual.

    auto: cuDNN's fused (flash) attention on an NVIDIA GPU when its constraints hold (bf16 or fp16
    compute, head dim a multiple of 8 and at most 128), else XLA's. On CPU, auto keeps the hand-written
    ``manual_attention``, measured faster there than ``jax.nn.dot_product_attention``'s XLA path
    (docs/speed.md). cudnn and splash fail with a ConfigError where they cannot run. Resolved when the model is
    traced, as resolve_unroll: describing a cell must not start a JAX backend."""
    backend, want = arch.platform or _backend(), arch.attention
    low = jnp.dtype(arch.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    cudnn_ok = arch.head_dim % 8 == 0 and arch.head_dim <= 128
    if want == "auto":
        if backend == "cuda" and low and cudnn_ok:
            return "cudnn"
        return "manual" if backend == "cpu" else "xla"
    if want == "cudnn":
        if backend != "cuda":
            raise ConfigError(f"model.attention='cudnn': cuDNN's fused attention needs an NVIDIA GPU; the "
                              f"devices are {backend!r}. Use model.attention=auto or xla")
        if not low:
            raise ConfigError(f"model.attention='cudnn': cuDNN's fused attention needs bf16 or fp16 compute, "
                              f"got {jnp.dtype(arch.dtype).name}; set train.dtype=bfloat16 (or auto)")
        if not cudnn_ok:
            raise ConfigError(f"model.attention='cudnn': head dim width/heads = {arch.head_dim} must be a "
                              "multiple of 8 and at most 128 for cuDNN; use model.attention=xla")
        return "cudnn"
    if want == "splash":
        if backend != "tpu":
            raise ConfigError(f"model.attention='splash': the splash kernel runs on TPU only; the devices are "
                              f"{backend!r}. Use model.attention=auto or xla")
        return "splash"
    if want == "xla":
        return "xla"
    raise ConfigError(f"model.attention={want!r}: allowed: {list(ATTENTION)}")


def manual_attention(q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array,
                     scale: float | None = None) -> jax.Array:
    """Causal softmax attention written out: scores accumulated and normalised in float32. In bf16 the
    score matmul names the BF16_BF16_F32 algorithm, as jax.nn.dot_product_attention does, so that its
    gradient (a float32 cotangent times bf16 keys or queries) also runs on bf16 operands. Computed in
    the (B, H, T, K) layout: on CPU, einsums straight from (B, T, H, K) left XLA more transposes and
    copies and were 8% slower at width 64 (docs/speed.md). ``scale`` multiplies the scores (None:
    divide by sqrt(K), the standard scale)."""
    T, K = q_BTHK.shape[1], q_BTHK.shape[-1]
    bf16 = q_BTHK.dtype == jnp.bfloat16
    q_BHTK, k_BHTK, v_BHTK = (x.transpose(0, 2, 1, 3) for x in (q_BTHK, k_BTHK, v_BTHK))
    scores_BHTT = jnp.einsum("bhqk,bhsk->bhqs", q_BHTK, k_BHTK, preferred_element_type=jnp.float32,
                             precision=jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if bf16 else None)
    scores_BHTT = scores_BHTT / math.sqrt(K) if scale is None else scores_BHTT * scale
    mask_TT = np.tril(np.ones((T, T), dtype=bool))
    scores_BHTT = jnp.where(mask_TT, scores_BHTT, -1e30)
    probs_BHTT = jax.nn.softmax(scores_BHTT, axis=-1).astype(v_BHTK.dtype)
    return jnp.einsum("bhqs,bhsk->bhqk", probs_BHTT, v_BHTK).transpose(0, 2, 1, 3)


def splash_attention(q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array,
                     interpret: bool = False, scale: float | None = None) -> jax.Array:
    """Causal attention through the TPU Pallas splash kernel (blocks above the diagonal skipped,
    float32 accumulation). ``interpret`` runs the kernel in Pallas' interpreter on any backend (tests).
    Traced under a mesh (``step.build`` sets one), each device runs the kernel on its own rows of the
    batch and, where the heads divide over the ``tensor`` axis, its own heads (``jax.shard_map``): a
    Pallas call has no partitioning rule of its own, so XLA would otherwise gather the whole batch."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash
    from jax.sharding import PartitionSpec as P

    def local(q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array) -> jax.Array:
        _, T, H, K = q_BTHK.shape
        blk = next(b for b in (512, 256, 128) if T % b == 0)  # config.validate: seq_len % 128 == 0
        sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                                  block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
        mask = splash.MultiHeadMask([splash.CausalMask((T, T)) for _ in range(H)])
        kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                        interpret=interpret)
        q_BHTK, k_BHTK, v_BHTK = (x.transpose(0, 2, 1, 3) for x in (q_BTHK, k_BTHK, v_BTHK))
        q_scale = 1 / math.sqrt(K) if scale is None else scale  # the kernel does not scale the scores
        y_BHTK = jax.vmap(kernel)(q_BHTK * jnp.asarray(q_scale, q_BHTK.dtype), k_BHTK, v_BHTK)
        return y_BHTK.transpose(0, 2, 1, 3)

    mesh = jax.sharding.get_abstract_mesh()
    sizes = {} if mesh.empty else dict(mesh.shape)
    rows = tuple(a for a in BATCH if sizes.get(a, 1) > 1)
    heads = "tensor" if sizes.get("tensor", 1) > 1 and q_BTHK.shape[2] % sizes["tensor"] == 0 else None
    if not rows and heads is None:
        return local(q_BTHK, k_BTHK, v_BTHK)
    spec = P(rows or None, None, heads)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q_BTHK, k_BTHK, v_BTHK)


def causal_attention(q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array, impl: str,
                     scale: float | None = None) -> jax.Array:
    """Causal softmax attention [B, T, H, K] -> [B, T, H, K] by the kernel ``impl``
    (resolve_attention); scores accumulated and normalised in float32 by every kernel. ``scale``
    multiplies q.k (None: 1/sqrt(K); parametrization.attention_scale)."""
    if impl == "manual":
        return manual_attention(q_BTHK, k_BTHK, v_BTHK, scale)
    if impl == "splash":
        return splash_attention(q_BTHK, k_BTHK, v_BTHK, scale=scale)
    return jax.nn.dot_product_attention(q_BTHK, k_BTHK, v_BTHK, scale=scale, is_causal=True,
                                        implementation="cudnn" if impl == "cudnn" else "xla")


class Attention(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        a = self.arch
        B, T, D = x_BTD.shape
        qkv_BTE = _dense(a, 3 * D, "qkv", pz.hidden_init_std(a, INIT_STD))(x_BTD)
        qkv_BT3HK = qkv_BTE.reshape(B, T, 3, a.heads, a.head_dim)
        q_BTHK, k_BTHK, v_BTHK = qkv_BT3HK[:, :, 0], qkv_BT3HK[:, :, 1], qkv_BT3HK[:, :, 2]
        if a.variant.qk_norm:
            q_BTHK = nn.RMSNorm(epsilon=1e-6, dtype=a.dtype, name="q_norm")(q_BTHK)
            k_BTHK = nn.RMSNorm(epsilon=1e-6, dtype=a.dtype, name="k_norm")(k_BTHK)
        if a.variant.position == "rope":
            q_BTHK, k_BTHK = rope(q_BTHK), rope(k_BTHK)
        y_BTHK = causal_attention(q_BTHK, k_BTHK, v_BTHK, resolve_attention(a), pz.attention_scale(a))
        y_BTD = y_BTHK.reshape(B, T, D)
        return _dense(a, D, "proj", pz.out_proj_init_std(a, INIT_STD))(y_BTD)


class Mlp(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        a = self.arch
        F = mlp_hidden(a.variant, a.width)
        in_std, out_std = pz.hidden_init_std(a, INIT_STD), pz.out_proj_init_std(a, INIT_STD)
        if a.variant.mlp == "swiglu":
            h_BTF = nn.silu(_dense(a, F, "gate", in_std)(x_BTD)) * _dense(a, F, "up", in_std)(x_BTD)
        else:
            h_BTF = nn.gelu(_dense(a, F, "up", in_std)(x_BTD), approximate=True)
        return _dense(a, a.width, "down", out_std)(h_BTF)


class Block(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, x_BTD: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        x_BTD = batch_sharded(x_BTD)
        mult = pz.branch_multiplier(self.arch)  # completep: base_depth/depth; 1 (skipped) otherwise
        attn_BTD = Attention(self.arch, name="attn")(_norm(self.arch, "norm1")(x_BTD))
        x_BTD = x_BTD + (attn_BTD if mult == 1 else attn_BTD * jnp.asarray(mult, attn_BTD.dtype))
        mlp_BTD = Mlp(self.arch, name="mlp")(_norm(self.arch, "norm2")(x_BTD))
        x_BTD = x_BTD + (mlp_BTD if mult == 1 else mlp_BTD * jnp.asarray(mult, mlp_BTD.dtype))
        # Coordinate checks (tests/trainer/test_param.py) read these with mutable=["intermediates"]; a no-op otherwise.
        self.sow("intermediates", "attn_out", attn_BTD)
        self.sow("intermediates", "mlp_out", mlp_BTD)
        return x_BTD, None


class Transformer(nn.Module):
    arch: Arch

    @nn.compact
    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        """Token ids [B, T] -> logits [B, T, V] in float32."""
        a = self.arch
        T = tokens_BT.shape[1]
        head_dtype = jnp.float32 if a.logits_fp32 else a.dtype  # nn.Embed's default would promote to f32
        embed = nn.Embed(a.vocab_rows, a.width, dtype=head_dtype, embedding_init=nn.initializers.normal(INIT_STD),
                         name="embed")
        x_BTD = batch_sharded(embed(tokens_BT).astype(a.dtype))
        if a.variant.position == "learned":
            pos_TD = self.param("pos_embed", nn.initializers.normal(INIT_STD), (a.seq_len, a.width))
            x_BTD = x_BTD + pos_TD[:T].astype(a.dtype)
        block: Any = Block
        if a.remat != "none":  # keep only each block's input (full) or also its matmul outputs
            policy = jax.checkpoint_policies.dots_saveable if a.remat == "dots_saveable" else None
            block = nn.remat(Block, policy=policy, prevent_cse=False)  # no CSE barrier needed under scan
        blocks = nn.scan(block, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                         length=a.depth, unroll=resolve_unroll(a.unroll, a.depth, a.platform))(a, name="blocks")
        self.sow("intermediates", "embedded", x_BTD)
        x_BTD, _ = blocks(x_BTD, None)
        self.sow("intermediates", "residual", x_BTD)
        x_BTD = _norm(a, "norm_f")(x_BTD)
        if a.variant.tied_embeddings:
            logits_BTV = embed.attend(x_BTD)
        else:
            logits_BTV = nn.Dense(a.vocab_rows, use_bias=False, dtype=head_dtype,
                                  kernel_init=nn.initializers.normal(INIT_STD), name="head")(x_BTD)
        logits_BTV = logits_BTV[..., :a.vocab].astype(jnp.float32)  # padded rows: never a target
        mult = pz.output_multiplier(a)  # mup/completep: base_width/width, as muP's MuReadout; 1 (skipped) under sp
        return batch_sharded(logits_BTV if mult == 1 else logits_BTV * mult)


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
        |       |         the PyTorch yardstick benchmarks/throughput.py compares with), although
        |       |         causal masking needs half
        |       the head (unembedding) matmul, tied or not
        non-embedding parameters (matmuls in the blocks; norms and biases are negligible)
    """
    return 6 * n_non_embedding + 6 * arch.vocab * arch.width + 12 * arch.depth * arch.seq_len * arch.width
