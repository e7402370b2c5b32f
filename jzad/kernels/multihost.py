"""Several processes (hosts) as one JAX program: the distributed runtime, each process's share of a set of
images, process-local rows assembled into global arrays, and global results brought back to every process.

A multi-process run starts JAX's own distributed runtime (``jax.distributed.initialize``) before anything
touches a device; ``jax.devices()`` then lists every process's devices and one mesh spans them all
(``device_mesh``). Each process decodes and extracts only its share of a group of images (``process_share``);
``assemble`` joins the shares into global arrays replicated over the mesh, so the sharded kernels see the same
arrays, of the same shapes, as in one process; ``to_host`` gathers global results into host arrays on every
process. With one process ``process_share`` and ``assemble`` are the identity and ``to_host`` is ``np.asarray``:
the single-process path is the same code.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AUTO = "auto"


def initialize(coordinator: str, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Start JAX's distributed runtime; call it before anything touches a device.

    coordinator: "HOST:PORT" of process 0's coordinator service (then num_processes and process_id are
    required), or "auto": JAX detects the cluster it runs in (SLURM, Open MPI, TPU pods, ...) and reads the
    missing values from it. CPU devices exchange data over gloo collectives (JAX's default; older versions
    have none, so it is set; JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi is kept). When the runtime already runs
    (a program that calls the command line several times) it is kept, if it has the same processes.
    """
    explicit = coordinator != AUTO
    if explicit and (num_processes is None or process_id is None):
        raise ValueError(f"coordinator {coordinator!r}: num_processes and process_id are required with an "
                         "explicit HOST:PORT (or pass 'auto' to let JAX detect the cluster)")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes: expected >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id: expected 0..{num_processes - 1}, got {process_id}")
    if jax.distributed.is_initialized():
        if (num_processes not in (None, jax.process_count())
                or process_id not in (None, jax.process_index())):
            raise ValueError(f"the distributed runtime already runs as process {jax.process_index()} of "
                             f"{jax.process_count()}")
        return
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator if explicit else None,
                               num_processes=num_processes, process_id=process_id)


def process_share(indices) -> np.ndarray:
    """This process's share of a group's image ``indices`` (n,): the p-th of P contiguous blocks of
    ceil(n / P) indices, the last block(s) padded by repeating the group's last index (so every process
    extracts real images of one shape; ``assemble`` drops the padding). One process: ``indices`` itself."""
    indices = np.asarray(indices)
    count = jax.process_count()
    if count == 1:
        return indices
    share = -(-len(indices) // count)
    padded = np.concatenate([indices, np.repeat(indices[-1:], share * count - len(indices))])
    first = jax.process_index() * share
    return padded[first:first + share]


def _by_process(mesh: Mesh) -> Mesh:
    """``mesh``'s devices as a (process, local) grid; each process must hold one contiguous run of devices."""
    count = jax.process_count()
    flat = list(mesh.devices.flat)
    if len(flat) % count:
        raise ValueError(f"mesh: {len(flat)} devices cannot be split evenly over {count} processes")
    grid = np.asarray(flat, dtype=object).reshape(count, -1)
    for p, row in enumerate(grid):
        if any(d.process_index != p for d in row):
            raise ValueError("mesh: expected each process's devices as one contiguous run, in process order "
                             "(as device_mesh builds it)")
    return Mesh(grid, ("process", "local"), axis_types=(AxisType.Auto, AxisType.Auto))


def assemble(tree, num_rows: int, mesh: Mesh | None):
    """Process-local rows -> global arrays: every leaf (share, ...) of ``tree`` (this process's
    ``process_share`` of a group) becomes the group's (num_rows, ...) array replicated over ``mesh``.

    The shares are laid out over a (process, local) view of the mesh's devices with
    ``jax.make_array_from_process_local_data``; one jitted slice drops the padding rows and replicates.
    One process: ``tree`` unchanged.
    """
    count = jax.process_count()
    if count == 1:
        return tree
    if mesh is None:
        raise ValueError("multi-process scoring needs a device mesh over every process's devices")
    rows = NamedSharding(_by_process(mesh), PartitionSpec("process"))
    whole = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(rows, x, (count * x.shape[0],) + tuple(x.shape[1:])),
        tree)
    return _replicated_rows(mesh)(whole, num_rows)


def _first_rows(tree, num_rows: int):
    return jax.tree.map(lambda x: x[:num_rows], tree)


@functools.lru_cache(maxsize=None)
def _replicated_rows(mesh: Mesh):
    """``_first_rows`` jitted with its output replicated over ``mesh`` (one program per mesh and shape)."""
    return jax.jit(_first_rows, static_argnames="num_rows", out_shardings=NamedSharding(mesh, PartitionSpec()))


def gather_rows(local: np.ndarray, num_rows: int) -> np.ndarray:
    """Host rows of every process's share (share, ...) -> the group's (num_rows, ...) on every process, in
    share order (e.g. the decoded images' original sizes). One process: ``local`` unchanged."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))[:num_rows]


def to_host(tree):
    """Global (or local) arrays -> NumPy arrays holding the whole value, on every process.

    A leaf this process holds whole (one process, or replicated) is copied; a leaf sharded over other
    processes' devices is gathered with ``process_allgather``, a collective every process must reach.
    """

    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def agree(ok: bool) -> bool:
    """Process 0's ``ok`` on every process (a broadcast every process must reach), so all processes take the
    same branch after a check only process 0 can make; one process: ``ok``."""
    if jax.process_count() == 1:
        return bool(ok)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(ok))))


def is_writer() -> bool:
    """Whether this process writes a run's outputs (process 0: results are gathered to every process)."""
    return jax.process_index() == 0


__all__ = ["AUTO", "agree", "assemble", "gather_rows", "initialize", "is_writer", "process_share", "to_host"]
