"""model.param: sp | mup | completep (trainer/parametrization.py). At the base shape mup and completep
are sp; the multipliers land where documented; and a coordinate check (Yang et al. 2022, Sec. 8 and
App. D.1): after a few Adam steps at one base lr, the change of each layer's output stays flat in
width under mup and in depth under completep, and drifts under sp."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_grid.trainer import config as C
from scaling_grid.trainer import configfile
from scaling_grid.trainer import parametrization as pz
from scaling_grid.trainer.config import OptimConfig
from scaling_grid.trainer.model import INIT_STD, Arch, Transformer, resolve_variant
from scaling_grid.trainer.registry import PARAMS
from scaling_grid.trainer.step import TrainState, build, lr_table, make_optimizer, train_chunk

V, T, B = 256, 32, 8
HEAD_DIM = 8  # heads = width / HEAD_DIM, as the grids' `heads: {rule: head_dim}`


def _arch(param: str, width: int, depth: int, variant: str = "gpt2", base_width: int = 32,
          base_depth: int = 2) -> Arch:
    return Arch(resolve_variant(variant), V, width, depth, width // HEAD_DIM, T, unroll=1, param=param,
                base_width=base_width, base_depth=base_depth)


@functools.cache
def _text() -> np.ndarray:
    from scaling_grid.trainer.sources import shakespeare_documents
    return np.frombuffer("".join(shakespeare_documents()[:40]).encode(), np.uint8).astype(np.int32)


def _batches(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[steps, B, T] inputs and targets: windows of Shakespeare bytes."""
    text, rng = _text(), np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - T - 1, (steps, B))
    seqs = text[starts[..., None] + np.arange(T + 1)]
    return seqs[..., :-1], seqs[..., 1:]


# ---- base shape: mup and completep are sp -----------------------------------------------------------

@pytest.mark.parametrize("variant", ["gpt2", "llama"])
@pytest.mark.slow
def test_base_shape_equals_sp(variant):
    """Through step.build (init, optimizer, train, eval): same losses as sp at width = base_width and
    depth = base_depth, for the tied (gpt2) and untied (llama) head."""
    optim = OptimConfig(lr=3e-3, warmup_steps=2, schedule="cosine")
    xs, ys = _batches(6)
    curves = {}
    for param in PARAMS:
        steps = build(_arch(param, 32, 2, variant), optim)
        state = steps.init(jax.random.key(0))
        state, metrics = steps.train(state, xs, ys, jnp.asarray(lr_table(optim, 6)))
        val = np.concatenate([xs[0], ys[0][:, -1:]], axis=1)
        curves[param] = np.concatenate([np.asarray(metrics["loss"]), np.asarray(steps.eval(state.params, val))])
    np.testing.assert_allclose(curves["mup"], curves["sp"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(curves["completep"], curves["sp"], rtol=0, atol=1e-6)
    assert curves["sp"][5] < curves["sp"][0]  # it trained


def test_state_layout_is_the_same():
    """Checkpoints do not care about the parametrization: the optimizer state has one layout."""
    arch = _arch("completep", 64, 4)
    params = jax.eval_shape(lambda k: Transformer(arch).init(k, jnp.zeros((1, T), jnp.int32))["params"],
                            jax.random.key(0))
    optim = OptimConfig()
    layouts = {p: jax.tree.structure(jax.eval_shape(make_optimizer(optim, lambda c: 1e-3, _arch(p, 64, 4)).init,
                                                    params)) for p in PARAMS}
    assert layouts["sp"] == layouts["mup"] == layouts["completep"]
    assert jax.tree.structure(jax.eval_shape(make_optimizer(optim, lambda c: 1e-3).init, params)) == layouts["sp"]


# ---- the multipliers -------------------------------------------------------------------------------

def _std(params, *keys) -> float:
    x = params
    for k in keys:
        x = x[k]
    return float(np.std(np.asarray(x)))


@pytest.mark.slow
def test_init_stds():
    """Hidden kernels' init std shrinks like sqrt(base_width/width) under mup (and completep);
    embeddings keep 0.02; the residual output projections keep GPT-2's 1/sqrt(2 depth) under sp and
    mup, and freeze it at base_depth under completep."""
    got = {}
    for param in PARAMS:
        for width, depth in ((32, 2), (128, 8)):
            arch = _arch(param, width, depth, "llama")
            p = jax.jit(Transformer(arch).init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
            got[param, width, depth] = {
                "qkv": _std(p, "blocks", "attn", "qkv", "kernel"), "up": _std(p, "blocks", "mlp", "up", "kernel"),
                "proj": _std(p, "blocks", "attn", "proj", "kernel"), "down": _std(p, "blocks", "mlp", "down", "kernel"),
                "embed": _std(p, "embed", "embedding"), "head": _std(p, "head", "kernel")}
    close = functools.partial(pytest.approx, rel=0.03)
    for w, d in ((32, 2), (128, 8)):
        sp = got["sp", w, d]
        assert sp["qkv"] == close(INIT_STD) and sp["proj"] == close(INIT_STD / math.sqrt(2 * d))
        for param in ("mup", "completep"):
            g, shrink = got[param, w, d], math.sqrt(32 / w)
            assert g["qkv"] == close(INIT_STD * shrink) and g["up"] == close(INIT_STD * shrink)
            out_depth = d if param == "mup" else 2
            assert g["proj"] == close(INIT_STD * shrink / math.sqrt(2 * out_depth))
            assert g["down"] == close(INIT_STD * shrink / math.sqrt(2 * out_depth))
            assert g["embed"] == close(INIT_STD) and g["head"] == close(INIT_STD)


def test_forward_multipliers():
    arch = _arch("completep", 128, 8, base_width=32, base_depth=2)
    assert pz.output_multiplier(arch) == 32 / 128
    assert pz.branch_multiplier(arch) == 2 / 8
    assert pz.attention_scale(arch) == pytest.approx(1 / math.sqrt(HEAD_DIM))  # head dim fixed: no change
    fixed_heads = Arch(resolve_variant("gpt2"), V, 128, 8, 2, T, param="mup", base_width=32, base_head_dim=16)
    assert pz.attention_scale(fixed_heads) == pytest.approx(4 / 64)  # sqrt(16) / 64: 1/head_dim
    assert pz.branch_multiplier(_arch("mup", 128, 8)) == 1 and pz.output_multiplier(_arch("sp", 128, 8)) == 1
    assert pz.attention_scale(_arch("sp", 128, 8)) is None


@pytest.mark.slow
def test_per_leaf_optimizer_constants():
    """Adam lr multipliers: hidden matrices base_width/width, everything else 1; completep's weight
    decay on hidden matrices width/base_width (lr x decay independent of width); its eps
    (base_width/width) (base_depth/depth); measured on a real update, not just the rule."""
    arch = _arch("completep", 128, 8, "llama")
    params = Transformer(arch).init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    lr = pz.leaf_multipliers(arch, params, pz.lr_multiplier)
    assert lr["blocks"]["attn"]["qkv"]["kernel"] == lr["blocks"]["mlp"]["down"]["kernel"] == 32 / 128
    assert lr["embed"]["embedding"] == lr["head"]["kernel"] == lr["norm_f"]["scale"] == 1
    assert lr["blocks"]["norm1"]["scale"] == 1  # (depth/base_depth)^(alpha-1), alpha = 1
    assert pz.wd_multiplier(arch, _path("blocks", "mlp", "up", "kernel")) == 128 / 32
    assert pz.wd_multiplier(_arch("mup", 128, 8), _path("blocks", "mlp", "up", "kernel")) == 1
    assert pz.wd_multiplier(arch, _path("embed", "embedding")) == 1
    assert pz.adam_eps_multiplier(arch) == (32 / 128) * (2 / 8) and pz.adam_eps_multiplier(_arch("mup", 128, 8)) == 1
    # The first Adam step moves every coordinate by lr * multiplier (m/sqrt(v) = sign(g) at step 1).
    optim = OptimConfig(weight_decay=0.0, clip_norm=0.0)
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    for param, hidden in (("sp", 1.0), ("mup", 0.25), ("completep", 0.25)):
        tx = make_optimizer(optim, lambda c: 1e-2, _arch(param, 128, 8, "llama"))
        updates, _ = tx.update(grads, tx.init(params), params)
        assert float(updates["blocks"]["mlp"]["up"]["kernel"][0, 0, 0]) == pytest.approx(-1e-2 * hidden, rel=1e-5)
        assert float(updates["embed"]["embedding"][0, 0]) == pytest.approx(-1e-2, rel=1e-5)
        assert float(updates["head"]["kernel"][0, 0]) == pytest.approx(-1e-2, rel=1e-5)


def _path(*keys: str) -> tuple:
    return tuple(jax.tree_util.DictKey(k) for k in keys)


# ---- coordinate check ------------------------------------------------------------------------------

LR, STEPS = 1e-2, 4


def _coord(arch: Arch) -> dict[str, float]:
    """RMS of the change, after STEPS Adam steps at lr LR, of the logits, of the residual stream
    after the blocks and of every block's attention and MLP output (over all blocks). At the base
    shape every parametrization is sp (test_base_shape_equals_sp), so those runs are shared."""
    if (arch.width, arch.depth) == (arch.base_width, arch.base_depth):
        arch = dataclasses.replace(arch, param="sp")
    return _coord_run(arch)


@functools.cache
def _coord_run(arch: Arch) -> dict[str, float]:
    model = Transformer(arch)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    optim = OptimConfig(lr=LR, warmup_steps=0, schedule="constant")
    tx = make_optimizer(optim, lambda c: LR, arch)
    xs, ys = _batches(STEPS)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    state, _ = jax.jit(lambda s, a, b: train_chunk(s, a, b, model=model, tx=tx, accum=1))(state, xs, ys)
    probe = _batches(1, seed=1)[0][0]

    def acts(p):
        logits, inter = model.apply({"params": p}, probe, mutable=["intermediates"])
        inter = inter["intermediates"]
        return {"logits": logits, "residual": inter["residual"][0], "attn": inter["blocks"]["attn_out"][0],
                "mlp": inter["blocks"]["mlp_out"][0]}

    acts = jax.jit(acts)
    before, after = acts(params), acts(state.params)
    return {k: float(jnp.sqrt(jnp.mean((after[k] - before[k]) ** 2))) for k in before}


def _slope(xs, ys) -> float:
    return float(np.polyfit(np.log2(xs), np.log2(ys), 1)[0])


WIDTHS, DEPTHS = (16, 32, 64, 128), (2, 4, 8, 16)


@pytest.fixture(scope="module")
def width_sweep():
    return {p: [_coord(_arch(p, w, 2, base_width=32)) for w in WIDTHS] for p in ("sp", "mup")}


@pytest.fixture(scope="module")
def depth_sweep():
    return {p: [_coord(_arch(p, 32, d, base_width=32, base_depth=2)) for d in DEPTHS] for p in ("sp", "completep")}


@pytest.mark.parametrize("what", ["logits", "residual", "attn", "mlp"])
@pytest.mark.slow
def test_coord_check_width(width_sweep, what):
    """Width 16 -> 128 at depth 2: under mup the change stays flat (|slope| in log-log below 0.25;
    measured -0.05 to 0.05), under sp it grows (threshold 0.6; measured 0.92 logits, 1.55-1.9 the rest)."""
    mup = _slope(WIDTHS, [r[what] for r in width_sweep["mup"]])
    sp = _slope(WIDTHS, [r[what] for r in width_sweep["sp"]])
    assert abs(mup) < 0.25, (what, mup, sp)
    assert sp > 0.6, (what, mup, sp)


@pytest.mark.slow
def test_coord_check_depth(depth_sweep):
    """Depth 2 -> 16 at width 32: under completep the change of the residual stream stays flat
    (|slope| below 0.25; measured ~0), under sp (= mup at base width) it grows like depth (measured
    ~0.95; threshold 0.6). Each block's output and the logits (behind the final norm) stay flat under
    both: pre-LN blocks see a normalised input, so depth shows in the sum of the branches."""
    cp = _slope(DEPTHS, [r["residual"] for r in depth_sweep["completep"]])
    sp = _slope(DEPTHS, [r["residual"] for r in depth_sweep["sp"]])
    assert abs(cp) < 0.25, (cp, sp)
    assert sp > 0.6, (cp, sp)
    for what in ("logits", "attn", "mlp"):
        assert abs(_slope(DEPTHS, [r[what] for r in depth_sweep["completep"]])) < 0.25, what


# ---- config --------------------------------------------------------------------------------------

def test_config_param_field():
    with pytest.raises(C.ConfigError, match=r"model\.param='umP'.*'sp', 'mup', 'completep'"):
        configfile.load(None, ["model.param=umP", "out_dir=/tmp/x"])
    with pytest.raises(C.ConfigError, match=r"model\.base_width=0"):
        configfile.load(None, ["model.base_width=0", "out_dir=/tmp/x"])
    d = C.RunConfig().to_dict()["model"]
    assert not {"param", "base_width", "base_depth", "base_head_dim"} & set(d)
    cfg = configfile.load(None, ["model.param=completep", "model.base_width=64", "out_dir=/tmp/x"])
    d = cfg.to_dict()["model"]
    assert d["param"] == "completep" and d["base_width"] == 64 and "base_depth" not in d
    assert C.from_dict(cfg.to_dict()) == cfg
