"""The network itself: causality, init loss, learning, parameter counts, FLOPs formula."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling_grid.trainer.config import OptimConfig
from scaling_grid.trainer.model import (
    VARIANTS,
    Arch,
    Transformer,
    flops_per_token,
    non_embedding_formula,
    param_counts,
    resolve_variant,
)
from scaling_grid.trainer.step import TrainState, decay_mask, lr_table, make_optimizer, train_chunk
from scaling_grid.trainer.step import schedule as schedule_fn

V, T = 256, 32


def _arch(variant: str, width: int = 64, depth: int = 2, heads: int = 2, unroll: int = 1) -> Arch:
    return Arch(resolve_variant(variant), V, width, depth, heads, T, unroll=unroll)


def _init(arch: Arch, seed: int = 0):
    model = Transformer(arch)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, T), jnp.int32))["params"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causal_masking(variant):
    """Changing the token at position t changes no logit at positions < t."""
    model, params = _init(_arch(variant))
    x = np.random.default_rng(0).integers(0, V, (2, T))
    base = np.asarray(model.apply({"params": params}, x))
    for t in (0, 7, T - 1):
        x2 = x.copy()
        x2[:, t] = (x2[:, t] + 1) % V
        out = np.asarray(model.apply({"params": params}, x2))
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t:], base[:, t:]), "a changed token must change its own logits"


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_loss_at_init_is_log_vocab(variant):
    model, params = _init(_arch(variant))
    x = np.random.default_rng(1).integers(0, V, (8, T))
    logits = model.apply({"params": params}, x)
    loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, np.roll(x, -1, 1)).mean())
    assert abs(loss - math.log(V)) < 0.05, loss


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_overfits_one_batch(variant):
    arch = _arch(variant)
    model, params = _init(arch)
    cfg = OptimConfig(lr=3e-3, warmup_steps=5, schedule="constant")
    tx = make_optimizer(cfg, schedule_fn(cfg, 100))
    x = np.random.default_rng(2).integers(0, V, (1, 4, T + 1))
    xs, ys = np.repeat(x[:, :, :-1], 60, 0), np.repeat(x[:, :, 1:], 60, 0)  # 60 updates on one batch
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    state, metrics = jax.jit(lambda s, a, b: train_chunk(s, a, b, model=model, tx=tx, accum=1))(state, xs, ys)
    loss = np.asarray(metrics["loss"])
    assert loss[0] > 5.0 and loss[-1] < 0.5, (loss[0], loss[-1])
    assert int(state.step) == 60


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("width,depth,heads", [(64, 2, 2), (96, 3, 4), (128, 1, 2)])
def test_param_counts_match_formula(variant, width, depth, heads):
    arch = _arch(variant, width, depth, heads)
    abstract = jax.eval_shape(lambda k: Transformer(arch).init(k, jnp.zeros((1, T), jnp.int32))["params"],
                              jax.random.key(0))
    c = param_counts(abstract)
    assert c["non_embedding"] == non_embedding_formula(arch)
    v = VARIANTS[variant]
    assert c["embedding"] == V * width + (T * width if v.position == "learned" else 0)
    assert c["head"] == (0 if v.tied_embeddings else V * width)
    # Asymptotically N ~ 12 m^2 l; the rest is norms, biases and SwiGLU rounding.
    assert abs(c["non_embedding"] / (12 * width**2 * depth) - 1) < 0.15


def test_flops_formula_matches_reference_convention():
    arch = _arch("gpt2", 128, 4, 2)
    n = non_embedding_formula(arch)
    assert flops_per_token(arch, n) == 6 * n + 6 * V * 128 + 12 * 4 * T * 128


@pytest.mark.parametrize("unroll", [2, 3])
@pytest.mark.slow
def test_unrolled_scan_computes_the_same_function(unroll):
    """Unrolling blocks inside the scan (all of them, or with a remainder) is a speed choice only: same
    parameter layout, same logits as the rolled loop, for the forward and the gradient."""
    rolled, params = _init(_arch("llama", depth=3))
    unrolled = Transformer(_arch("llama", depth=3, unroll=unroll))
    x = np.random.default_rng(3).integers(0, V, (2, T))

    def loss(model, p):
        return model.apply({"params": p}, x).astype(jnp.float32).std()

    np.testing.assert_allclose(np.asarray(unrolled.apply({"params": params}, x)),
                               np.asarray(rolled.apply({"params": params}, x)), rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(jax.tree.leaves(jax.grad(lambda p: loss(rolled, p))(params)),
                      jax.tree.leaves(jax.grad(lambda p: loss(unrolled, p))(params))):
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_weight_decay_only_on_matrices():
    _, params = _init(_arch("gpt2"))
    mask = decay_mask(params)
    flat = {"/".join(str(getattr(p, "key", p)) for p in path): m
            for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat["blocks/attn/qkv/kernel"] and flat["embed/embedding"] and flat["pos_embed"]
    assert not flat["blocks/attn/qkv/bias"] and not flat["blocks/norm1/scale"] and not flat["norm_f/bias"]


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, schedule=schedule, decay_fraction=0.2, final_lr_ratio=0.1)
    lr = lr_table(cfg, 100)
    assert lr.shape == (100,) and lr.dtype == np.float32 and np.all(lr > 0)
    # the table the train step reads is the optax schedule, and padding only appends zeros
    np.testing.assert_allclose(lr, [float(schedule_fn(cfg, 100)(i)) for i in range(100)], rtol=1e-6)
    padded = lr_table(cfg, 100, 130)
    np.testing.assert_array_equal(padded[:100], lr)
    assert padded.shape == (130,) and not padded[100:].any()
    assert lr[0] == pytest.approx(1e-4, rel=1e-5) and lr[9] == pytest.approx(1e-3, rel=1e-5)
    assert np.all(np.diff(lr[:10]) > 0)  # warmup rises
    if schedule == "constant":
        assert np.allclose(lr[10:], 1e-3)
    elif schedule == "cosine":
        assert np.all(np.diff(lr[10:]) <= 1e-12) and lr[-1] == pytest.approx(1e-4, rel=0.05)
    else:  # stable until the last 20% then linear to zero
        assert np.allclose(lr[10:80], 1e-3) and np.all(np.diff(lr[80:]) < 0) and lr[-1] < 1e-4


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_vocab_pad_rounds_the_tables_up_and_keeps_the_logits_to_the_vocabulary(variant):
    """model.vocab_pad: embedding (and an untied head) get rows up to a multiple of 128; the logits and
    so the loss cover the real vocabulary only; padded rows get no gradient (never an input, their
    logits cut); a config without it keeps its dict (and so its cell id)."""
    from scaling_grid.trainer.config import ModelConfig, RunConfig
    vocab = 300
    arch = dataclasses.replace(_arch(variant), vocab=vocab, vocab_pad=True)
    assert arch.vocab_rows == 384 and dataclasses.replace(arch, vocab_pad=False).vocab_rows == vocab
    model, params = _init(arch)
    assert params["embed"]["embedding"].shape == (384, 64)
    if variant == "llama":
        assert params["head"]["kernel"].shape == (64, 384)
    x = np.random.default_rng(0).integers(0, vocab, (2, T))
    assert model.apply({"params": params}, x).shape == (2, T, vocab)
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x), x).mean())(params)
    assert not np.any(np.asarray(grads["embed"]["embedding"][vocab:]))  # tied too: their logits are cut
    assert "vocab_pad" not in RunConfig().to_dict()["model"]
    assert RunConfig(model=ModelConfig(vocab_pad=True)).to_dict()["model"]["vocab_pad"] is True
