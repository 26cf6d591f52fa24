"""Several processes on one batch: a thin layer over JAX's own multi-process runtime.

``initialize()`` calls :func:`jax.distributed.initialize` with explicit settings, or with what it
detects itself (SLURM's ``srun`` variables, ``JAX_COORDINATOR_ADDRESS``, Open MPI, ...). After it,
every process sees the devices of all processes in ``jax.devices()`` and its own in
``jax.local_devices()``.

**What each process passes to** :func:`slimjax.solve_batch` **and gets back.** Each process passes
*its own rows* (a process-local batch; :func:`rows` says which rows of a global batch of ``n``
are this process's) and gets back the :class:`~slimjax.Solution` of those rows, on that process
only: ``solve_batch`` shards a batch over the process's local devices, never across processes,
and runs no collective, so it works unchanged and one slow process delays no other.
:func:`gather` then gives every process all rows (in process order, which is row order). To make
the rows' random draws equal to a one-process solve of the whole batch, instance i must use the
key ``jax.random.fold_in(key, i)`` with its *global* index i (the app does this). Example::

    import jax, slimjax, slimjax.distributed as dist
    info = dist.initialize()            # under srun; or initialize("10.0.0.1:1234", 2, 0)
    lo, hi = dist.rows(1024)            # this process's rows of a 1024-instance batch
    mine = slimjax.solve_batch(batch[lo:hi], "successive")
    J = dist.gather(mine.objective)     # all 1024 values, on every process

The app (``slimjax distributed=true``) runs one process per task: every process generates and
solves its chunks of the run (chunk c on process ``c % process_count``) and writes them to the
shared run directory; process 0 then writes the summary, figures and the completion marker.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Topology", "barrier", "gather", "initialize", "is_initialized", "rows", "topology"]


class Topology(NamedTuple):
    """Where this process stands: ``process_index`` of ``process_count``; devices of each kind."""

    process_index: int
    process_count: int
    local_devices: int
    global_devices: int


def is_initialized() -> bool:
    """True once :func:`jax.distributed.initialize` has run in this process."""
    import jax

    return bool(jax.distributed.is_initialized())


def topology() -> Topology:
    import jax

    return Topology(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def _int(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be an integer, got {value!r}") from None
    if v < 0:
        raise ValueError(f"{name}: must be >= 0, got {v}")
    return v


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Any = None,
    initialization_timeout: int = 300,
) -> Topology:
    """Join a multi-process JAX job (idempotent); returns this process's :class:`Topology`.

    Args:
      coordinator_address: ``host:port`` of process 0 (it listens there); None = from
        ``JAX_COORDINATOR_ADDRESS`` or the cluster (under SLURM: the first node of the step,
        on a port derived from the job id).
      num_processes, process_id: None = from ``SLIMJAX_NUM_PROCESSES``/``SLIMJAX_PROCESS_ID``,
        else the cluster (SLURM: ``SLURM_NTASKS``/``SLURM_PROCID``).
      local_device_ids: the devices this process drives (None: all it sees).
      initialization_timeout: seconds to wait for every process to join.

    On CPU, cross-process collectives (used by :func:`gather` and :func:`barrier`) go through gloo.

    Raises:
      ValueError: settings that do not fit (a process id outside ``[0, num_processes)``), or no
        coordinator given and none detectable.
    """
    import jax

    if is_initialized():
        return topology()
    n = _int("num_processes", num_processes if num_processes is not None else os.environ.get("SLIMJAX_NUM_PROCESSES"))
    pid = _int("process_id", process_id if process_id is not None else os.environ.get("SLIMJAX_PROCESS_ID"))
    if n is not None and n < 1:
        raise ValueError(f"num_processes: must be >= 1, got {n}")
    if n is not None and pid is not None and pid >= n:
        raise ValueError(f"process_id: must be in [0, num_processes={n}), got {pid}")
    address = coordinator_address or os.environ.get("SLIMJAX_COORDINATOR_ADDRESS") or None
    if address is not None and ":" not in str(address):
        raise ValueError(f"coordinator_address: expected host:port, got {address!r}")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 - older JAX: the flag differs; CPU collectives may be unavailable
        pass
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid,
                                   local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)
    except ValueError as e:
        raise ValueError(
            f"coordinator_address: no multi-process settings ({e}); pass coordinator_address, num_processes and "
            "process_id (coordinator.* in the app), or run under a cluster JAX detects (srun on SLURM)"
        ) from None
    return topology()


def rows(n: int, process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
    """This process's contiguous rows ``[lo, hi)`` of a global batch of ``n`` (sizes differ by at most one)."""
    import jax

    p = jax.process_index() if process_index is None else int(process_index)
    k = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= p < k:
        raise ValueError(f"process_index: must be in [0, {k}), got {p}")
    base, extra = divmod(int(n), k)
    lo = p * base + min(p, extra)
    return lo, lo + base + (1 if p < extra else 0)


def gather(x, n: int | None = None):
    """Concatenate every process's rows of ``x`` (a host array or pytree, leading axis = its rows)
    on every process, in process order; rows may differ in number by process.

    Args:
      n: the global number of rows when each process holds :func:`rows` of them (saves one
        round of communication); None = ask every process for its count.
    """
    import jax
    from jax.experimental import multihost_utils as mh

    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, x)
    leaves = jax.tree_util.tree_leaves(x)
    mine = int(np.shape(leaves[0])[0]) if leaves else 0
    if n is None:
        counts = np.asarray(mh.process_allgather(np.array([mine], np.int64))).reshape(-1)
    else:
        counts = np.array([b - a for a, b in (rows(n, p) for p in range(jax.process_count()))])
    width = int(counts.max())

    def one(a):
        a = np.asarray(a)
        pad = np.zeros((width - a.shape[0],) + a.shape[1:], a.dtype)
        every = np.asarray(mh.process_allgather(np.concatenate([a, pad]), tiled=False))  # [P, width, ...]
        return np.concatenate([every[p, : counts[p]] for p in range(len(counts))])

    return jax.tree_util.tree_map(one, x)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    import jax
    from jax.experimental import multihost_utils as mh

    if jax.process_count() == 1:
        return
    mh.sync_global_devices(name)
