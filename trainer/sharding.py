"""Where arrays live: the device mesh a run config asks for, and a sharding for every leaf of the state.

The mesh has three axes, ``("data", "fsdp", "tensor")``. The batch is split over data x fsdp. Parameters
and both of Adam's moments are split over ``fsdp`` (each device keeps 1/fsdp of the state and the step
all-gathers a layer's weights when it needs them: fully sharded data parallel) and, where a matrix has
a heads, hidden or vocabulary dimension, over ``tensor``. XLA's partitioner inserts the collectives;
the rules here only say where each leaf lives, so any rule is correct and a poor one is only slow.

Rules are per leaf, by name and shape:
- ``tensor``: Megatron's split, the dimension that fans out (qkv, up/gate, the head's vocabulary, the
  embedding's vocabulary) or fans in (proj, down) over the heads / hidden units.
- ``fsdp``: the largest remaining dimension that divides evenly, never the stacked layer axis of the
  scanned blocks (each scan iteration slices one layer out of the stack; sharding that axis would send
  whole layers between devices every iteration).
Optimizer leaves with a parameter's path (Adam's mu and nu) get that parameter's rule; scalars (step
counters) are replicated.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")   # the mesh axes the batch rows are split over
SCANNED = "blocks"         # model.Transformer's nn.scan: leaves below it carry a leading layer axis
# Dense kernels are [in, out]; the dimension each splits over `tensor` (counted from the end, so the
# same rule holds with or without the leading layer axis).
_TENSOR_DIM = {"qkv": -1, "up": -1, "gate": -1, "head": -1, "proj": -2, "down": -2, "embed": -2}


def axis_sizes(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """The size of each mesh axis for this many devices, -1 resolved; ConfigError if they do not fit."""
    sizes = {a: getattr(cfg, a) for a in AXES}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    free = [a for a, v in sizes.items() if v == -1]
    if free:
        if n_devices % fixed:
            raise ConfigError(f"mesh={_show(sizes)}: the fixed axes ({fixed} devices) do not divide the "
                              f"{n_devices} devices")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ConfigError(f"mesh={_show(sizes)}: uses {math.prod(sizes.values())} devices but there are "
                          f"{n_devices}; set one axis to -1 to take the devices left over")
    return sizes


def _show(sizes: dict[str, int]) -> str:
    return "{" + ", ".join(f"{a}: {v}" for a, v in sizes.items()) + "}"


def make_mesh(cfg: MeshConfig | None = None, devices: list[Any] | None = None) -> Mesh:
    """The run's mesh over all devices of all processes. On several TPU slices (multi-slice), the data
    axis spans the slices over the data-center network and fsdp/tensor stay inside a slice (ICI)."""
    cfg = cfg or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    sizes = axis_sizes(cfg, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(slices) > 1:
        n = len(slices)
        if sizes["data"] % n:
            raise ConfigError(f"mesh.data={sizes['data']}: must be a multiple of the {n} TPU slices (the data "
                              "axis spans slices; fsdp and tensor stay inside one)")
        per_slice = (sizes["data"] // n, sizes["fsdp"], sizes["tensor"])
        grid = mesh_utils.create_hybrid_device_mesh(per_slice, (n, 1, 1), devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(shape, devices)
        except (ValueError, NotImplementedError, AssertionError):  # no topology-aware layout for this shape
            grid = np.array(devices).reshape(shape)
    return Mesh(grid, AXES)


def _keys(path: tuple[Any, ...]) -> list[str]:
    return [str(getattr(p, "key", getattr(p, "name", ""))) for p in path]


def leaf_spec(path: tuple[Any, ...], shape: tuple[int, ...], fsdp: int, tensor: int) -> P:
    """The partition spec of one state leaf (see the module docstring for the rules)."""
    if not shape:
        return P()
    keys = _keys(path)
    spec: list[Any] = [None] * len(shape)
    if tensor > 1:
        dim = next((_TENSOR_DIM[k] for k in reversed(keys) if k in _TENSOR_DIM), None)
        is_matrix = keys[-1] in ("kernel", "embedding")
        if dim is not None and is_matrix and shape[dim] % tensor == 0:
            spec[dim] = "tensor"
        elif dim == -1 and keys[-1] == "bias" and shape[-1] % tensor == 0:  # qkv/up/gate biases follow their outputs
            spec[-1] = "tensor"
    if fsdp > 1:
        first = 1 if SCANNED in keys else 0
        free = [i for i in range(first, len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], i))] = "fsdp"
    return P(*spec)


def state_shardings(abstract: Any, mesh: Mesh) -> Any:
    """A NamedSharding for every leaf of a pytree of ShapeDtypeStructs (the train state)."""
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, leaf_spec(path, tuple(x.shape), fsdp, tensor)), abstract)


def batch_sharded(x: jax.Array) -> jax.Array:
    """Activations [B, ...] split by rows over data x fsdp, when traced under a mesh (`step.build` sets
    it). Without this, XLA's partitioner may follow a weight's fsdp split into the activations and
    keep every row on every device: GPT-2 124M on fsdp 8 planned 15 GiB of temporaries per device
    instead of 4 (benchmarks/memory_table.py)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH))


def batch_devices(mesh: Mesh) -> int:
    """How many ways the batch rows are split: data x fsdp."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def bytes_per_device(abstract: Any, shardings: Any) -> int:
    """Bytes each device holds of a sharded pytree (the rules only split dimensions that divide evenly,
    so every device holds the same)."""
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
               for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
