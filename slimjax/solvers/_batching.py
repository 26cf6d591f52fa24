"""Chunked, padded and sharded execution of a registered method over a batch (DESIGN §6).

``run`` splits a batch into chunks of a fixed size (the last one padded by repeating its last
instance, so every chunk has the same shape and compiles once), places each chunk on a
``("batch",)`` mesh over all local devices with ``NamedSharding`` when there is more than one,
calls the method's batch function and concatenates the results (padding dropped).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from slimjax.ops._grid import Grid

from slimjax._instance import Instance
__all__ = ["run", "chunk_size_for", "memory_budget_bytes", "default_bytes_per_instance", "batch_mesh"]


def default_bytes_per_instance(shape: tuple, max_units: int, options) -> float:
    """A rough working-set estimate of one instance for a JAX method (bytes)."""
    U, N, L, E, M, K = shape
    inst = 4 * (U * N * L * E + 2 * U * L * E + U * L * M * (K + 1))
    dp = 4 * L * (max_units + 1) * (E + 1) * 2  # (max,+) tables
    return 16 * inst + dp


#: The budget of ``memory_budget_mb="auto"`` on CPU (MB), and the share of an accelerator's memory.
CPU_BUDGET_MB = 2048.0
ACCELERATOR_SHARE = 0.4


def memory_budget_bytes(value) -> float:
    """``memory_budget_mb`` in bytes: a number > 0, or ``"auto"`` (:data:`CPU_BUDGET_MB` on CPU,
    :data:`ACCELERATOR_SHARE` of the first device's memory limit on a GPU/TPU when JAX reports it)."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"memory_budget_mb: must be a number > 0 or 'auto', got {value!r}")
        dev = jax.local_devices()[0]
        if dev.platform != "cpu":
            try:
                limit = (dev.memory_stats() or {}).get("bytes_limit")
            except Exception:  # noqa: BLE001 - some backends do not report memory
                limit = None
            if limit:
                return ACCELERATOR_SHARE * float(limit)
        return CPU_BUDGET_MB * 2**20
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"memory_budget_mb: must be a number > 0 or 'auto', got {value!r}")
    return float(value) * 2**20


def chunk_size_for(method, shape: tuple, max_units: int, options, n: int) -> int:
    """Instances per chunk: ``chunk_size`` if given, else what fits ``memory_budget_mb``."""
    if options["chunk_size"] is not None:
        c = int(options["chunk_size"])
        if c < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {c}")
        return c
    est = (method.bytes_per_instance or default_bytes_per_instance)(shape, max_units, options)
    budget = memory_budget_bytes(options["memory_budget_mb"])
    c = max(1, int(budget // max(est, 1)))
    return min(c, n)


def batch_mesh():
    """A 1-D ``("batch",)`` mesh over all local devices, or None with a single device."""
    n = jax.local_device_count()
    if n <= 1:
        return None
    # Auto axis: the partitioner propagates the batch sharding through the jitted method (the
    # explicit-sharding mode of recent JAX would need sharding rules inside every solver).
    kw = {}
    if hasattr(jax.sharding, "AxisType"):
        kw["axis_types"] = (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((n,), ("batch",), devices=jax.local_devices(), **kw)


def _take(tree, start: int, stop: int, size: int):
    """Slice [start:stop] of every leaf and pad to ``size`` rows by repeating the last row."""

    def one(a):
        part = a[start:stop]
        pad = size - part.shape[0]
        if pad:
            rep = jnp.repeat(part[-1:], pad, axis=0) if isinstance(part, jax.Array) else np.repeat(part[-1:], pad, axis=0)
            part = jnp.concatenate([part, rep]) if isinstance(part, jax.Array) else np.concatenate([part, rep])
        return part

    return jax.tree_util.tree_map(one, tree)


def run(method, batch: Instance, grid: Grid, key, options, **extra) -> tuple[Any, dict]:
    """Run ``method.fn`` over ``batch`` in fixed-size chunks; returns (placement [B,N,L,E], info).

    ``extra`` holds further per-instance arrays (leading axis B, e.g. an initial placement) that
    are chunked alongside the batch and passed to ``method.fn`` as keyword arguments.
    """
    B = batch.batch_shape[0]
    if not method.jax_native:
        return method.fn(batch, grid, key, options, **extra)
    mesh = batch_mesh()
    ndev = jax.local_device_count() if mesh is not None else 1
    size = chunk_size_for(method, batch.shape, grid.max_units, options, B)
    size = min(size, B)
    size = int(math.ceil(size / ndev) * ndev)  # divisible over devices
    nchunks = int(math.ceil(B / size))
    show = options["progress"] if options["progress"] is not None else nchunks > 1
    sharding = NamedSharding(mesh, PartitionSpec("batch")) if mesh is not None else None

    placements, infos = [], []
    progress = None
    pending = None

    def collect(x, info, n):
        placements.append(np.asarray(x)[:n])
        infos.append({k: np.asarray(v)[:n] for k, v in info.items()})
        if progress is not None:
            progress.update(task, advance=n)

    if show:
        from rich.progress import Progress

        progress = Progress(transient=True)
        task = progress.add_task(f"{method.name}: {B} instances", total=B)
        progress.start()
    try:
        for c in range(nchunks):
            start, stop = c * size, min(B, (c + 1) * size)
            chunk = _take(batch, start, stop, size)
            cgrid = Grid(
                _take(grid.size_units, start, stop, size),
                _take(grid.capacity_units, start, stop, size),
                grid.max_units,
                _take(grid.unit, start, stop, size),
            )
            cextra = {k: _take(jnp.asarray(v), start, stop, size) for k, v in extra.items()}
            if sharding is not None:
                chunk = jax.device_put(chunk, sharding)
                cgrid = cgrid._replace(
                    size_units=jax.device_put(jnp.asarray(cgrid.size_units), sharding),
                    capacity_units=jax.device_put(jnp.asarray(cgrid.capacity_units), sharding),
                )
                cextra = {k: jax.device_put(v, sharding) for k, v in cextra.items()}
            x, info = method.fn(chunk, cgrid, key, options, **cextra)
            # One chunk in flight: chunk c is dispatched before chunk c-1 is copied to the host,
            # so the device is not idle while the host collects results.
            if pending is not None:
                collect(*pending)
            pending = (x, info, stop - start)
        if pending is not None:
            collect(*pending)
    finally:
        if progress is not None:
            progress.stop()
    placement = np.concatenate(placements)
    info = {k: np.concatenate([i[k] for i in infos]) for k in infos[0]} if infos else {}
    return placement, info
