"""The relaxed gradient baseline — method ``relaxed``.

Cache probabilities ``p ∈ [0, 1]^{N×L×E}`` minimise the exact multilinear extension
``E_{x~Bernoulli(p)} J(x)`` (:func:`slimjax.objective.multilinear`) by projected first-order
steps: an optax optimizer (adam by default) with a learning-rate schedule runs a fixed number of
steps in ``lax.scan``; after every step ``p`` is projected onto the storage polytope
(:func:`slimjax.projection.project_storage`, on the integer storage grid). J is monotone, so
every raw gradient pushes all p up alike; on full nodes the gradient is centered first
(``center``, see :func:`_center`), without which adam makes no progress. ``restarts`` runs are
vmapped (run 0 starts from the uniform fill, the others from random points). Each run is then
rounded two ways:

* deterministic, from the best point and from the last point of the run: per node, items by
  descending p, each taken while it fits (items with p ≈ 0 are left out);
* ``samples`` Bernoulli draws x ~ p (last point), repaired per node (drawn items by descending p
  while they fit) and completed with the undrawn items by descending p.

The rounding works on a fine integer storage grid (``resolution`` units per smallest expert
size, sizes rounded up and capacities down, so feasible in real units) rather than the coarse
``capacity_unit`` grid of the DP methods, unless ``capacity_unit`` is given. Identical patterns
are merged first by ``solve_batch`` (J is unchanged; token-level pattern lists shrink a lot).

The best rounded placement by the exact J is completed by a greedy fill of the leftover storage
(``fill_steps`` steps of the best feasible single addition by marginal gain per unit) and
returned. ``info``: ``relaxed_value`` (best multilinear value reached; a local optimum, not a
bound), ``rounded_value`` (J of the returned placement) and ``steps``.

The result depends only on the key and the instance, so ``solve`` and ``solve_batch`` agree.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from slimjax import _storage as storage
from slimjax._instance import Instance
from slimjax._objective import expert_latency_from, multilinear_eval, multilinear_plan, objective_from_d
from slimjax.ops import Grid, priority_fill, project_storage
from slimjax.solvers._base import Prepared, Solver, check_choice, check_float, check_int, document_options, option

__all__ = ["Relaxed", "SCHEDULES", "relax"]

SCHEDULES = ("constant", "cosine", "linear", "exponential", "warmup_cosine")

_EPS = 1e-6  # p below this counts as "not wanted" by the rounding


def _schedule(cfg: "Relaxed"):
    import optax  # imported on first use: ``import slimjax`` stays light

    lr, steps = float(cfg.learning_rate), int(cfg.steps)
    kind = cfg.schedule
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "cosine":
        return optax.cosine_decay_schedule(lr, steps, alpha=0.01)
    if kind == "linear":
        return optax.linear_schedule(lr, 0.01 * lr, steps)
    if kind == "exponential":
        return optax.exponential_decay(lr, steps, 0.01)
    return optax.warmup_cosine_decay_schedule(0.1 * lr, lr, max(1, steps // 10), steps, 0.01 * lr)


def _fill(priority, size, cap, taken=None):
    """Per node, items by descending ``priority`` (> 0 only), each taken while it fits.

    priority [N, L, E]; size [L, E]; cap [N]; taken: bool [N, L, E] already placed (kept).
    Returns bool [N, L, E].
    """
    prio = jnp.where(priority > 0, priority, -jnp.inf)
    if taken is None:
        return jax.vmap(lambda p, c: priority_fill(p, size, c))(prio, cap)
    return jax.vmap(lambda p, c, t: priority_fill(p, size, c, t))(prio, cap, taken)


def _gains(inst: Instance, x, aggregation):
    """Marginal decrease of J from adding each single (n, l, e) to x: [N, L, E] (≥ 0)."""
    d = expert_latency_from(inst.latency, inst.fallback, x)  # [U, L, E]
    pat = inst.patterns  # [U, L, M, K]
    E = d.shape[-1]
    member = jnp.take_along_axis(d[:, :, None, :], pat, axis=-1)  # [U, L, M, K]
    agg = (lambda a, ax: a.max(ax)) if aggregation == "max" else (lambda a, ax: a.sum(ax))
    pl = agg(member, -1)  # [U, L, M]
    d_new = jnp.minimum(d[:, None], inst.latency)  # [U, N, L, E]
    hit = pat[..., None] == jnp.arange(E, dtype=pat.dtype)  # [U, L, M, K, E]
    # new member value of pattern (u, l, m), slot k, when (n, l, e) is added
    new_member = jnp.where(
        hit[:, None], d_new[:, :, :, None, None, :], member[:, None, ..., None]
    )  # [U, N, L, M, K, E]
    pl_new = agg(new_member, -2)  # [U, N, L, M, E]
    gain = jnp.einsum("u,ulm,unlme->nle", inst.traffic, inst.weight, pl[:, None, ..., None] - pl_new)
    return jnp.maximum(gain, 0.0)


def _greedy_fill(inst: Instance, x, size, cap, steps: int, aggregation):
    """``steps`` times add the feasible (n, l, e) with the best gain per unit (if any gain)."""

    def step(x, _):
        gain = _gains(inst, x, aggregation)
        used = (size * x).sum(axis=(1, 2))
        ok = (~x) & (used[:, None, None] + size <= cap[:, None, None]) & (gain > 0)
        score = jnp.where(ok, gain / size, -1.0).reshape(-1)
        i = jnp.argmax(score)
        add = jnp.zeros(score.shape, bool).at[i].set(score[i] > 0).reshape(x.shape)
        return x | add, None

    x, _ = jax.lax.scan(step, x, None, length=steps)
    return x


def _center(g, p, size, cap):
    """Remove from g [N, L, E] the component along the storage constraint's normal on full nodes.

    Monotone J makes every gradient ≤ 0, and per-coordinate optimizers (adam) would push every p
    up at the same pace and let the projection pull them back: no progress. On a node whose
    storage is full, subtract ``size · λ_n`` with λ_n the size-weighted mean of g over its
    fractional coordinates, so the direction trades storage between items.
    """
    used = (size * p).sum(axis=(1, 2))
    full = used >= cap * (1 - 1e-4) - 1e-6
    free = (p > 1e-6) & (p < 1 - 1e-6)
    w = jnp.where(free, size, 0.0)
    den = (w * size).sum(axis=(1, 2))
    lam = jnp.where(den > 0, (w * g).sum(axis=(1, 2)) / jnp.where(den > 0, den, 1.0), 0.0)
    return g - jnp.where(full, lam, 0.0)[:, None, None] * size


def _J(inst: Instance, x, aggregation):
    return objective_from_d(inst, expert_latency_from(inst.latency, inst.fallback, x), aggregation)


def relax(inst: Instance, size_units, capacity_units, key, cfg: "Relaxed", aggregation: str = "max"):
    """Solve one instance (unbatched). ``size_units`` [L], ``capacity_units`` [N] (the grid).

    Returns (placement bool [N, L, E], relaxed value, rounded value, steps int32).
    """
    agg = aggregation
    _, N, L, E = inst.latency.shape
    dtype = inst.latency.dtype
    size = jnp.broadcast_to(jnp.asarray(size_units, dtype)[:, None], (L, E))
    cap = jnp.asarray(capacity_units, dtype)
    R, S, steps = int(cfg.restarts), int(cfg.samples), int(cfg.steps)
    proj = partial(project_storage, size=size, capacity=cap, iters=int(cfg.proj_iters))

    plan = multilinear_plan(inst, agg)
    J0 = _J(inst, jnp.zeros((N, L, E), bool), agg)
    scale = jnp.where(J0 > 0, J0, 1.0)

    def f(p):
        return multilinear_eval(inst, plan, p, agg) / scale

    k_init, k_round = jax.random.split(key)
    uniform = jnp.broadcast_to(jnp.clip(cap / jnp.maximum(size.sum(), 1e-30), 0.0, 1.0)[:, None, None], (N, L, E))
    rand = jax.random.uniform(k_init, (R, N, L, E), dtype)
    P0 = jax.vmap(proj)(rand.at[0].set(uniform))

    import optax

    opt = cfg.optimizer if cfg.optimizer is not None else optax.adam(_schedule(cfg))
    vg = jax.vmap(jax.value_and_grad(f))

    def step(carry, _):
        P, state, best_P, best_v = carry
        v, g = vg(P)
        if cfg.center:
            g = jax.vmap(lambda g_, p_: _center(g_, p_, size, cap))(g, P)
        better = v < best_v
        best_P = jnp.where(better[:, None, None, None], P, best_P)
        best_v = jnp.where(better, v, best_v)
        upd, state = opt.update(g, state, P)
        P = jax.vmap(proj)(optax.apply_updates(P, upd))
        return (P, state, best_P, best_v), None

    init = (P0, opt.init(P0), P0, jnp.full((R,), jnp.inf, dtype))
    # best_P: the best point evaluated per run (the last projection step is not evaluated)
    (last_P, _, best_P, best_v), _ = jax.lax.scan(step, init, None, length=steps)

    # rounding: deterministic fill of the best and of the last point of every run, and S repaired
    # Bernoulli samples of the last point per run
    both = jnp.concatenate([best_P, last_P])  # [2R, N, L, E]
    prio = [jnp.where(both > _EPS, both, 0.0)]
    if S:
        draws = jax.random.uniform(k_round, (S, R, N, L, E), dtype) < last_P
        prio.append(jnp.where(last_P > _EPS, draws + last_P, 0.0).reshape(S * R, N, L, E))
    cands = jax.vmap(lambda pr: _fill(pr, size, cap))(jnp.concatenate(prio))  # [(S+2)·R, N, L, E]
    Js = jax.vmap(lambda x: _J(inst, x, agg))(cands)
    x = cands[jnp.argmin(Js)]
    if cfg.fill_steps:
        x = _greedy_fill(inst, x, size, cap, int(cfg.fill_steps), agg)
    return x, best_v.min() * scale, _J(inst, x, agg), jnp.int32(steps)


def _fine_grid(batch: Instance, resolution: int) -> Grid:
    """The integer storage grid with ``resolution`` units per smallest expert size (host NumPy).

    The storage contract's grid (:func:`slimjax._storage.grid_units`, as
    :func:`slimjax.ops.capacity_grid`), so a placement that fits on this grid is accepted by
    :func:`slimjax.feasible`; the resolution is lowered where a node's full storage
    would not stay exact in float32 (2^24 units).
    """
    size64 = np.asarray(batch.size, np.float64)  # [B, L, E]
    size = size64.max(-1)  # [B, L] each layer's largest size (the contract's grid, slimjax._storage)
    E = batch.size.shape[-1]
    ratio_full = (size / size.min(-1, keepdims=True)).sum(-1) * E  # [B] all experts, in smallest sizes
    res = np.maximum(np.minimum(resolution, np.floor(2.0**24 / (ratio_full + 1.0))), 1.0)
    u = size.min(-1) / res  # [B]
    size_units, capacity_units = storage.grid_units(size64, batch.capacity, u)
    capacity_units = np.minimum(capacity_units, (size_units * E).sum(-1, keepdims=True))
    max_units = int(capacity_units.max()) if capacity_units.size else 0
    return Grid(size_units.astype(np.int32), capacity_units.astype(np.int32), max_units, u)


def _bytes_per_instance(shape, cfg: "Relaxed") -> float:
    U, N, L, E, M, K = shape
    R, S = int(cfg.restarts), int(cfg.samples)
    B = K * (N + 1)
    plan = 4 * U * L * M * (K + 1) * B
    opt = 4 * 8 * R * N * L * E
    rounding = 4 * (S + 1) * R * N * L * E * 2
    greedy = 4 * U * N * L * M * K * E * 3
    return 4 * (plan * R + opt + rounding + greedy) + 4 * U * N * L * E * 8


@document_options
@dataclasses.dataclass(frozen=True)
class Relaxed(Solver):
    """Projected first-order descent (any optax optimizer) on the exact multilinear extension of J,
    then rounding (see the module docstring). A strong baseline, not a bound: ``relaxed_value`` in
    ``info`` is the best multilinear value reached (a local optimum).

    Bring your own optimizer: ``Relaxed(optimizer=optax.sgd(0.1))``. A given optimizer is a static
    part of the compiled program, compared by identity: reuse the same object across calls (a new
    ``optax.adam(...)`` per call compiles a new program).
    """

    name: ClassVar[str] = "relaxed"
    optimizer: Any = option(None, "an optax GradientTransformation; None = optax.adam(schedule(learning_rate))")
    learning_rate: float = option(0.05, "peak step size of the default optimizer's schedule (> 0; p lives in [0, 1])")
    schedule: str = option("cosine", f"learning-rate schedule of the default optimizer, one of {SCHEDULES}")
    steps: int = option(200, "optimizer steps per restart (int >= 1, fixed; cost linear)")
    restarts: int = option(4, "independent runs, vmapped (int >= 1; run 0 from the uniform fill; cost linear)")
    samples: int = option(8, "Bernoulli roundings per run (int >= 0; 0 = deterministic rounding only)")
    fill_steps: int = option(16, "greedy additions into the storage left after rounding (int >= 0)")
    proj_iters: int = option(40, "bisection steps of the storage projection (int >= 1)")
    center: bool = option(True, "center the gradient on full nodes (needed by adam; see the module docstring)")
    resolution: Any = option(1024, "rounding grid: units per smallest expert size (int >= 1), or None for the "
                             "common capacity grid (also used when capacity_unit is given)")

    def validate(self) -> None:
        opt = self.optimizer
        if opt is not None and not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
            raise ValueError(f"optimizer: must be an optax GradientTransformation (with init/update) or None, got {opt!r}")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_float("learning_rate", self.learning_rate, 0.0, open_lo=True)
        for k, lo in (("steps", 1), ("restarts", 1), ("samples", 0), ("fill_steps", 0), ("proj_iters", 1)):
            check_int(k, getattr(self, k), lo)
        if not isinstance(self.center, bool):
            raise ValueError(f"center: must be a bool, got {self.center!r}")
        if self.resolution is not None:
            check_int("resolution", self.resolution, 1)

    def prepare(self, batch, grid, aggregation):
        if self.resolution is not None and not grid.explicit:
            fine = _fine_grid(batch, int(self.resolution))
            per = (jnp.asarray(fine.size_units, jnp.int32), jnp.asarray(fine.capacity_units, jnp.int32))
        else:
            per = None
        return Prepared(static=aggregation, per_instance=per)

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        if per_instance is not None:
            size_units, capacity_units = per_instance
        x, relaxed, rounded, steps = jax.vmap(lambda i, s, c, k: relax(i, s, c, k, self, static))(
            batch, size_units, capacity_units, keys)
        return x, {"relaxed_value": relaxed, "rounded_value": rounded, "steps": steps}

    def bytes_per_instance(self, shape, static) -> float:
        return _bytes_per_instance(shape, self)
