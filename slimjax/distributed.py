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
Process 0 decides the chunk layout for all (the smallest memory budget of all processes sets
the chunk size; a resumed run keeps process 0's recorded layout) and whether a complete run is
skipped, so processes with different memory budgets still write each row exactly once.
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


_UNEVEN = "x: every leaf needs the same number of rows (its leading axis); some leaf differs or is a scalar"


def _leaf_signature(a: np.ndarray) -> str:
    return f"{a.dtype.str}{tuple(a.shape[1:])}"


def gather(x, n: int | None = None):
    """Concatenate every process's rows of ``x`` (a host array or pytree, leading axis = its rows)
    on every process, in process order; rows may differ in number by process.

    Values travel as their bytes, so every dtype comes back exactly (a float64 array stays float64
    even when ``jax_enable_x64`` is off). One small round of communication first compares every
    process's row count, pytree structure, dtypes and trailing shapes, so that a mismatch raises
    the same ``ValueError`` on every process instead of returning padding or hanging in a collective.

    Args:
      x: an array or a pytree of arrays, every leaf with the same number of rows (leading axis).
      n: the global number of rows when each process holds :func:`rows` of them: checked (every
        process must hold exactly its ``rows(n)``); None = whatever each process holds.

    Raises:
      ValueError: the leaves of ``x`` differ in their number of rows on some process; with ``n``,
        a process holds another number of rows than ``rows(n)`` gives it; the processes pass
        different structures, dtypes or trailing shapes.
    """
    import zlib

    import jax
    from jax.experimental import multihost_utils as mh

    leaves, treedef = jax.tree_util.tree_flatten(x)
    leaves = [np.asarray(a) for a in leaves]
    counts_here = {int(a.shape[0]) if a.ndim else -1 for a in leaves}  # -1: a scalar, no rows
    mine = min(counts_here) if counts_here else 0
    uneven = len(counts_here) > 1 or mine < 0
    P = jax.process_count()
    if P == 1:
        if uneven:
            raise ValueError(_UNEVEN)
        if n is not None and leaves and mine != int(n):
            raise ValueError(f"n: the only process holds {mine} rows, not n={int(n)}")
        return jax.tree_util.tree_map(np.asarray, x)
    sig = zlib.crc32((str(treedef) + ";".join(_leaf_signature(a) for a in leaves)).encode())
    head = np.array([mine, not uneven, sig], np.int64)
    every = np.asarray(mh.process_allgather(head.view(np.uint8)))  # bytes: no int64 -> int32 on the way
    every = np.ascontiguousarray(every.reshape(P, -1)).view(np.int64).reshape(P, 3)
    counts, uniform, sigs = every[:, 0], every[:, 1], every[:, 2]
    if not uniform.all():
        raise ValueError(_UNEVEN + f" (on process(es) {[p for p in range(P) if not uniform[p]]})")
    if (sigs != sigs[0]).any():
        raise ValueError("x: the processes pass different pytree structures, dtypes or trailing shapes "
                         f"(process {jax.process_index()}: {[_leaf_signature(a) for a in leaves]})")
    if n is not None:
        want = np.array([b - a for a, b in (rows(int(n), p, P) for p in range(P))])
        if (counts != want).any():
            got = ", ".join(f"process {p}: {int(c)} (rows(n) gives {int(w)})"
                            for p, (c, w) in enumerate(zip(counts, want)) if c != w)
            raise ValueError(f"n: the processes do not hold rows(n={int(n)}) each: {got}; pass the rows "
                             "distributed.rows(n) gives each process, or n=None to gather what each holds")
    if any(a.dtype.hasobject for a in leaves):  # the same on every process (the signatures agree)
        raise ValueError("x: object arrays cannot be gathered; pass numeric, bool or fixed-width string arrays")
    width = int(counts.max())

    def one(a: np.ndarray) -> np.ndarray:
        row = a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
        if row == 0 or width == 0:  # nothing to send (the same on every process)
            return np.zeros((int(counts.sum()),) + a.shape[1:], a.dtype)
        flat = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8).reshape(a.shape[0], row)
        padded = np.zeros((width, row), np.uint8)
        padded[: a.shape[0]] = flat
        got = np.asarray(mh.process_allgather(padded, tiled=False)).reshape(P, width, row)  # [P, width, bytes]
        raw = np.concatenate([got[p, : counts[p]] for p in range(P)])
        return raw.view(a.dtype).reshape((int(counts.sum()),) + a.shape[1:])  # raw: a fresh, writable copy

    return jax.tree_util.tree_unflatten(treedef, [one(a) for a in leaves])


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    import jax
    from jax.experimental import multihost_utils as mh

    if jax.process_count() == 1:
        return
    mh.sync_global_devices(name)
