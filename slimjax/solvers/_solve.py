"""The entry points :func:`solve` and :func:`solve_batch`, and :func:`feasible`.

Solver options belong to the solver object (``Successive(order="given")``, or as keywords with a
solver name: ``solve(inst, "successive", order="given")``); execution options and the
problem-level options are keyword-only arguments of the entry points and mean the same for every
solver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from slimjax import _storage as storage
from slimjax._cache import ensure_cache
from slimjax._compile import Clock, call
from slimjax._instance import Instance, is_batched
from slimjax._kernels import load_terms
from slimjax._keys import as_key
from slimjax._memory import instance_bytes
from slimjax._objective import AGGREGATIONS, check_placement, objective_from_d
from slimjax.ops import capacity_grid, merge_codes_fn, merged_size, with_patterns
from slimjax.solvers import _batching
from slimjax.solvers._base import Solution, Solver, Status
from slimjax.solvers._buckets import bucket, pad_patterns
from slimjax.solvers._methods import DEFAULT, as_solver

__all__ = ["Feasibility", "feasible", "instance_keys", "solve", "solve_batch"]


class Feasibility(NamedTuple):
    """:func:`feasible`'s result: ``ok`` bool [] ([batch]) and ``used`` [N] ([batch, N])."""

    ok: Any
    used: Any


def _used(batch: Instance, placement: np.ndarray) -> np.ndarray:
    return storage.used(batch.size, placement)


def _fits(batch: Instance, used: np.ndarray) -> np.ndarray:
    """bool [..., N]: the node's storage holds (the contract of :mod:`slimjax._storage`)."""
    return used <= storage.limit(batch.size, batch.capacity)


def feasible(inst: Instance, placement) -> Feasibility:
    """Whether a placement respects every node's storage (for placements built by hand).

    Args:
      inst: an instance, or a batch.
      placement: bool (or 0/1 integers) [N, L, E] ([batch, N, L, E]).

    Returns:
      ``Feasibility(ok, used)``: ``ok`` bool [] ([batch]) and the storage ``used`` per node [N]
      ([batch, N]), in the unit of ``size``, summed in float64. This is slimjax's one storage
      contract (:mod:`slimjax._storage`): ``used <= capacity·(1 + 1e-6) + 1e-9·max(1, max size)``;
      every solver's placement passes it and every lower bound holds for every placement it accepts.

    Raises:
      ValueError: a placement of the wrong shape or dtype.
    """
    if not isinstance(inst, Instance):
        raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")
    x = check_placement(inst, placement)
    used = _used(inst, np.asarray(x))
    return Feasibility(_fits(inst, used).all(-1), used)


_FOLD = jax.jit(lambda key, idx: jax.vmap(lambda i: jax.random.fold_in(key, i))(idx))


def instance_keys(key, n: int, clock: Clock | None = None):
    """The PRNG keys of a batch of ``n``: instance i gets ``jax.random.fold_in(key, i)``."""
    return call(_FOLD, (), (as_key(key), jnp.arange(bucket(n), dtype=jnp.uint32)), clock)[:n]


def _evaluate_fn(aggregation, batch, x):
    def one(inst, xi):
        d = jnp.minimum(inst.fallback, jnp.where(xi[None], inst.latency, jnp.inf).min(axis=1))
        return objective_from_d(inst, d, aggregation)

    J = jax.vmap(one)(batch, x)
    return J, J + (batch.traffic * batch.base).sum(-1)


_EVALUATE = jax.jit(_evaluate_fn, static_argnums=0)


def _load_objective_fn(aggregation, batch, x, max_utilization):
    """J_load of every placement, ``inf`` where load-infeasible (:func:`slimjax.queueing.load_report`'s
    objective), as one program run through :func:`call`: its compile is in ``compile_seconds``."""
    def one(i: Instance, xi: Array) -> Array:
        service, rate = (i.service, i.rate) if i.has_load else (jnp.zeros(i.latency.shape[1:], i.latency.dtype),
                                                                 jnp.zeros(i.latency.shape[:1], i.latency.dtype))
        return load_terms(i.latency, i.fallback, service, rate, i.patterns, i.weight, i.traffic, xi,
                          max_utilization, aggregation).objective

    return jax.vmap(one)(batch, x)


_LOAD_OBJECTIVE = jax.jit(_load_objective_fn, static_argnums=0)


def _merge(batch: Instance, clock: Clock, budget: float) -> Instance:
    plan = merged_size(batch)
    if plan is None:
        return batch
    E, Mp, on_device = plan
    if not on_device:  # very large E^K: the host path
        from slimjax.ops import merge_patterns

        return merge_patterns(batch)
    U, N, L, E, M, K = batch.shape
    per = 16.0 * U * L * (min(E**K, 2**20) + 4 * M * K)  # histogram or sort working set, bytes
    # (the input's M is not padded: a zero-weight pattern 0 would take one of the Mp output slots)
    pat, w = _batching.map_chunks(merge_codes_fn(), (E, Mp), (batch.patterns, batch.weight),
                                  budget // per, clock, to_host=False)
    return with_patterns(batch, pat, w)


def _combine_status(a, b):
    """Status of a chain after a stage: failed sticks, optimal sticks (later stages never increase J)."""
    if a is None:
        return b
    return np.where((a == Status.FAILED) | (b == Status.FAILED), Status.FAILED,
                    np.where((a == Status.OPTIMAL) | (b == Status.OPTIMAL), Status.OPTIMAL, Status.FEASIBLE)).astype(np.int8)


def _check_run_options(aggregation: str, throw, bucket_shapes, progress) -> None:
    """Raise ValueError on an invalid execution option of :func:`_run`."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not isinstance(throw, bool):
        raise ValueError(f"throw: must be a bool, got {throw!r}")
    if not isinstance(bucket_shapes, bool):
        raise ValueError(f"bucket_shapes: must be a bool, got {bucket_shapes!r}")
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise ValueError(f"progress: must be None, a bool or a callable progress(done, total), got {progress!r}")


def _working_batch(batch: Instance, stages, merge_patterns: bool, bucket_shapes: bool, clock: Clock,
                   budget: float) -> Instance:
    """The batch the stages solve: patterns merged (if asked) and padded to a bucket (all-JAX chains)."""
    work = _merge(batch, clock, budget) if merge_patterns else batch
    if bucket_shapes and all(st.jax_native for st in stages):
        M = work.shape[4]
        if not merge_patterns or merged_size(batch) is None:  # M is the data's (not fixed by E, K)
            work = pad_patterns(work, bucket(M))
    return work


def _run_chain(stages, work: Instance, grid, keys, B: int, *, aggregation: str, chunk_size, memory_budget_mb,
               progress, clock: Clock, budget: float, bucket_shapes: bool):
    """Every stage of the chain in turn, each from the last one's placement; (x, status [B], info)."""
    x = None
    status = None
    info: dict[str, np.ndarray] = {}
    for i, stage in enumerate(stages):
        if stage.jax_native:
            prepared = stage.prepare(work, grid, aggregation)
            check = getattr(stage, "check_memory", None)
            if check is not None:
                check(work.shape, prepared.static, budget, grid)
            x, sinfo = _batching.run(stage, prepared, work, grid, keys, x, chunk_size=chunk_size,
                                     memory_budget_mb=memory_budget_mb, progress=progress, clock=clock,
                                     bucket_shapes=bucket_shapes)
            sstatus = np.full(B, Status.FEASIBLE, np.int8)
        else:
            extra = {"budget": budget} if getattr(stage, "memory_budgeted", False) else {}  # LoadAware chunks to it
            x, sinfo, sstatus = stage.host_solve(work, grid, keys, aggregation, x, clock, **extra)
            x = np.asarray(x)
        status = _combine_status(status, np.asarray(sstatus, np.int8))
        prefix = "" if i == 0 else f"{stage.name}."
        info.update({prefix + k: np.asarray(v) for k, v in sinfo.items()})
    return x, status, info


def _score(batch: Instance, solver: Solver, x: np.ndarray, aggregation: str, budget: float, clock: Clock,
           bucket_shapes: bool):
    """J and total (float64 [B]) of the placements on ``batch`` itself (J_load for load=True)."""
    U, N, L, E, M, K = batch.shape
    eval_bytes = 3 * instance_bytes(batch.shape) + 8.0 * U * L * M * K  # masked latencies + pattern gathers
    scored = pad_patterns(batch, bucket(M)) if bucket_shapes else batch  # zero-weight patterns add 0 to J
    J, total = _batching.map_chunks(_EVALUATE, (aggregation,), (scored, x), budget // eval_bytes, clock,
                                    bucket_shapes=bucket_shapes)
    J = np.asarray(J, np.float64)
    total = np.asarray(total, np.float64)
    if getattr(solver, "load_objective", False):  # load=True: the objective is J_load (inf if load-infeasible)
        base = total - J
        cap = np.asarray(solver.max_utilization, batch.latency.dtype)
        J = np.asarray(call(_LOAD_OBJECTIVE, (aggregation,), (batch, x, cap), clock), np.float64)
        total = J + base
    return J, total


def _mark_failures(label: str, B: int, status, fits, J, total, throw: bool):
    """Raise on failed instances (``throw``), else mark them FAILED with NaN objectives; (status, J, total)."""
    failed = (status == Status.FAILED) | ~fits | ~np.isfinite(J)
    if failed.any():
        bad = np.flatnonzero(failed)
        why = []
        if (~fits).any():
            why.append(f"infeasible placement (a solver bug) for instances {np.flatnonzero(~fits)[:5].tolist()}")
        if (status == Status.FAILED).any():
            why.append(f"no solution for instances {np.flatnonzero(status == Status.FAILED)[:5].tolist()}")
        if (~np.isfinite(J)).any():
            why.append(f"non-finite J for instances {np.flatnonzero(~np.isfinite(J))[:5].tolist()}")
        if throw:
            raise RuntimeError(
                f"{label}: failed on {len(bad)} of {B} instances: " + "; ".join(why)
                + " (pass throw=False to get a status per instance instead)"
            )
        status = np.where(failed, Status.FAILED, status).astype(np.int8)
        J = np.where(failed, np.nan, J)
        total = np.where(failed, np.nan, total)
    return status, J, total


def _run(
    batch: Instance,
    solver: Solver,
    label: str,
    keys,
    *,
    capacity_unit,
    aggregation: str,
    chunk_size,
    memory_budget_mb,
    progress,
    throw: bool,
    merge_patterns: bool,
    clock: Clock,
    t0: float,
    bucket_shapes: bool = True,
) -> Solution:
    _check_run_options(aggregation, throw, bucket_shapes, progress)
    budget = _batching.memory_budget_bytes(memory_budget_mb)
    _batching.chunk_size_for(1.0, 1, chunk_size, memory_budget_mb)  # validates chunk_size
    grid = capacity_grid(batch, capacity_unit)
    stages = solver.stages()
    work = _working_batch(batch, stages, merge_patterns, bucket_shapes, clock, budget)
    B = batch.batch_shape[0]
    x, status, info = _run_chain(stages, work, grid, keys, B, aggregation=aggregation, chunk_size=chunk_size,
                                 memory_budget_mb=memory_budget_mb, progress=progress, clock=clock, budget=budget,
                                 bucket_shapes=bucket_shapes)
    x = np.asarray(x)
    if x.dtype != bool or x.shape != batch.latency.shape[:1] + batch.latency.shape[2:]:
        raise RuntimeError(f"{label}: returned a placement of dtype {x.dtype} and shape {x.shape} (a solver bug)")
    used = _used(batch, x)
    fits = _fits(batch, used).all(-1)
    J, total = _score(batch, solver, x, aggregation, budget, clock, bucket_shapes)
    status, J, total = _mark_failures(label, B, status, fits, J, total, throw)
    seconds = max(time.perf_counter() - t0 - clock.compile_seconds, 0.0)
    return Solution(x, J, total, used, status, info, label, seconds, clock.compile_seconds)


def _label(solver) -> str:
    return solver if isinstance(solver, str) else getattr(solver, "name", type(solver).__name__)


def solve_batch(
    batch: Instance,
    solver: str | Solver = DEFAULT,
    *,
    key=None,
    capacity_unit: float | None = None,
    aggregation: str = "max",
    chunk_size: int | None = None,
    memory_budget_mb: float | str = "auto",
    progress: bool | Callable[[int, int], None] | None = None,
    throw: bool = True,
    merge_patterns: bool = True,
    bucket_shapes: bool = True,
    **options,
) -> Solution:
    """Solve every instance of a batch; the fields of the result are batched.

    Args:
      batch: an :class:`~slimjax.Instance` with a leading batch axis (:func:`slimjax.stack`).
      solver: a solver object (``slimjax.solvers.Successive(...)``, ``chain(...)``) or a name from
        :func:`slimjax.methods` (``"successive-best"``, the default; ``"A+B"`` chains named solvers).
      key: an int seed or a PRNG key (default 0). Instance i uses ``jax.random.fold_in(key, i)``,
        so the draws of different instances are independent, and
        ``solve(batch[i], key=jax.random.fold_in(key, i))`` solves the same problem with the same
        draws as ``solve_batch(batch, key=key)[i]``. What is guaranteed between the two (and
        between different ``chunk_size`` or device counts, which are other compiled programs): J
        equal up to float rounding (~1e-6 relative in float32), and the same placement except
        among placements of equal J, where float rounding may break a tie either way. Within one
        program (the same call repeated) results are bit for bit identical.
      capacity_unit: the unit of the integer storage grid (same unit as ``size``); None = the
        coarsest fraction of the smallest expert size that every layer's size is a multiple of.
      aggregation: ``"max"`` (the experts of a token run in parallel) or ``"sum"``.
      chunk_size: instances per device call; None = as many as ``memory_budget_mb`` allows.
      memory_budget_mb: working memory of one chunk in MB, or ``"auto"`` (2048 on CPU, 40 % of an
        accelerator's memory).
      progress: None (a bar for long batches on a terminal), a bool, or ``progress(done, total)``.
      throw: raise when an instance fails (default); with False, failed instances get status
        ``FAILED`` and objective NaN and the others are returned.
      merge_patterns: merge identical routing patterns first (J is unchanged; faster).
      bucket_shapes: pad a batch that fits one chunk, and the routing patterns, up to a few bucket
        sizes (4 per doubling above 8, by repeating the last instance and adding zero-weight
        patterns; J is unchanged), so that a sweep over nearby batch sizes or token counts
        compiles once per bucket. False compiles for the exact shape.
      **options: the solver's own options when ``solver`` is a name (``order="given"``).

    Returns:
      a batched :class:`~slimjax.Solution`; ``objective`` is evaluated on ``batch`` itself.

    Raises:
      ValueError: unknown solver or option, an invalid option value, an unbatched instance.
      RuntimeError: an instance failed and ``throw`` is True.
    """
    clock = Clock()
    t0 = time.perf_counter()
    ensure_cache()
    if not isinstance(batch, Instance):
        raise ValueError(f"batch: expected a slimjax.Instance, got {type(batch).__name__}")
    if not is_batched(batch):
        raise ValueError("batch: solve_batch needs a leading batch axis; use slimjax.solve for one instance or slimjax.stack([...])")
    obj = as_solver(solver, **options)
    keys = instance_keys(key, batch.batch_shape[0], clock)
    return _run(batch, obj, _label(solver), keys, capacity_unit=capacity_unit, aggregation=aggregation,
                chunk_size=chunk_size, memory_budget_mb=memory_budget_mb, progress=progress, throw=throw,
                merge_patterns=merge_patterns, clock=clock, t0=t0, bucket_shapes=bucket_shapes)


def solve(
    inst: Instance,
    solver: str | Solver = DEFAULT,
    *,
    key=None,
    capacity_unit: float | None = None,
    aggregation: str = "max",
    memory_budget_mb: float | str = "auto",
    throw: bool = True,
    merge_patterns: bool = True,
    bucket_shapes: bool = True,
    **options,
) -> Solution:
    """Solve one instance. Same arguments as :func:`solve_batch`; the fields are unbatched.

    ``key`` (default 0) is this instance's key itself (``solve_batch`` folds the instance index in).

    Examples:
      >>> import jax, slimjax
      >>> inst = slimjax.generate.instances(jax.random.key(0), 1, model="mixtral_8x7b")[0]
      >>> sol = slimjax.solve(inst, "successive")
      >>> sol.placement.shape
      (5, 32, 8)
    """
    clock = Clock()
    t0 = time.perf_counter()
    ensure_cache()
    if not isinstance(inst, Instance):
        raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")
    if is_batched(inst):
        raise ValueError("inst: solve takes one instance; use slimjax.solve_batch for a batch")
    obj = as_solver(solver, **options)
    one = jax.tree_util.tree_map(lambda a: a[None], inst)
    keys = as_key(key)[None]
    sol = _run(one, obj, _label(solver), keys, capacity_unit=capacity_unit, aggregation=aggregation,
               chunk_size=None, memory_budget_mb=memory_budget_mb, progress=False, throw=throw,
               merge_patterns=merge_patterns, clock=clock, t0=t0, bucket_shapes=bucket_shapes)
    out = sol[0]
    return Solution(out.placement, out.objective, out.total, out.used, out.status, out.info, out.solver,
                    max(time.perf_counter() - t0 - clock.compile_seconds, 0.0), clock.compile_seconds)
