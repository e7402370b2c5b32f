"""A 1-D device mesh and row-sharded execution of kernels over it.

Work is split over the leading (row) axis of one array: queries, query images or candidate points. Each
device runs the same kernel on its block of rows against replicated operands; rows are padded to a multiple
of the device count and the padding is dropped afterwards. One shard is the same code path with a mesh of one
device, so ``--shards 1`` and ``--shards 8`` differ only in the mesh. Multi-host runs call
``jax.distributed.initialize()`` first (``jzad.kernels.multihost``); ``jax.devices()`` then lists every host's
devices and the mesh takes the same number from each host.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def device_mesh(num_shards: int = 1, devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over the first ``num_shards`` devices (Auto axis type); in a multi-process
    run the first num_shards / P devices of each of the P processes.

    Auto (not Explicit) axes keep top_k, sort and dynamic indexing legal on sharded values.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards: expected an integer >= 1, got {num_shards!r}")
    if num_shards > len(devices):
        raise ValueError(
            f"num_shards={num_shards} but only {len(devices)} device(s) are available "
            f"({devices[0].platform}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before jax is imported"
        )
    return Mesh(np.array(_take_evenly(devices, num_shards)), (AXIS,), axis_types=(AxisType.Auto,))


def _take_evenly(devices: list, num_shards: int) -> list:
    """The first ``num_shards`` devices; over several processes the first num_shards / P of each process,
    grouped in process order (each process then holds one contiguous block of the mesh)."""
    processes = sorted({d.process_index for d in devices})
    if len(processes) == 1:
        return devices[:num_shards]
    if num_shards % len(processes):
        raise ValueError(f"num_shards={num_shards}: expected a multiple of the {len(processes)} processes, so "
                         "each process holds the same number of devices")
    per_process = num_shards // len(processes)
    by_process = {p: [d for d in devices if d.process_index == p] for p in processes}
    return [d for p in processes for d in by_process[p][:per_process]]


def num_shards_of(mesh: Mesh) -> int:
    """Number of devices along the mesh's data axis."""
    return int(mesh.shape[AXIS])


def padded_size(rows: int, mesh: Mesh) -> int:
    """``rows`` rounded up to a multiple of the shard count."""
    k = num_shards_of(mesh)
    return -(-rows // k) * k


def pad_rows(x: jax.Array, rows: int, value: float = 0.0) -> jax.Array:
    """Pad the leading axis of ``x`` to ``rows`` with ``value``."""
    extra = rows - x.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {x.shape[0]} rows down to {rows}")
    if extra == 0:
        return x
    return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def map_row_shards(
    block_fn: Callable[..., jax.Array], mesh: Mesh, rows: jax.Array, *shared: jax.Array
) -> jax.Array:
    """Run ``block_fn(row_block, first_row, *shared)`` on each device's block of ``rows``; concatenate.

    rows (n, ...) is padded with zeros to a multiple of the shard count and split over the mesh;
    ``first_row`` is the global index of the block's first row (int32 scalar), so a kernel can tell which
    rows it holds (for example to mask an image against itself); ``shared`` operands are replicated.
    ``block_fn`` must map (b, ...) rows to (b, ...) outputs. Returns the outputs for the n real rows.
    Works under jit; one shard runs the identical program on one device.
    """
    n = rows.shape[0]
    total = padded_size(n, mesh)
    block = total // num_shards_of(mesh)

    def per_device(row_block, *shared_operands):
        first_row = jax.lax.axis_index(AXIS).astype(jnp.int32) * block
        return block_fn(row_block, first_row, *shared_operands)

    spec_rows = PartitionSpec(AXIS)
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(spec_rows,) + (PartitionSpec(),) * len(shared),
        out_specs=spec_rows,
        check_vma=False,
    )
    return sharded(pad_rows(rows, total), *shared)[:n]
