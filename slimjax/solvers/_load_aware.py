"""Load-aware solving: any solver, re-run on loaded latencies by a damped fixed-point iteration.

:class:`LoadAware` wraps an inner solver (``successive-best``, ``greedy``, any chain) and
minimises J_load (:func:`slimjax.queueing.loaded_objective`) under the utilisation cap
``rho[n] < max_utilization``. ``solve(inst, "successive-best", load=True)`` is
``solve(inst, LoadAware(inner=<successive-best>))``.

For a batch, all instances at once:

1. **Iteration 0 (load-blind).** ``rho_hat = 0``, price ``lam = 0``: the inner solver runs on the
   instance itself, so its placement is the load-blind one.
2. **Iteration t.** The inner solver runs on a copy of the instance whose latencies are the loaded
   times at the estimate, plus a price on the utilisation of each node::

       latency_t[u, n, l, e] = latency[u, n, l, e] + service[n, l, e] · r[n] / (1 − r[n])
                               + lam[n] · service[n, l, e]          r = min(rho_hat, max_utilization)

   (the fallback and unreachable nodes unchanged). Its placement ``x_t`` then gets

   * the **repair** (skipped when no node is over the cap): while some node has
     ``rho[n] ≥ max_utilization``, remove one copy from an over-cap node — the removal with the
     least total over-cap utilisation left, ties to the smallest J_load (evaluated with the
     utilisation clipped at 0.999). Every removal is scored at once
     (:mod:`slimjax.solvers._load_moves`: removing (n, l, e) moves only the users whose fastest
     copy it was, to their second-fastest holder, so its utilisation change is exact from one
     segment sum; its J_load change is estimated) and the tie-break J_load is evaluated exactly
     for the :data:`~slimjax.solvers._load_moves.EXACT` ties with the best estimate (all ties
     when there are no more). Removing a copy never raises its own node's utilisation, and a node
     without copies has ``rho = 0`` (the fallback does not queue), so the repair ends with a
     load-feasible placement;
   * the true J_load of the repaired placement; the best one so far is kept (per instance).

   The estimate and the price move with the *unrepaired* placement's utilisation ``rho_t``::

       rho_hat <- damping · rho_hat + (1 − damping) · rho_t
       lam[n]  <- lam[n] + price_step · max(0, rho_t[n] − max_utilization) / (1 − max_utilization)

3. **Polish under J_load.** The best placement gets up to ``polish_rounds`` single flips (add a
   copy where storage allows, or remove one), each the best strict decrease of the true J_load
   (load-feasible flips only): a round scores every flip at once as above and evaluates J_load
   exactly for the :data:`POLISH_EXACT` with the best estimate; when none of them improves, one
   exhaustive round evaluates every flip exactly, and the fast rounds go on while it finds one. So
   the polish stops at a local optimum of all single flips (or after ``polish_rounds`` flips).

Every program runs in chunks of the batch within ``memory_budget_mb`` (``solve`` passes it to
:meth:`LoadAware.host_solve`; the per-instance working sets :func:`_move_bytes`,
:func:`_full_bytes` and :func:`_eval_bytes` are checked against XLA's ``memory_analysis`` in the
tests).

So the result is load-feasible, and never worse under J_load than the repaired load-blind
placement of the same inner solver (iteration 0; equal to the load-blind placement whenever that
one is load-feasible). ``Solution.objective`` of a load-aware solve is J_load;
``info["unloaded"]`` is J of the same placement, ``info["utilization"]`` its rho [N],
``info["blind"]`` J_load of the (repaired) load-blind placement, ``info["best_iteration"]`` the
iteration that gave the result (0 = load-blind), ``info["repairs"]`` the copies removed from
it, ``info["polish_moves"]`` the flips that polished it.
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
from slimjax._kernels import activation, assignment_from, assignment_share, loaded_expert_latency_from, utilization_from
from slimjax._objective import objective_from_d
from slimjax.ops import capacity_grid
from slimjax.solvers import _batching
from slimjax.solvers import _load_moves as _moves
from slimjax.solvers._base import Solver, Status, check_float, check_int, document_options, option

__all__ = ["LoadAware", "LOAD_OPTIONS", "repair", "load_polish"]

#: the options of ``solve(..., load=True, ...)`` that go to :class:`LoadAware` (not to the inner solver)
LOAD_OPTIONS = ("max_utilization", "load_iterations", "load_damping", "load_price", "load_polish", "load_warm_start")
#: utilisation at which the repair's tie-break J_load is clipped (finite everywhere)
_CLIP = 0.999


# -- per-instance pieces (pure JAX) -----------------------------------------------------------


def _fields(inst: Instance):
    return inst.service, inst.rate, activation(inst.patterns, inst.weight, inst.latency.shape[-1])


def _rho(inst: Instance, x, p):
    N = inst.latency.shape[1]
    share = assignment_share(assignment_from(inst.latency, inst.fallback, x), N, inst.latency.dtype)
    return utilization_from(p, inst.rate, inst.service, share)


def _j_at(inst: Instance, x, rho, aggregation):
    d = loaded_expert_latency_from(inst.latency, inst.fallback, inst.service, assignment_from(inst.latency, inst.fallback, x), rho)
    return objective_from_d(inst, d, aggregation)


def _jload(inst: Instance, x, p, cap, aggregation):
    """(J_load with ``inf`` when load-infeasible, rho)."""
    rho = _rho(inst, x, p)
    ok = (rho < cap).all()
    j = _j_at(inst, x, jnp.where(ok, rho, 0.0), aggregation)
    return jnp.where(ok, j, jnp.inf), rho


def _grid_room(batch: Instance, grid, nodes: tuple):
    """(units per expert float32 [B, L], whole units per node float32 [B, len(nodes)]) of the
    solvers' storage grid (:func:`slimjax._storage.grid_units`), for the in-program check
    :func:`_fits`. Node units are clipped to 2^24 − 1 so that float32 sums decide exactly."""
    if grid is None:
        grid = capacity_grid(batch)
    cu = np.minimum(np.asarray(grid.capacity_units)[:, np.asarray(nodes)], 2**24 - 1)
    return np.asarray(grid.size_units, np.float32), np.asarray(cu, np.float32)  # host arrays: no eager program


def _fits(x, su, cu):
    """Whether ``x`` [N, L, E] fits on the integer storage grid (su [L], cu [N], float32 whole
    numbers): a subset of the storage contract, decided exactly in the program (partial sums
    are exact up to 2^24 and round monotonically beyond it, where every cu lies below)."""
    used = (x.sum(-1).astype(jnp.float32) * su[None]).sum(-1)
    return (used <= cu).all()


def _arrays(inst: Instance, p):
    return (inst.latency, inst.fallback, inst.service, inst.rate, p, inst.patterns, inst.weight, inst.traffic)


def _flip(x, c):
    """``x`` with flat bit ``c`` flipped."""
    flat = x.reshape(-1)
    return flat.at[c].set(~flat[c]).reshape(x.shape)


def _repair_one(inst: Instance, x, cap, aggregation):
    """Remove copies from over-cap nodes until every ``rho[n] < cap`` (see the module docstring).

    A step scores every removal at once (:func:`slimjax.solvers._load_moves.moves`: the exact
    utilisation change, an estimated J_load change) and keeps those with the least total over-cap
    utilisation left; on a tie, the clipped J_load decides, evaluated exactly for the
    :data:`EXACT` tied removals with the best estimate (all of them when there are no more).
    The removals then follow without rescoring (a run): removing (n, l, e) changes only the
    utilisation changes of expert (l, e)'s copies (one column, :func:`removal_column`), so the
    utilisation changes stay exact, and a tie of at most :data:`EXACT` removals is decided
    exactly as above (all of them evaluated, so the stale estimate does not matter). The run
    stops at a tie of more (the next step rescores) or when no node is over the cap. Ties are
    evaluated under ``lax.cond``: the batch is mapped, not vmapped, so the exact evaluations run
    only on the steps that have a tie."""
    N, L, E = x.shape
    p = activation(inst.patterns, inst.weight, inst.latency.shape[-1])
    thr = cap * (1 - 1e-6)  # strictly below the cap, with room for float rounding across programs
    arrays = _arrays(inst, p)
    k = min(_moves.EXACT, N * L * E)
    w = (inst.rate[:, None, None] * p)[:, None] * inst.service[None]  # [U, N, L, E] load of (l, e) at n

    def over(xx):
        return (_rho(inst, xx, p) >= thr).any()

    def pick(xx, rho, drho):
        allowed = (xx & (rho >= thr)[:, None, None]).reshape(-1)  # copies on over-cap nodes
        ex = jnp.maximum(rho + drho - thr, 0.0).sum(-1).reshape(-1)
        ex = jnp.where(allowed, ex, jnp.inf)
        best_ex = ex.min()
        tie = allowed & (ex <= best_ex + 1e-12 * (1 + best_ex))
        return allowed, ex, tie

    def choose_tie(xx, rho, drho, tie, dj):
        # the clipped J_load of the best tied removals by the estimate decides (exact: removal_jloads)
        _, idx = jax.lax.top_k(-jnp.where(tie, dj.reshape(-1), jnp.inf), k)
        jc = _moves.removal_jloads(inst.latency, inst.fallback, inst.service, inst.patterns, inst.weight, inst.traffic,
                                   xx, rho, drho, idx, _CLIP, aggregation)
        return idx[jnp.argmin(jnp.where(tie[idx], jc, jnp.inf))].astype(jnp.int32)

    def cond(state):
        xx, removed, go = state
        return go & (removed < N * L * E)

    def body(state):
        xx, removed, _ = state
        mv = _moves.moves(*arrays, xx, _CLIP, aggregation, adds=False)

        def rcond(r):
            return r[5]

        def rbody(r):
            x2, rho2, d2, cnt, fresh, _ = r
            al, ex2, tie2 = pick(x2, rho2, d2)
            nt = tie2.sum()
            # dj is fresh on the run's first step; later a tie is decided only if all of it is evaluated
            go = (rho2 >= thr).any() & al.any() & (fresh | (nt <= k)) & (removed + cnt < N * L * E)
            c = jax.lax.cond(go & (nt > 1), lambda: choose_tie(x2, rho2, d2, tie2, mv.dj),
                             lambda: jnp.argmin(ex2).astype(jnp.int32))
            n, l, e = c // (L * E), (c // E) % L, c % E
            x3 = _flip(x2, c)
            col = _moves.removal_column(inst.latency[:, :, l, e], inst.fallback[:, l, e], w[:, :, l, e], x3[:, l, e])
            return (jnp.where(go, x3, x2), jnp.where(go, rho2 + d2[n, l, e], rho2),
                    jnp.where(go, d2.at[:, l, e, :].set(col), d2), cnt + go.astype(jnp.int32), jnp.bool_(False), go)

        nx, _, _, cnt, _, _ = jax.lax.while_loop(rcond, rbody, (xx, mv.rho, mv.drho, jnp.int32(0), jnp.bool_(True),
                                                                jnp.bool_(True)))
        some = cnt > 0  # else nothing to remove here (a copy outside the nodes): stop
        return nx, jnp.where(some, removed + cnt, N * L * E), some & over(nx)

    x, removed, _ = jax.lax.while_loop(cond, body, (x, jnp.int32(0), over(x)))
    return x, removed


def _polish_one(inst: Instance, x, cap, su, cu, aggregation, rounds, moves0):
    """Best-improvement single flips under the true J_load (load-feasible; a copy is added only
    where the result fits on the storage grid, so a contract-feasible start stays feasible).

    Each round scores every flip at once (:mod:`slimjax.solvers._load_moves`), drops those that
    would put a node at the cap or not fit, evaluates J_load exactly for the :data:`POLISH_EXACT`
    with the best estimate and takes the best of them if it is a strict decrease; it stops at the
    first round without one, or after ``rounds`` moves in all (``moves0`` already made)."""
    N, L, E = x.shape
    p = activation(inst.patterns, inst.weight, inst.latency.shape[-1])
    arrays = _arrays(inst, p)
    k = min(POLISH_EXACT, N * L * E)

    def cond(state):
        return state[3] & (state[2] < rounds)

    def body(state):
        xx, j, moves, _ = state
        mv = _moves.moves(*arrays, xx, _CLIP, aggregation)
        feas = (mv.rho + mv.drho < cap * (1 + 1e-6)).all(-1)  # the exact check follows
        used = (xx.sum(-1).astype(jnp.float32) * su[None]).sum(-1)  # [N], as _fits
        room = used[:, None] + su[None, :] <= cu[:, None]  # [N, L]: one more copy of layer l fits
        valid = (feas & (xx | room[..., None])).reshape(-1)
        _, idx = jax.lax.top_k(-jnp.where(valid, mv.dj.reshape(-1), jnp.inf), k)
        vals = jnp.where(valid[idx], jax.vmap(lambda c: _flip_jload(inst, xx, c, p, cap, su, cu, aggregation))(idx), jnp.inf)
        i = jnp.argmin(vals)
        better = vals[i] < j * (1 - 1e-7)  # a strict decrease, beyond float rounding
        nx = jnp.where(better, _flip(xx, idx[i]), xx)
        return nx, jnp.where(better, vals[i], j), moves + better.astype(jnp.int32), better

    j0 = _jload(inst, x, p, cap, aggregation)[0]
    x, _, moves, _ = jax.lax.while_loop(cond, body, (x, j0, moves0, jnp.isfinite(j0)))
    return x, moves


def _flip_jload(inst: Instance, x, c, p, cap, su, cu, aggregation):
    """J_load after flipping bit ``c`` of ``x`` (``inf`` if load-infeasible or an add that does not fit)."""
    xc = _flip(x, c)
    ok = x.reshape(-1)[c] | _fits(xc, su, cu)
    return jnp.where(ok, _jload(inst, xc, p, cap, aggregation)[0], jnp.inf)


def _polish_full_one(inst: Instance, x, cap, su, cu, aggregation, moves, rounds, map_batch):
    """One best-improvement round over *every* single flip, each J_load exact (the check that the
    polish above stopped at a local optimum; when it did not, the best flip is made)."""
    N, L, E = x.shape
    p = activation(inst.patterns, inst.weight, inst.latency.shape[-1])
    j = _jload(inst, x, p, cap, aggregation)[0]
    vals = jax.lax.map(lambda c: _flip_jload(inst, x, c, p, cap, su, cu, aggregation), jnp.arange(N * L * E),
                       batch_size=map_batch)
    c = jnp.argmin(vals)
    better = (vals[c] < j * (1 - 1e-7)) & (moves < rounds)
    return jnp.where(better, _flip(x, c), x), moves + better.astype(jnp.int32), better


@partial(jax.jit, static_argnums=(0,))
def _repair_batch(aggregation, batch, x, cap):
    # mapped, not vmapped: each instance runs its own removals, and the exact tie-breaks of the
    # run only on its steps with a tie (lax.cond; under vmap both branches would run every step)
    return jax.lax.map(lambda a: _repair_one(a[0], a[1], a[2], aggregation), (batch, x, cap))


@partial(jax.jit, static_argnums=(0, 1))
def _polish_batch(aggregation, rounds, batch, x, cap, su, cu, moves):
    return jax.vmap(lambda i, xi, m, s, c, k: _polish_one(i, xi, m, s, c, aggregation, rounds, k))(batch, x, cap, su, cu, moves)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _polish_full_batch(aggregation, rounds, map_batch, batch, x, cap, su, cu, moves):
    return jax.vmap(lambda i, xi, m, s, c, k: _polish_full_one(i, xi, m, s, c, aggregation, k, rounds, map_batch))(
        batch, x, cap, su, cu, moves)


def _polish_chunked(aggregation, rounds, red, x, cap, su, cu, budget, clock):
    """The polish to a local optimum of all single flips (or ``rounds`` moves): the fast rounds,
    then one exhaustive round; while that one still finds a move, the fast rounds again."""
    moves = np.zeros(np.shape(x)[0], np.int32)
    per = _move_bytes(red.shape)
    while True:
        x, moves = _chunked(_polish_batch, (aggregation, rounds), (red, x, cap, su, cu, moves), per, budget, clock)
        if (np.asarray(moves) >= rounds).all():  # the exhaustive round could not move: skip it
            return x, moves
        mb = _full_map_batch(red.shape, budget)
        x, moves, better = _chunked(_polish_full_batch, (aggregation, rounds, mb), (red, x, cap, su, cu, moves),
                                    _full_bytes(red.shape, mb), budget, clock)
        if not np.asarray(better).any():
            return x, moves


def _storage_nodes(batch: Instance) -> tuple:
    """The nodes that can hold some expert in some instance of the batch (only they get moves)."""
    size = np.asarray(batch.size, np.float64)
    fits = size.min(axis=(-1, -2))[:, None] <= storage.limit(size, batch.capacity)
    nodes = tuple(int(n) for n in np.flatnonzero(fits.any(0)))
    return nodes or (0,)


@partial(jax.jit, static_argnums=(0,))
def _evaluate_batch(aggregation, batch, x, cap):
    def one(inst, xi, c):
        p = activation(inst.patterns, inst.weight, inst.latency.shape[-1])
        j, rho = _jload(inst, xi, p, c, aggregation)
        return j, rho, _j_at(inst, xi, jnp.zeros_like(rho), aggregation)

    return jax.vmap(one)(batch, x, cap)


@jax.jit
def _estimate_update(rho_hat, lam, rho_t, cap, damping, price):
    """The damped utilisation estimate and the price after an iteration (module docstring, step 2)."""
    rho_hat = damping * rho_hat + (1 - damping) * rho_t
    lam = lam + price * jnp.maximum(rho_t - cap, 0.0) / jnp.maximum(1 - cap, 1e-6)
    return rho_hat, lam


@jax.jit
def _loaded_batch(batch, rho_hat, lam, cap):
    def one(inst, r, lm, c):
        r = jnp.minimum(r, c)
        extra = inst.service * (r / (1.0 - r) + lm)[:, None, None]  # [N, L, E]
        return inst.latency + extra[None]

    return jax.vmap(one)(batch, rho_hat, lam, cap)


@partial(jax.jit, static_argnums=(0,))
def _take_nodes(nodes, batch):
    idx = np.asarray(nodes)
    return batch.replace(latency=batch.latency[:, :, idx], capacity=batch.capacity[:, idx],
                         service=batch.service[:, idx], validate=False)


def _reduced(batch: Instance, nodes: tuple, clock=None) -> Instance:
    """The batch on the given nodes only. Exact for placements without copies elsewhere: a node
    without copies serves nobody, so J_load, rho of the kept nodes and every move are unchanged.
    (A program through the compile cache: its first compile is timed into ``clock``.)"""
    from slimjax import _compile

    if len(nodes) == batch.latency.shape[2]:
        return batch
    return _compile.call(_take_nodes, (tuple(nodes),), (batch,), clock)


def _embed(x, nodes: tuple, part):
    """``x`` [B, N, L, E] with its ``nodes`` replaced by ``part`` [B, len(nodes), L, E]."""
    full = np.array(x, bool)
    full[:, np.asarray(nodes)] = np.asarray(part)
    return full


def _move_bytes(shape) -> float:
    """Working set (bytes) of one instance in the repair or the polish program: the flip scores
    (about a dozen [U, N, L, E] arrays, the pattern gathers of every (node, layer), the [N, L, E, N]
    utilisation changes) and the exact evaluation of the best flips. Checked against XLA's
    ``memory_analysis`` in tests/test_load_aware.py."""
    U, N, L, E, M, K = shape
    k = max(_moves.EXACT, POLISH_EXACT)
    return 4.0 * (16 * U * N * L * E + 8 * U * N * L * M * K + 3 * N * L * E * N
                  + k * (4 * U * N * L * E + 3 * U * L * M * K) + 4 * U * L * M * K)


def _full_bytes(shape, map_batch: int) -> float:
    """Working set (bytes) of one instance in the exhaustive polish round (``map_batch`` exact
    evaluations at a time)."""
    U, N, L, E, M, K = shape
    return 4.0 * (map_batch * (4 * U * N * L * E + 3 * U * L * M * K) + 4 * U * L * M * K)


def _full_map_batch(shape, budget: float) -> int:
    """Exact evaluations at a time in the exhaustive round: :data:`_MAP_BATCH`, fewer when one
    instance would not fit ``budget`` with them."""
    mb = _MAP_BATCH
    while mb > 1 and _full_bytes(shape, mb) > budget:
        mb //= 2
    return mb


def _eval_bytes(shape) -> float:
    """Working set (bytes) of one instance in the evaluation programs (J_load, utilisation)."""
    U, N, L, E, M, K = shape
    return 4.0 * (8 * U * N * L * E + 6 * U * L * M * K + 8 * U * L * E * (N + 1))


def _chunked(fn, static, args, per_instance: float, budget: float, clock):
    """``fn(*static, *args)`` over chunks of the batch that fit ``budget`` bytes (host results)."""
    return _batching.map_chunks(fn, static, args, max(1, int(budget // max(per_instance, 1.0))), clock)


def repair(inst: Instance, placement, *, max_utilization: float = 0.95, aggregation: str = "max",
           memory_budget_mb: float | str = "auto"):
    """The load-feasibility repair of :class:`LoadAware` on one instance or a batch.

    Removes copies from nodes with ``rho[n] ≥ max_utilization`` until none is left; returns the
    placement (same shape). A placement that is already load-feasible comes back unchanged.
    """
    batched, inst, x = _as_batch(inst, placement)
    nodes = _storage_nodes(inst)
    red = _reduced(inst, nodes)
    cap = np.asarray(max_utilization, np.dtype(inst.latency.dtype))
    budget = _batching.memory_budget_bytes(memory_budget_mb)
    out, _ = _chunked(_repair_batch, (aggregation,), (red, x[:, np.asarray(nodes)], _bcast(cap, x)),
                      _move_bytes(red.shape), budget, None)
    out = _embed(x, nodes, out)
    return out if batched else out[0]


def load_polish(inst: Instance, placement, *, rounds: int = 16, max_utilization: float = 0.95,
                aggregation: str = "max", memory_budget_mb: float | str = "auto"):
    """The J_load flip polish of :class:`LoadAware` on one instance or a batch (never increases
    J_load; a load-feasible start stays load-feasible)."""
    batched, inst, x = _as_batch(inst, placement)
    nodes = _storage_nodes(inst)
    red = _reduced(inst, nodes)
    cap = np.asarray(max_utilization, np.dtype(inst.latency.dtype))
    su, cu = _grid_room(inst, None, nodes)
    budget = _batching.memory_budget_bytes(memory_budget_mb)
    out, _ = _polish_chunked(aggregation, int(rounds), red, x[:, np.asarray(nodes)], _bcast(cap, x), su, cu, budget, None)
    out = _embed(x, nodes, out)
    return out if batched else out[0]


def _bcast(value, x):
    """A scalar as one value per instance (the chunked programs split every argument)."""
    return np.full(np.shape(x)[:1], value, np.asarray(value).dtype)


def _as_batch(inst, placement):
    from slimjax._instance import is_batched

    if not isinstance(inst, Instance) or not inst.has_load:
        raise ValueError("inst: needs an instance with a load model (fields service and rate)")
    x = np.asarray(placement).astype(bool)
    if is_batched(inst):
        return True, inst, x
    return False, jax.tree_util.tree_map(lambda a: a[None], inst), x[None]


#: flips evaluated exactly per polish round (the repair evaluates :data:`_load_moves.EXACT`)
POLISH_EXACT = 32
#: flips evaluated together in the exhaustive polish round
_MAP_BATCH = 64


@document_options
@dataclasses.dataclass(frozen=True)
class LoadAware(Solver):
    """An inner solver made load-aware: minimises J_load under ``rho[n] < max_utilization``.

    The damped fixed-point iteration on the utilisation estimate, a Lagrangian price on the
    utilisation of over-cap nodes, the repair and the J_load flip polish of the module
    docstring (:mod:`slimjax.solvers._load_aware`). Needs instances with ``service`` and ``rate``.
    Status: feasible (a heuristic), or that of the inner solver if it failed.
    """

    inner: Any = option(None, "the solver made load-aware (a solver object or a chain)")
    max_utilization: float = option(0.95, "cap: every node's utilisation stays below it, in (0, 1]")
    load_iterations: int = option(6, "fixed-point iterations after the load-blind one (int >= 0)")
    load_damping: float = option(0.5, "weight of the previous utilisation estimate, in [0, 1)")
    load_price: float = option(1.0, "step of the utilisation price of over-cap nodes (>= 0; 0 = no price)")
    load_polish: int = option(16, "rounds of J_load flip polish of the best placement (int >= 0)")
    load_warm_start: bool = option(False, "iterations after the load-blind one run only the inner chain's later stages "
                                   "(its polish), started from the previous iteration's placement")
    jax_native: ClassVar[bool] = False
    #: ``solve`` reports J_load as the objective of this solver
    load_objective: ClassVar[bool] = True
    #: ``solve`` passes ``memory_budget_mb`` (bytes) to :meth:`host_solve`: every program runs in chunks within it
    memory_budgeted: ClassVar[bool] = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "name", "?")

    def validate(self) -> None:
        if not isinstance(self.inner, Solver) or isinstance(self.inner, LoadAware):
            raise ValueError(f"inner: expected a solver object (not a load-aware one), got {self.inner!r}")
        check_float("max_utilization", self.max_utilization, 0.0, 1.0, open_lo=True)
        check_int("load_iterations", self.load_iterations, 0)
        check_float("load_damping", self.load_damping, 0.0, 1.0)
        if self.load_damping >= 1.0:
            raise ValueError(f"load_damping: must be in [0, 1), got {self.load_damping!r}")
        check_float("load_price", self.load_price, 0.0)
        check_int("load_polish", self.load_polish, 0)
        if not isinstance(self.load_warm_start, bool):
            raise ValueError(f"load_warm_start: must be a bool, got {self.load_warm_start!r}")

    def replace(self, **changes) -> "LoadAware":
        """Load options change this object; every other option goes to the inner solver."""
        mine = {k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(self)}}
        rest = {k: v for k, v in changes.items() if k not in mine}
        inner = mine.pop("inner", self.inner)
        if rest:
            inner = inner.replace(**rest)
        return dataclasses.replace(self, inner=inner, **mine)

    def host_solve(self, batch, grid, keys, aggregation, start, clock, budget=None):
        from slimjax import _compile

        if not batch.has_load:
            raise ValueError("load: load=True needs instances with a load model (fields service and rate); "
                             "generate them with network={'load': 0.3} or pass service=... and rate=...")
        # every program runs through _compile.call with the clock (host arrays in, no eager jnp op:
        # each would compile on its first shape outside compile_seconds), in chunks within the budget
        budget = _batching.memory_budget_bytes("auto") if budget is None else float(budget)
        dt = np.dtype(batch.latency.dtype)
        B, N = batch.latency.shape[0], batch.latency.shape[2]
        cap = np.full(B, self.max_utilization, dt)
        thr = float(np.asarray(self.max_utilization, dt)) * (1 - 1e-6)  # as the repair's
        rho_hat = np.zeros((B, N), dt)
        lam = np.zeros((B, N), dt)
        best_x = best_j = None
        best_it = np.zeros(B, np.int64)
        best_rep = np.zeros(B, np.int64)
        status = np.full(B, Status.FEASIBLE, np.int8)
        blind = None
        nodes = _storage_nodes(batch)  # moves only there, on the batch reduced to these nodes
        ev = _eval_bytes(batch.shape)
        red = None
        for it in range(self.load_iterations + 1):
            if it == 0:
                work = batch
            else:
                loaded = _chunked(_loaded_batch, (), (batch, rho_hat, lam, cap), ev, budget, clock)
                work = batch.replace(latency=loaded)
            stages = self.inner.stages()
            if it > 0 and self.load_warm_start and len(stages) > 1:  # the later stages from the previous iterate
                x, st = _run_stages(stages[1:], work, grid, keys, aggregation, x_prev, clock, budget)
            else:
                x, st = _run_stages(stages, work, grid, keys, aggregation, start, clock, budget)
            x_prev = x
            status = np.where(st == Status.FAILED, Status.FAILED, status).astype(np.int8)
            x = np.asarray(x, bool)
            x, j, rho_t, removed, red = _repaired(batch, x, nodes, red, cap, thr, aggregation, ev, budget, clock)
            if it == 0:
                best_x, best_j, blind = x, j, j.copy()
                best_rep = removed
            else:
                better = j < best_j
                best_x = np.where(better[:, None, None, None], x, best_x)
                best_j = np.where(better, j, best_j)
                best_it = np.where(better, it, best_it)
                best_rep = np.where(better, removed, best_rep)
            upd = _compile.call(_estimate_update, (), (rho_hat, lam, np.asarray(rho_t), np.asarray(self.max_utilization, dt), np.asarray(self.load_damping, dt),
                                                       np.asarray(self.load_price, dt)), clock)
            rho_hat, lam = (np.asarray(a) for a in upd)
        best_x, moves = _polish_best(batch, grid, best_x, nodes, red, cap, aggregation, int(self.load_polish), ev,
                                     budget, clock)
        j, rho, j0 = _chunked(_evaluate_batch, (aggregation,), (batch, np.asarray(best_x, bool), cap), ev, budget, clock)
        info = {
            "load_objective": np.asarray(j, np.float64),
            "unloaded": np.asarray(j0, np.float64),
            "utilization": np.asarray(rho, np.float64),
            "blind": blind,
            "best_iteration": best_it,
            "repairs": best_rep,
            "polish_moves": np.asarray(moves, np.int64),
        }
        return np.asarray(best_x, bool), info, status


def _reduced_once(red, batch: Instance, nodes: tuple, ev: float, budget: float, clock):
    """``red`` if built, else the batch on the storage ``nodes`` only (the batch itself when that is all)."""
    if red is not None:
        return red
    if len(nodes) == batch.latency.shape[2]:
        return batch
    return _chunked(_take_nodes, (nodes,), (batch,), ev, budget, clock)


def _repaired(batch: Instance, x, nodes: tuple, red, cap, thr: float, aggregation, ev: float, budget: float, clock):
    """An iterate, repaired where a node is at the cap; (x, J_load [B], unrepaired rho [B, N], removed [B], red)."""
    B = batch.latency.shape[0]
    idx = np.asarray(nodes)
    j, rho_t, _ = _chunked(_evaluate_batch, (aggregation,), (batch, x, cap), ev, budget, clock)
    removed = np.zeros(B, np.int64)
    if (np.asarray(rho_t) >= thr).any():  # else nothing to repair
        red = _reduced_once(red, batch, nodes, ev, budget, clock)
        xr, removed = _chunked(_repair_batch, (aggregation,), (red, np.ascontiguousarray(x[:, idx]), cap),
                               _move_bytes(red.shape), budget, clock)
        x = _embed(x, nodes, xr)
        j, _, _ = _chunked(_evaluate_batch, (aggregation,), (batch, x, cap), ev, budget, clock)
    j, removed = np.asarray(j, np.float64), np.asarray(removed, np.int64)
    return x, j, rho_t, removed, red


def _polish_best(batch: Instance, grid, best_x, nodes: tuple, red, cap, aggregation, rounds: int, ev: float,
                 budget: float, clock):
    """The J_load polish (step 3; none when ``rounds`` is 0) of the kept placement; (x, moves [B])."""
    moves = np.zeros(batch.latency.shape[0], np.int64)
    if rounds > 0:
        red = _reduced_once(red, batch, nodes, ev, budget, clock)
        su, cu = _grid_room(batch, grid, nodes)
        part = np.ascontiguousarray(best_x[:, np.asarray(nodes)])
        px, moves = _polish_chunked(aggregation, rounds, red, part, cap, su, cu, budget, clock)
        best_x = _embed(best_x, nodes, px)
    return best_x, moves


def _run_stages(stages, work: Instance, grid, keys, aggregation, start, clock, budget: float):
    """``stages`` (of the inner solver) on ``work`` from ``start``, as ``solve_batch`` runs them;
    (placement, status [B])."""
    B = work.latency.shape[0]
    x = start
    status = np.full(B, Status.FEASIBLE, np.int8)
    for stage in stages:
        if stage.jax_native:
            prepared = stage.prepare(work, grid, aggregation)
            check = getattr(stage, "check_memory", None)
            if check is not None:
                check(work.shape, prepared.static, budget, grid)
            x, _ = _batching.run(stage, prepared, work, grid, keys, x, chunk_size=None, memory_budget_mb=budget / 2**20,
                                 progress=False, clock=clock)
        else:
            x, _, st = stage.host_solve(work, grid, keys, aggregation, x, clock)
            status = np.where(np.asarray(st) == Status.FAILED, Status.FAILED, status).astype(np.int8)
        x = np.asarray(x)
    return x, status
