"""Optimizer, schedules and the pure, jit-compiled train and eval steps.

The train step takes a chunk of k steps' batches [k, B, T] and runs k optimizer updates under
``lax.scan`` in one compiled call: on CPU the per-call dispatch overhead is a large share of a small
model's step. Metrics come back as arrays of length k and stay on device until the loop fetches them.

The learning rate is an input, not a constant: the step reads the lr of update i from a float32 table
(``lr_table``), so one compiled step serves every budget and schedule of a shape (a grid pads the
tables to its longest run), and tau = sum of lr is summed from exactly the values the step used.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import ConfigError, MeshConfig, OptimConfig
from .model import Arch, Transformer, platform_of
from .sharding import BATCH, axis_sizes, bytes_per_device, make_mesh, state_shardings


class TrainState(NamedTuple):
    step: jax.Array          # int32 scalar: optimizer updates completed
    params: Any
    opt_state: Any


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the update index (0-based): warmup then cosine | wsd | constant."""
    warm, peak = cfg.warmup_steps, cfg.lr
    rest = max(total_steps - warm, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=cfg.final_lr_ratio)
    elif cfg.schedule == "wsd":
        decay = cfg.decay_steps(total_steps)
        stable = max(rest - decay, 0)
        after = optax.join_schedules([optax.constant_schedule(peak),
                                      optax.linear_schedule(peak, 0.0, decay)], [stable])
    else:
        after = optax.constant_schedule(peak)
    if warm == 0:
        return after
    # Linear warmup from peak/warm, so the first update already moves (lr 0 would waste a step).
    return optax.join_schedules([optax.linear_schedule(peak / warm, peak, warm - 1) if warm > 1
                                 else optax.constant_schedule(peak), after], [warm])


def lr_table(cfg: OptimConfig, total_steps: int, length: int | None = None) -> np.ndarray:
    """float32 lr of each update 0..total_steps-1, the table the train step reads; zero-padded to
    ``length`` (a grid pads every run of a shape to its longest, so they share one compiled step)."""
    fn = jax.jit(jax.vmap(schedule(cfg, total_steps)))
    table = np.zeros(max(length or 0, total_steps), np.float32)
    table[:total_steps] = np.asarray(fn(jnp.arange(total_steps, dtype=jnp.int32)))
    return table


def tau(lrs: np.ndarray) -> np.ndarray:
    """Training time after each update: tau[s] = the sum of the lr of updates 1..s, tau[0] = 0, summed in
    float64 in update order. The one place tau is computed (the loop records it; a pre-registration
    predicts with it), so a prediction's tau is the value the run will record, bit for bit."""
    return np.concatenate([[0.0], np.cumsum(np.asarray(lrs, np.float64))])


def decay_mask(params: Any) -> Any:
    """True for matrices (dense kernels, embeddings). Decided by name, not ndim: under nn.scan a
    stack of per-layer biases or norm scales is 2-D too."""
    def is_matrix(path: tuple[Any, ...], _: Any) -> bool:
        return getattr(path[-1], "key", None) in ("kernel", "embedding", "pos_embed")
    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: OptimConfig, lr: optax.Schedule, arch: Arch | None = None) -> optax.GradientTransformation:
    """AdamW with weight decay on matrices only and optional global-norm clipping. The lr must be a
    schedule (a function of the update count), so the optimizer state is the same for any lr.

    Under ``arch.param`` mup or completep, Adam's eps, each leaf's weight decay and each leaf's lr
    get the constants of trainer/parametrization.py. The chain is optax.adamw's own (scale_by_adam,
    masked decay, lr), so the state has the same layout under every parametrization, and the
    constants are Python floats per leaf: still a pure function of (params, grads, count)."""
    if arch is None or arch.param == "sp":
        adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                            mask=decay_mask)
    else:
        from . import parametrization as pz

        def decay(updates: Any, state: Any, params: Any) -> tuple[Any, Any]:
            # AdamW's decoupled decay g + wd * r * p, r per leaf (optax.add_decayed_weights, scalar wd)
            rates = pz.leaf_multipliers(arch, params, pz.wd_multiplier)
            return jax.tree.map(lambda g, p, r: g + (cfg.weight_decay * r) * p, updates, params, rates), state

        inner = optax.chain(
            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps * pz.adam_eps_multiplier(arch)),
            optax.masked(optax.GradientTransformation(lambda _: optax.EmptyState(), decay), decay_mask),
            optax.scale_by_learning_rate(lr))

        def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
            updates, state = inner.update(updates, state, params)  # per-leaf lr: scale the final step
            mults = pz.leaf_multipliers(arch, updates, pz.lr_multiplier)
            return jax.tree.map(lambda u, m: u * m, updates, mults), state

        adamw = optax.GradientTransformation(inner.init, update)
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm > 0 else adamw


def loss_fn(params: Any, model: Transformer, x_BT: jax.Array, y_BT: jax.Array) -> jax.Array:
    logits_BTV = model.apply({"params": params}, x_BT)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, y_BT).mean()


def _grads(params: Any, model: Transformer, x_BT: jax.Array, y_BT: jax.Array, accum: int) -> tuple[jax.Array, Any]:
    if accum == 1:
        return jax.value_and_grad(loss_fn)(params, model, x_BT, y_BT)
    # Micro-batches under a scan; the mean of equal-size micro-batch means is the batch mean.
    xs = x_BT.reshape(accum, -1, x_BT.shape[-1]), y_BT.reshape(accum, -1, y_BT.shape[-1])

    def micro(carry: tuple[jax.Array, Any], xy: tuple[jax.Array, jax.Array]) -> tuple[tuple[jax.Array, Any], None]:
        loss, grads = jax.value_and_grad(loss_fn)(params, model, *xy)
        return jax.tree_util.tree_map(jnp.add, carry, (loss, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(micro, zero, xs)
    return loss / accum, jax.tree_util.tree_map(lambda g: g / accum, grads)


def train_chunk(state: TrainState, x_KBT: jax.Array, y_KBT: jax.Array, *, model: Transformer,
                tx: optax.GradientTransformation, accum: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """k = x_KBT.shape[0] optimizer updates. Pure: same inputs, same outputs, bit for bit."""

    def one(state: TrainState, xy: tuple[jax.Array, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        loss, grads = _grads(state.params, model, *xy, accum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return jax.lax.scan(one, state, (x_KBT, y_KBT))


def eval_losses(params: Any, seqs_BT1: jax.Array, *, model: Transformer) -> jax.Array:
    """Mean next-token loss of each validation sequence [B, T+1] -> [B]."""
    logits_BTV = model.apply({"params": params}, seqs_BT1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, seqs_BT1[:, 1:]).mean(axis=-1)


class Steps(NamedTuple):
    """Compiled functions for one shape (any budget or schedule), laid out on a mesh. Packed
    (``pack`` = K > 1), every argument and result gains a leading axis of K runs: states [K, ...],
    batches [K, k, B, T], lr tables [K, S], metrics [K, k], eval losses [K, B]; the eval set is shared."""
    init: Any        # key -> TrainState
    train: Any       # (TrainState, x [k,B,T], y [k,B,T], lrs [S]) -> (TrainState, metrics), donates
                     # the state; update i uses lrs[i]
    eval: Any        # (params, seqs [B,T+1]) -> per-sequence losses [B]
    mesh: Mesh
    state_sharding: Any             # a NamedSharding per leaf of the TrainState (trainer/sharding.py)
    batch_sharding: NamedSharding   # for [k, B, T] arrays: rows split over data x fsdp
    eval_sharding: NamedSharding    # for [B, T+1]
    lr_sharding: NamedSharding      # for the lr table: replicated
    pack: int = 0                   # runs per call; 0: one run, no leading axis
    lane: Any = None                # packed: the one-run Steps of this shape (each run's init, checkpoints)
    stack: Any = None               # packed: [K run states] -> the packed state
    unstack: Any = None             # packed: (packed state, i) -> run i's state, laid out as `lane` lays it


def build(arch: Arch, optim: OptimConfig, accum: int = 1, mesh: Mesh | None = None, pack: int = 0,
          lane: Steps | None = None) -> Steps:
    """Init, train and eval for one shape on ``mesh`` (default: every device on the data axis). Of
    ``optim`` only the optimizer's constants are used (betas, eps, weight decay, clipping); the lr
    schedule arrives as a table with each train call.

    pack = K > 1 (0 or 1: one run): the same functions ``jax.vmap``-ed over K runs (seeds, lr tables, budgets of one
    shape) that train in one call: a small model leaves an accelerator idle, K of them less so. Each
    run's slice of the packed state is laid out as one run's state (``lane``, built here if not given)."""
    mesh = mesh or make_mesh()
    if not arch.platform:  # every `auto` (kernel, unroll) means what it means on the mesh's devices
        arch = dataclasses.replace(arch, platform=platform_of(mesh.devices.flat))
    model, tx0 = Transformer(arch), make_optimizer(optim, optax.constant_schedule(0.0), arch)
    replicated = NamedSharding(mesh, P())

    def init(key: jax.Array) -> TrainState:
        params = model.init(key, jnp.zeros((1, arch.seq_len), jnp.int32))["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, tx0.init(params))

    def train(state: TrainState, x_KBT: jax.Array, y_KBT: jax.Array, lrs_S: jax.Array
              ) -> tuple[TrainState, dict[str, jax.Array]]:
        tx = make_optimizer(optim, lambda count: lrs_S[count], arch)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the model's activation constraints
            return train_chunk(state, x_KBT, y_KBT, model=model, tx=tx, accum=accum)

    def evaluate(params: Any, seqs_BT1: jax.Array) -> jax.Array:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return eval_losses(params, seqs_BT1, model=model)

    # Explicit out_shardings for the whole state, from its abstract shapes: jit(tx.init) alone would
    # leave Adam's moments and the step counter on one device (a sharded step then fails with
    # "incompatible devices"), and the step's output must keep the input's layout so the donated
    # state is reused in place.
    state_sharding = state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
    batch_sharding = NamedSharding(mesh, P(None, BATCH))
    eval_sharding = NamedSharding(mesh, P(BATCH))
    if pack > 1:
        return _packed(pack, lane or build(arch, optim, accum, mesh), init, train, evaluate)
    return Steps(
        init=jax.jit(init, out_shardings=state_sharding),
        train=jax.jit(train, donate_argnums=0,
                      in_shardings=(state_sharding, batch_sharding, batch_sharding, replicated),
                      out_shardings=(state_sharding, replicated)),
        eval=jax.jit(evaluate, in_shardings=(state_sharding.params, eval_sharding),
                     out_shardings=replicated),
        mesh=mesh, state_sharding=state_sharding, batch_sharding=batch_sharding, eval_sharding=eval_sharding,
        lr_sharding=replicated,
    )


def _packed(K: int, lane: Steps, init: Any, train: Any, evaluate: Any) -> Steps:
    """`build`'s functions over a leading axis of K runs; each run's slice sharded as `lane` shards a run."""
    mesh, replicated = lane.mesh, lane.lr_sharding
    state_sharding = jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), lane.state_sharding)
    batch_sharding = NamedSharding(mesh, P(None, None, BATCH))

    def stack(states: list[TrainState]) -> TrainState:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def unstack(state: TrainState, i: jax.Array) -> TrainState:
        return jax.tree.map(lambda x: x[i], state)

    return Steps(
        init=jax.jit(jax.vmap(init), out_shardings=state_sharding),
        train=jax.jit(jax.vmap(train), donate_argnums=0,
                      in_shardings=(state_sharding, batch_sharding, batch_sharding, replicated),
                      out_shardings=(state_sharding, replicated)),
        eval=jax.jit(jax.vmap(evaluate, in_axes=(0, None)), in_shardings=(state_sharding.params, lane.eval_sharding),
                     out_shardings=replicated),
        mesh=mesh, state_sharding=state_sharding, batch_sharding=batch_sharding, eval_sharding=lane.eval_sharding,
        lr_sharding=replicated, pack=K, lane=lane,
        stack=jax.jit(stack, out_shardings=state_sharding),
        unstack=jax.jit(unstack, out_shardings=lane.state_sharding),
    )


def abstract_state(steps: Steps) -> Any:
    """Shapes, dtypes and shardings of the train state (a pack's: stacked), for restoring a checkpoint
    onto this mesh and for lowering the step ahead of time."""
    key = jax.random.key(0)
    return jax.eval_shape(steps.init, jax.random.split(key, steps.pack) if steps.pack else key)


def default_steps_per_call(arch: Arch, batch_size: int) -> int:
    """Optimizer steps per compiled call. On CPU a small model's step is short enough that per-call
    dispatch costs 15-40% (measured: best near 8 at width 64, 2-4 at width 256; docs/speed.md);
    accelerators dispatch asynchronously, so one step per call suffices there."""
    if jax.default_backend() != "cpu":
        return 1
    return 8 if arch.width <= 64 else 4 if arch.width <= 128 else 2


def device_memory() -> tuple[int, str]:
    """Bytes one device can hold and how that was found (physical RAM where the backend says nothing)."""
    dev = jax.local_devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.platform} device memory"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(ram), f"{dev.platform}: physical RAM"


def check_state_fits(steps: Steps, headroom: float = 0.9) -> None:
    """Refuse, before anything is allocated, a model whose training state cannot fit on a device:
    its shard of the parameters, gradients and Adam's two moments, each laid out as the parameters (a
    lower bound; a grid's launcher also compiles the step and checks XLA's full memory analysis)."""
    params = abstract_state(steps).params
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    need = 4 * bytes_per_device(params, steps.state_sharding.params)
    avail, what = device_memory()
    if need > headroom * avail:
        fsdp = steps.mesh.shape["fsdp"]
        hint = "raise mesh.fsdp (shards the state over more devices), or " if jax.device_count() > fsdp else ""
        raise ConfigError(f"{n:,} parameters need at least {need / 2**30:.1f} GiB per device (parameters, gradients "
                          f"and Adam's two moments, sharded {fsdp} ways) but {what} is {avail / 2**30:.1f} GiB; "
                          f"{hint}lower model.width or model.depth")


def check_batch(batch_size: int, grad_accum: int = 1, what: str = "train.batch_size",
                mesh: MeshConfig | None = None, n_devices: int | None = None) -> dict[str, int]:
    """The mesh fits the devices (this job's, or ``n_devices`` of a target compiled for), and the
    (micro)batch splits evenly over the data x fsdp devices of all processes, or the first step fails
    deep in XLA. Checked before any compute; returns the mesh's axis sizes."""
    sizes = axis_sizes(mesh or MeshConfig(), n_devices or jax.device_count())
    n, procs = sizes["data"] * sizes["fsdp"], 1 if n_devices else jax.process_count()
    micro = batch_size // max(grad_accum, 1)
    if micro % n or micro % procs:
        where = f"{n} devices (mesh data x fsdp)" + (f" of {procs} processes" if procs > 1 else "")
        accum = f" / train.grad_accum={grad_accum} = {micro}" if grad_accum > 1 else ""
        unit = math.lcm(n, procs) * max(grad_accum, 1)
        raise ConfigError(f"{what}={batch_size}{accum}: must split evenly over the {where}; use a multiple "
                          f"of {unit}")
    return sizes
