"""scaling_grid.trainer: one training run. A run config, a token store, a metrics sink and a
checkpoint folder in; a trained run with its curves and checkpoints out. Knows nothing of grids.

The face `grid/` (the floor above) uses, by module of origin. Names resolve on first use, so a command
that only reads a store (`status`, `fit`) never imports JAX or orbax::

    config: ConfigError, RunConfig, ModelConfig, DataConfig, OptimConfig, load, describe, validate,
            from_dict, parse_count, format_count, check_data_paths, read_yaml_text
    model: VARIANTS, compute_dtype, flops_per_token, make_arch, non_embedding_formula
    tokenstore: TokenStore, prepare, store_path
    step: check_batch, device_memory
    compile: SharedSteps, measure, memory_need, pack_key, table_lengths
    loop: train, train_pack, Lane, train_cli, accelerator_unused, backend_line
    checkpoint: UnreadableCheckpoint, saved_steps, set_aside
    paths: path_of (a path object for a local path, a file:// or a gs:// URL)
    metrics: EVAL_FIELDS, TRAIN_FIELDS, MetricsDamaged, rewrite_metadata, open_metric, read_metrics,
             kvstore_spec, interactive, optional_import, LogLineSink, ProgressSink, Sinks,
             SinkSetupError, TensorBoardSink, TensorStoreSink, WandbSink, read_step
    preemption: Preemption
    runtime: Distributed, FailedElsewhere, any_process, barrier, from_process_0, is_writer, multi_process, setup,
        together

Modules: config (typed run config), model (Flax variants), tokenizers, sources and tokenstore (the
data), step (optimizer, jit-compiled steps), compile (steps shared per shape, AOT memory analysis),
loop (the training loop, `train` and `scaling-grid train`), checkpoint (orbax), metrics (sinks),
preemption (SIGTERM), runtime (jax.distributed and the decisions all processes take together), peers
(a lost process of a multi-process job: every other exits 75 within --peer-timeout), paths
(local paths, file:// and gs:// URLs, and the bucket checks before compute).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_ORIGIN = {
    'ConfigError': 'config',
    'RunConfig': 'config',
    'ModelConfig': 'config',
    'DataConfig': 'config',
    'OptimConfig': 'config',
    'load': 'config',
    'describe': 'config',
    'validate': 'config',
    'from_dict': 'config',
    'parse_count': 'config',
    'format_count': 'config',
    'check_data_paths': 'config',
    'read_yaml_text': 'config',
    'VARIANTS': 'model',
    'flops_per_token': 'model',
    'make_arch': 'model',
    'non_embedding_formula': 'model',
    'TokenStore': 'tokenstore',
    'prepare': 'tokenstore',
    'store_path': 'tokenstore',
    'check_batch': 'step',
    'device_memory': 'step',
    'SharedSteps': 'compile',
    'measure': 'compile',
    'memory_need': 'compile',
    'table_lengths': 'compile',
    'pack_key': 'compile',
    'train': 'loop',
    'train_pack': 'loop',
    'Lane': 'loop',
    'train_cli': 'loop',
    'compute_dtype': 'model',
    'accelerator_unused': 'loop',
    'backend_line': 'loop',
    'UnreadableCheckpoint': 'checkpoint',
    'saved_steps': 'checkpoint',
    'set_aside': 'checkpoint',
    'path_of': 'paths',
    'EVAL_FIELDS': 'metrics',
    'TRAIN_FIELDS': 'metrics',
    'MetricsDamaged': 'metrics',
    'rewrite_metadata': 'metrics',
    'open_metric': 'metrics',
    'read_metrics': 'metrics',
    'kvstore_spec': 'metrics',
    'interactive': 'metrics',
    'optional_import': 'metrics',
    'LogLineSink': 'metrics',
    'ProgressSink': 'metrics',
    'Sinks': 'metrics',
    'SinkSetupError': 'metrics',
    'TensorBoardSink': 'metrics',
    'TensorStoreSink': 'metrics',
    'WandbSink': 'metrics',
    'read_step': 'metrics',
    'Preemption': 'preemption',
    'Distributed': 'runtime',
    'FailedElsewhere': 'runtime',
    'any_process': 'runtime',
    'barrier': 'runtime',
    'from_process_0': 'runtime',
    'is_writer': 'runtime',
    'multi_process': 'runtime',
    'setup': 'runtime',
    'together': 'runtime',
}

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from .checkpoint import UnreadableCheckpoint, saved_steps, set_aside
    from .compile import SharedSteps, measure, memory_need, pack_key, table_lengths
    from .config import (
        ConfigError,
        DataConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        check_data_paths,
        describe,
        format_count,
        from_dict,
        load,
        parse_count,
        read_yaml_text,
        validate,
    )
    from .loop import Lane, accelerator_unused, backend_line, train, train_cli, train_pack
    from .metrics import (
        EVAL_FIELDS,
        TRAIN_FIELDS,
        LogLineSink,
        MetricsDamaged,
        ProgressSink,
        Sinks,
        SinkSetupError,
        TensorBoardSink,
        TensorStoreSink,
        WandbSink,
        interactive,
        kvstore_spec,
        open_metric,
        optional_import,
        read_metrics,
        read_step,
        rewrite_metadata,
    )
    from .model import VARIANTS, compute_dtype, flops_per_token, make_arch, non_embedding_formula
    from .paths import path_of
    from .preemption import Preemption
    from .runtime import (
        Distributed,
        FailedElsewhere,
        any_process,
        barrier,
        from_process_0,
        is_writer,
        multi_process,
        setup,
        together,
    )
    from .step import check_batch, device_memory
    from .tokenstore import TokenStore, prepare, store_path


def __getattr__(name: str) -> Any:
    if name not in _ORIGIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Not cached here: the module stays the one place a name lives (a test that patches
    # `loop.train_pack` patches what `trainer.train_pack` returns).
    return getattr(importlib.import_module(f".{_ORIGIN[name]}", __name__), name)


__all__ = [
    "accelerator_unused",
    "FailedElsewhere",
    "any_process",
    "backend_line",
    "barrier",
    "check_batch",
    "check_data_paths",
    "compute_dtype",
    "ConfigError",
    "DataConfig",
    "describe",
    "device_memory",
    "Distributed",
    "EVAL_FIELDS",
    "flops_per_token",
    "format_count",
    "from_dict",
    "from_process_0",
    "interactive",
    "is_writer",
    "kvstore_spec",
    "load",
    "LogLineSink",
    "make_arch",
    "measure",
    "pack_key",
    "train_pack",
    "Lane",
    "memory_need",
    "MetricsDamaged",
    "ModelConfig",
    "multi_process",
    "non_embedding_formula",
    "open_metric",
    "OptimConfig",
    "optional_import",
    "parse_count",
    "path_of",
    "Preemption",
    "prepare",
    "ProgressSink",
    "read_metrics",
    "read_step",
    "read_yaml_text",
    "rewrite_metadata",
    "RunConfig",
    "saved_steps",
    "set_aside",
    "setup",
    "together",
    "SharedSteps",
    "Sinks",
    "SinkSetupError",
    "store_path",
    "table_lengths",
    "TensorBoardSink",
    "TensorStoreSink",
    "TokenStore",
    "train",
    "train_cli",
    "TRAIN_FIELDS",
    "UnreadableCheckpoint",
    "validate",
    "VARIANTS",
    "WandbSink",
]
