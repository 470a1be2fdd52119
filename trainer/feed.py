"""What a process feeds the compiled steps: its rows of each global batch (`host_rows`), the global
arrays made of them (`to_global`), and a pack's train calls cut where its runs end (`pack_pieces`)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .config import ConfigError


def host_rows(sharding: Any, batch_size: int) -> slice:
    """The rows of the global batch this process feeds: those its devices hold under the batch
    sharding (all of them on one host). They are contiguous with every mesh `sharding.make_mesh`
    builds; anything else would need a gather across hosts, so it is refused."""
    index = sharding.addressable_devices_indices_map((batch_size, 1))
    rows = {i[0].indices(batch_size)[:2] for i in index.values()}
    lo, hi = min(r[0] for r in rows), max(r[1] for r in rows)
    if sum(b - a for a, b in rows) != hi - lo:
        raise ConfigError(f"this process's devices hold rows {sorted(rows)} of the batch, not one contiguous "
                          "block; change the mesh")
    return slice(lo, hi)


def to_global(local: np.ndarray, sharding: Any, global_rows: int, axis: int) -> jax.Array:
    """The global array whose rows `local` are this process's share (`host_rows`) along `axis`."""
    shape = list(local.shape)
    shape[axis] = global_rows
    return jax.make_array_from_process_local_data(sharding, local, tuple(shape))


def pack_pieces(by_seed: Mapping[int, Iterator[tuple[int, np.ndarray, np.ndarray]]], seeds: Sequence[int],
                ends: Sequence[int], K: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(last step, x, y) of each train call: the chunks of each data seed stacked in lane order (a
    pack), cut where a run's budget ends inside a chunk so that its last state can be saved."""
    for chunks in zip(*by_seed.values()):
        got = dict(zip(by_seed, chunks))
        first, x, y = chunks[0]
        if K:
            x = np.stack([got[s][1] for s in seeds])
            y = np.stack([got[s][2] for s in seeds])
        n = x.shape[1] if K else x.shape[0]
        cuts = [e - first for e in ends if first < e < first + n]
        for a, b in zip([0, *cuts], [*cuts, n]):
            yield (first + b, x[:, a:b], y[:, a:b]) if K else (first + b, x[a:b], y[a:b])
