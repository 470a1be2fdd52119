"""Compiled steps shared across runs, ahead-of-time lowering, XLA's memory analysis and step timing.

The train step takes its learning rate as a table, so every run of one shape (architecture, the
optimizer constants compiled into the step, gradient accumulation) can share one compiled step
whatever its budget, seed or schedule, with each run's table padded to the longest run of its shape.
On a CPU, where compiling costs more than training a small run, a grid then compiles once per shape.
What is part of a shape is decided here, next to ``step.build``, so a new optimizer field never
needs an edit in ``grid/``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp

from .config import MeshConfig, OptimConfig, RunConfig, reset
from .model import Arch, compute_dtype, make_arch
from .sharding import make_mesh
from .step import Steps, abstract_state, build, lr_table


def shape_key(cfg: RunConfig, vocab: int) -> tuple[Arch, OptimConfig, int, MeshConfig]:
    """What one compiled train step serves: the architecture, the optimizer with its schedule fields
    reset (they reach the step as a table: config.ROLES), gradient accumulation and the mesh."""
    arch = make_arch(cfg.model, vocab, compute_dtype(cfg.train.dtype))
    return arch, reset(cfg.optim, "schedule"), cfg.train.grad_accum, cfg.mesh


class SharedSteps:
    """One ``step.build`` per shape key, and one ahead-of-time compile per (shape, chunk, table)."""

    def __init__(self) -> None:
        self.steps: dict[Hashable, Steps] = {}
        self.compiled: dict[Hashable, tuple[Any, float]] = {}

    def get(self, cfg: RunConfig, vocab: int, pack: int = 0) -> Steps:
        """The Steps for this run's shape (built once, then shared); for packs of ``pack`` runs if > 1."""
        key = (shape_key(cfg, vocab), pack if pack > 1 else 0)
        if key not in self.steps:
            (arch, optim, accum, mesh), k = key
            lane = self.get(cfg, vocab) if k else None
            self.steps[key] = build(arch, optim, accum, make_mesh(mesh), pack=k, lane=lane)
        return self.steps[key]

    def lower(self, cfg: RunConfig, vocab: int, table_len: int, pack: int = 0) -> tuple[Any, Steps, float]:
        """(compiled train chunk, its Steps, compile seconds): lowered ahead of time from abstract
        shapes, for XLA's memory analysis and for timing; for packs of ``pack`` runs if > 1; memoized."""
        steps = self.get(cfg, vocab, pack)
        K = steps.pack
        t = cfg.train
        key = (shape_key(cfg, vocab), t.steps_per_call, t.batch_size, cfg.model.seq_len, table_len, K)
        if key not in self.compiled:
            t0 = time.perf_counter()
            lead = (K,) if K else ()
            x = jax.ShapeDtypeStruct((*lead, t.steps_per_call, t.batch_size, cfg.model.seq_len), jnp.int32,
                                     sharding=steps.batch_sharding)
            lrs = jax.ShapeDtypeStruct((*lead, table_len), jnp.float32, sharding=steps.lr_sharding)
            compiled = steps.train.lower(abstract_state(steps), x, x, lrs).compile()
            self.compiled[key] = (compiled, time.perf_counter() - t0)
        compiled, seconds = self.compiled[key]
        return compiled, steps, seconds


def table_lengths(configs: dict[str, RunConfig], vocab: dict[str, int]) -> dict[str, int]:
    """Per run (by name), the lr-table length of its shape: the longest run of that shape."""
    keys = {name: shape_key(cfg, vocab[name]) for name, cfg in configs.items()}
    longest: dict[Hashable, int] = {}
    for name, cfg in configs.items():
        longest[keys[name]] = max(longest.get(keys[name], 0), cfg.steps)
    return {name: longest[keys[name]] for name in configs}


def memory_need(compiled: Any) -> int | None:
    """Bytes one device needs for a compiled step (arguments + outputs - donated aliases +
    temporaries), from XLA's memory analysis; None where the backend gives none."""
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
               + ma.temp_size_in_bytes)


def measure(shared: SharedSteps, cfg: RunConfig, vocab: int, flops_per_token: int, table_len: int,
            calls: int = 2) -> tuple[float, float]:
    """(FLOP/s of the train step, compile seconds): `calls` chunks timed after a warm one."""
    compiled, steps, dt_compile = shared.lower(cfg, vocab, table_len)
    t = cfg.train
    shape = (t.steps_per_call, t.batch_size, cfg.model.seq_len)
    x = jax.device_put(jnp.zeros(shape, jnp.int32), steps.batch_sharding)
    lrs = jax.device_put(lr_table(cfg.optim, cfg.steps, table_len), steps.lr_sharding)
    state = steps.init(jax.random.key(0))
    state, m = compiled(state, x, x, lrs)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = compiled(state, x, x, lrs)
    jax.block_until_ready(m)
    return calls * math.prod(shape) * flops_per_token / (time.perf_counter() - t0), dt_compile
