"""Chunked, padded and sharded execution of a registered method over a batch.

``run`` splits a batch into chunks of a fixed size (the last one padded by repeating its last
instance, so every chunk has the same shape and compiles once), places each chunk on a
``("batch",)`` mesh over all local devices with ``NamedSharding`` when there is more than one,
calls the method's batch function and concatenates the results (padding dropped).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from slimjax._instance import Instance
from slimjax._memory import ACCELERATOR_SHARE, CPU_BUDGET_MB, chunk_size_for, memory_budget_bytes
from slimjax.ops import Grid
from slimjax.solvers._buckets import bucket

__all__ = ["ACCELERATOR_SHARE", "CPU_BUDGET_MB", "CHUNK_PROGRAM", "batch_mesh", "chunk_size_for", "memory_budget_bytes", "run"]


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


def _chunk_program(solver, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
    return solver.chunk(static, shared, batch, size_units, capacity_units, per_instance, keys, start)


#: the one jitted entry of every JAX-native solver (solver and its static config are static)
CHUNK_PROGRAM = jax.jit(_chunk_program, static_argnums=(0, 1))


def run(
    solver,
    prepared,
    batch: Instance,
    grid: Grid,
    keys,
    start=None,
    *,
    chunk_size=None,
    memory_budget_mb="auto",
    progress=None,
    clock=None,
    bucket_shapes: bool = True,
) -> tuple[np.ndarray, dict]:
    """Run a JAX-native ``solver`` over ``batch`` in fixed-size chunks.

    Args:
      solver: a :class:`~slimjax.solvers.Solver` with ``jax_native``.
      prepared: its :meth:`~slimjax.solvers.Solver.prepare` result for this batch and grid.
      keys: PRNG keys [B], one per instance.
      start: optional start placements bool [B, N, L, E] (refining solvers).
      progress: None (a bar when there are several chunks and stderr is a terminal), a bool, or
        a callable ``progress(done, total)`` called after every chunk.
      clock: a :class:`~slimjax._compile.Clock` that receives the compile seconds.
      bucket_shapes: pad a batch that fits one chunk up to its :func:`~slimjax.solvers._buckets.bucket`
        size (when ``chunk_size`` is None), so that nearby batch sizes share one program.

    Returns:
      (placement bool [B, N, L, E] on the host, info {name: host array [B, ...]}).
    """
    B = batch.batch_shape[0]
    mesh = batch_mesh()
    size, nchunks = _layout(solver, prepared, batch, mesh, chunk_size, memory_budget_mb, bucket_shapes)
    sharding = NamedSharding(mesh, PartitionSpec("batch")) if mesh is not None else None
    from slimjax._compile import call, fast_compile_for

    su_all, cu_all = grid.size_units, grid.capacity_units
    fast = fast_compile_for(batch.shape[3])
    out = _Collector(solver.name, B, nchunks, progress)
    pending = None
    try:
        for c in range(nchunks):
            lo, hi = c * size, min(B, (c + 1) * size)
            if nchunks == 1 and hi - lo == size:
                part = (batch, su_all, cu_all, prepared.per_instance, keys, start)
            else:
                part = _take((batch, su_all, cu_all, prepared.per_instance, keys, start), lo, hi, size)
            chunk, su, cu, per, ks, st = part
            su = jnp.asarray(su, jnp.int32)
            cu = jnp.asarray(cu, jnp.int32)
            if st is not None:
                st = jnp.asarray(st, bool)
            if sharding is not None:
                chunk, su, cu, per, ks, st = jax.device_put((chunk, su, cu, per, ks, st), sharding)
            x, info = call(CHUNK_PROGRAM, (solver, prepared.static), (prepared.shared, chunk, su, cu, per, ks, st), clock,
                           fast=fast)
            # One chunk in flight: chunk c is dispatched before chunk c-1 is copied to the host,
            # so the device is not idle while the host collects results.
            if pending is not None:
                out.collect(*pending)
            pending = (x, info, hi - lo)
        if pending is not None:
            out.collect(*pending)
    finally:
        out.close()
    return out.results()


def _layout(solver, prepared, batch: Instance, mesh, chunk_size, memory_budget_mb, bucket_shapes: bool) -> tuple[int, int]:
    """(instances per chunk, number of chunks): what ``chunk_size`` or the memory budget allows,
    a lone chunk padded up to its bucket size, divisible over the local devices."""
    B = batch.batch_shape[0]
    ndev = jax.local_device_count() if mesh is not None else 1
    est = solver.bytes_per_instance(batch.shape, prepared.static)
    size = chunk_size_for(est, B, chunk_size, memory_budget_mb)
    if bucket_shapes and chunk_size is None and size == B:  # one chunk: pad B up to its bucket
        size = min(bucket(B), chunk_size_for(est, bucket(B), None, memory_budget_mb))
    size = int(math.ceil(size / ndev) * ndev)  # divisible over devices
    return size, int(math.ceil(B / size))


class _Collector:
    """The chunks' results on the host, with the progress bar or callback of :func:`run`."""

    def __init__(self, name: str, total: int, nchunks: int, progress):
        import sys

        self.total, self.done = total, 0
        self.placements: list = []
        self.infos: list = []
        self.callback = progress if callable(progress) else None
        show = bool(progress) if progress is not None and self.callback is None else (nchunks > 1 and sys.stderr.isatty())
        self.bar = None
        if show and self.callback is None:
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.task = self.bar.add_task(f"{name}: {total} instances", total=total)
            self.bar.start()

    def collect(self, x, info: dict, n: int) -> None:
        self.placements.append(np.asarray(x)[:n])
        self.infos.append({k: np.asarray(v)[:n] for k, v in info.items()})
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def results(self) -> tuple[np.ndarray, dict]:
        placement = np.concatenate(self.placements)
        infos = self.infos
        info = {k: np.concatenate([i[k] for i in infos]) for k in infos[0]} if infos else {}
        return placement, info


def map_chunks(fn, static: tuple, args: tuple, size: float, clock=None, *, to_host: bool = True,
               bucket_shapes: bool = True):
    """``fn(*static, *args)`` over fixed-size chunks of the leading axis of every leaf of ``args``
    (the last chunk padded, so one program serves every chunk), results concatenated.

    For the bookkeeping programs of a solve (pattern merging, the final evaluation of J), so that
    they also stay within the memory budget on large batches. A batch that fits one chunk is
    padded to its :func:`~slimjax.solvers._buckets.bucket` size (unless ``bucket_shapes`` is False).
    """
    from slimjax._compile import call

    B = jax.tree_util.tree_leaves(args)[0].shape[0]
    size = max(1, min(int(size), bucket(B) if bucket_shapes else B))
    outs = []
    for lo in range(0, B, size):
        hi = min(B, lo + size)
        part = args if (lo == 0 and hi == B == size) else _take(args, lo, hi, size)
        out = call(fn, static, part, clock)
        cut = (lambda a, n=hi - lo: np.asarray(a)[:n]) if to_host else (lambda a, n=hi - lo: a[:n])
        outs.append(jax.tree_util.tree_map(cut, out))
    if len(outs) == 1:
        return outs[0]
    cat = np.concatenate if to_host else jnp.concatenate
    return jax.tree_util.tree_map(lambda *a: cat(a), *outs)
