"""scaling_grid.trainer: one training run. A run config, a token store, a metrics sink and a
checkpoint folder in; a trained run with its curves and checkpoints out. Knows nothing of grids.

Modules, bottom up: registry (the names a config may use, jax-free), config (the typed run config, each
field with its role, and the keys derived from the roles), checks (validation), configfile (YAML in
and out); model (Flax variants), parametrization, sharding; tokenizers, sources, storebuild, prefetch
and tokenstore (the data); step (optimizer, lr table, tau, jit-compiled steps), compile (steps shared
per shape, AOT memory analysis), target (compiling for an accelerator that is not here); loop (the
training loop), feed (batches onto devices), checkpoint (orbax); metrics (the metric arrays),
logsinks and trackers (log lines, progress, TensorBoard, W&B), sinks (the sinks of one run among many,
in one call); traincmd (`scaling-grid train` in its folder) and runfolder (reading such a folder, and
the checks of a finished run's metrics); preemption (SIGTERM), runtime (jax.distributed and the
decisions all processes take together), peers (a lost process of a multi-process job: every other
exits 75 within --peer-timeout), paths (local paths, file:// and gs:// URLs, and the bucket
checks before compute), bucket (every wait on a bucket bounded, and ended by a SIGTERM when it does not
answer), backend and peaks (what this process computes on).

The face: what `grid/` (the floor above) uses, and all it may use, listed once by module of origin
in _FACE (the TYPE_CHECKING imports below repeat it for type checkers). Names resolve on first use,
so a command that only reads a store (`status`, `fit`) never imports JAX or orbax.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_FACE = {
    "backend": "accelerator_unused backend_line",
    "bucket": "BucketTimeout bucket_call bucket_result gave_up",
    "checkpoint": "UnreadableCheckpoint saved_steps set_aside",
    "checks": "check_data_paths validate",
    "compile": "SharedSteps measure memory_need shape_key table_lengths",
    "config": "ConfigError OptimConfig RunConfig approx_count format_count from_dict identity pack_key parse_count",
    "configfile": "describe load read_yaml_text",
    "logsinks": "interactive within",
    "loop": "Lane train_pack",
    "metrics": "EVAL_FIELDS TRAIN_FIELDS MetricsDamaged Sinks kvstore_spec open_metric read_metrics rewrite_metadata",
    "model": "VARIANTS flops_per_token make_arch non_embedding_formula",
    "peers": "EXIT_PEER_LOST by_default exit_if_peer_lost on_loss",
    "paths": "check_readable check_scheme check_writable is_remote is_url join local path_of require_local upload_tree",
    "preemption": "Preemption",
    "registry": "expected_vocab",
    "runfolder": "Expected check_final expected_steps first_lost_step is_run_folder lost_points lost_run pid_alive "
                 "read_run_folder run_name",
    "runtime": "Distributed FailedElsewhere any_process barrier from_process_0 is_writer multi_process setup together",
    "sinks": "run_sinks",
    "step": "check_batch device_memory lr_table tau",
    "target": "ShapeReport Target compile_shape parse_target shape_name",
    "tokenstore": "TokenStore prepare store_path",
    "trackers": "SinkSetupError optional_import",
    "traincmd": "train_cli",
}
_ORIGIN = {name: module for module, names in _FACE.items() for name in names.split()}  # name -> module
__all__ = sorted(_ORIGIN)

# ruff: noqa: F401 - the imports below are the face for type checkers; ruff cannot read __all__ from _FACE
if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
    from .backend import accelerator_unused, backend_line
    from .bucket import BucketTimeout, bucket_call, bucket_result, gave_up
    from .checkpoint import UnreadableCheckpoint, saved_steps, set_aside
    from .checks import check_data_paths, validate
    from .compile import SharedSteps, measure, memory_need, shape_key, table_lengths
    from .config import (
        ConfigError,
        OptimConfig,
        RunConfig,
        approx_count,
        format_count,
        from_dict,
        identity,
        pack_key,
        parse_count,
    )
    from .configfile import describe, load, read_yaml_text
    from .logsinks import interactive, within
    from .loop import Lane, train_pack
    from .metrics import (
        EVAL_FIELDS,
        TRAIN_FIELDS,
        MetricsDamaged,
        Sinks,
        kvstore_spec,
        open_metric,
        read_metrics,
        rewrite_metadata,
    )
    from .model import VARIANTS, flops_per_token, make_arch, non_embedding_formula
    from .paths import (
        check_readable,
        check_scheme,
        check_writable,
        is_remote,
        is_url,
        join,
        local,
        path_of,
        require_local,
        upload_tree,
    )
    from .peers import EXIT_PEER_LOST, by_default, exit_if_peer_lost, on_loss
    from .preemption import Preemption
    from .registry import expected_vocab
    from .runfolder import (
        Expected,
        check_final,
        expected_steps,
        first_lost_step,
        is_run_folder,
        lost_points,
        lost_run,
        pid_alive,
        read_run_folder,
        run_name,
    )
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
    from .sinks import run_sinks
    from .step import check_batch, device_memory, lr_table, tau
    from .target import ShapeReport, Target, compile_shape, parse_target, shape_name
    from .tokenstore import TokenStore, prepare, store_path
    from .trackers import SinkSetupError, optional_import
    from .traincmd import train_cli


def __getattr__(name: str) -> Any:
    if name not in _ORIGIN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Not cached here: the module stays the one place a name lives (a test that patches
    # `loop.train_pack` patches what `trainer.train_pack` returns).
    return getattr(importlib.import_module(f".{_ORIGIN[name]}", __name__), name)
