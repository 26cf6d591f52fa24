"""Exact references: ``brute-force`` and ``milp`` (HiGHS).

Both work in **real** storage units (not the rounded grid) under slimjax's one storage contract
(:mod:`slimjax._storage`): brute force enumerates exactly the placements :func:`slimjax.feasible`
accepts; the MILP's storage rows are the contract's limit less HiGHS's feasibility tolerance.

``brute-force`` enumerates every placement (``N·L·E ≤ 20``) as bit masks in jitted chunks.

``milp`` solves, with HiGHS through ``highspy`` (extra ``slimjax[milp]``)::

    min  Σ_{u,l,S} traffic[u] · w[u,l,S] · y[u,l,S]
    s.t. y[u,l,S] ≥ t[u,l,e]                      for every member e of the pattern set S  (max)
         t[u,l,e] = fallback − Σ_n (fallback − latency[u,n,l,e]) · a[u,l,e,n]
         Σ_n a[u,l,e,n] ≤ 1,   0 ≤ a[u,l,e,n] ≤ x[n,l,e]   (the rest goes to the fallback)
         Σ_{l,e} size[l,e] · x[n,l,e] ≤ capacity[n],   x binary

(``t`` is substituted, not a variable). ``a`` is the assignment of user u's expert (l, e) to a
node, written with the fallback as the implicit remainder (equivalent to ``Σ a = 1`` over
reachable nodes + fallback). Identical patterns are merged (as sets of distinct members), zero
weights skipped, and ``x`` / ``a`` exist only where a node is reachable, faster than the fallback,
and the expert is ever activated, so models stay small. For ``aggregation="sum"`` the objective is
``Σ traffic·w·Σ_k t`` directly (no y). Its LP relaxation is the ``"highs"`` / ``"lp"`` bound of
:func:`slimjax.lower_bound` (built there over a superset of the contract's placements).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from slimjax import _compile, _highs
from slimjax import _storage as storage
from slimjax._instance import Instance
from slimjax._kernels import load_terms
from slimjax._objective import objective_from_d
from slimjax.solvers._base import Solver, Status, check_float, check_int, document_options, option

__all__ = ["BruteForce", "MILP", "MAX_BRUTE_FORCE", "brute_force_instance", "brute_force_load_instance",
           "milp_instance", "node_tables"]

#: Largest N·L·E that ``brute-force`` accepts (2^20 placements).
MAX_BRUTE_FORCE = 20


# ----------------------------------------------------------------------------------------------
# brute force
# ----------------------------------------------------------------------------------------------


def node_tables(batch: Instance) -> np.ndarray:
    """bool [..., N, 2^(L·E)]: whether node n's storage holds the subset ``mask`` of the experts
    (bit ``l·E + e``), by the storage contract itself (:func:`slimjax._storage.fits`, float64 on the
    host), so that brute force enumerates exactly the placements :func:`slimjax.feasible` accepts."""
    size = np.asarray(batch.size, np.float64)
    lead = size.shape[:-2]
    L, E = size.shape[-2:]
    n = L * E
    if n > MAX_BRUTE_FORCE:
        raise ValueError(f"brute-force: L·E = {n} > {MAX_BRUTE_FORCE}; use method='milp' for larger instances")
    lim = storage.limit(size, batch.capacity)  # [..., N]
    bit = np.arange(n)
    out = np.empty(lead + (lim.shape[-1], 1 << n), bool)
    step = 1 << 14
    for c0 in range(0, 1 << n, step):  # chunks of subsets (host memory), not a loop over instances
        masks = np.arange(c0, min(c0 + step, 1 << n))
        X = ((masks[:, None] >> bit[None]) & 1).astype(bool).reshape(-1, 1, L, E)  # [S, 1, L, E]
        used = storage.used(size[..., None, :, :], X)[..., 0]  # [..., S]
        out[..., c0 : c0 + len(masks)] = used[..., None, :] <= lim[..., :, None]
    return out


def _enumerate_best(inst: Instance, table, value):
    """The placement of least ``value(x)`` over all 2^(N·L·E) placements of one instance that the
    storage contract accepts (``table``: :func:`node_tables` of the instance; ``value``: placement
    bool [N, L, E] -> scalar), in chunks of 4096 masks under ``lax.map``.

    Returns:
      (placement bool [N, L, E], its value).
    """
    U, N, L, E = inst.latency.shape
    n = N * L * E
    if n > MAX_BRUTE_FORCE:
        raise ValueError(f"brute-force: N·L·E = {n} > {MAX_BRUTE_FORCE}; use method='milp' for larger instances")
    chunk = 1 << min(n, 12)
    nchunks = (1 << n) // chunk
    bit = jnp.arange(n, dtype=jnp.int32)
    le = L * E
    nodes = jnp.arange(N, dtype=jnp.int32)

    def evaluate(c):
        masks = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        x = ((masks[:, None] >> bit[None, :]) & 1).astype(bool).reshape(chunk, N, L, E)
        sub = (masks[:, None] >> (nodes[None, :] * le)) & ((1 << le) - 1)  # [chunk, N] each node's subset
        ok = table[nodes[None, :], sub].all(-1)
        vals = jnp.where(ok, jax.vmap(value)(x), jnp.inf)
        b = jnp.argmin(vals)
        return vals[b], masks[b]

    vals, masks = jax.lax.map(evaluate, jnp.arange(nchunks, dtype=jnp.int32))
    b = jnp.argmin(vals)
    x = ((masks[b] >> bit) & 1).astype(bool).reshape(N, L, E)
    return x, vals[b]


def _brute_one(inst: Instance, table, aggregation: str):
    def J(x):
        d = jnp.minimum(inst.fallback, jnp.where(x[None], inst.latency, jnp.inf).min(axis=1))
        return objective_from_d(inst, d, aggregation)

    return _enumerate_best(inst, table, J)


def _brute_load_one(inst: Instance, table, m, aggregation: str):
    def J(x):
        return load_terms(inst.latency, inst.fallback, inst.service, inst.rate, inst.patterns, inst.weight,
                          inst.traffic, x, m, aggregation).objective

    return _enumerate_best(inst, table, J)


_BRUTE_ONE = jax.jit(_brute_one, static_argnums=2)
_BRUTE_LOAD_ONE = jax.jit(_brute_load_one, static_argnums=3)


def brute_force_instance(inst: Instance, *, aggregation: str = "max"):
    """Exact optimum of one instance by enumerating all 2^(N·L·E) placements (those that
    :func:`slimjax.feasible` accepts; the empty placement always is).

    Returns:
      (placement bool [N, L, E], J scalar).
    """
    return _BRUTE_ONE(inst, jnp.asarray(node_tables(inst)), aggregation)


def brute_force_load_instance(inst: Instance, max_utilization=0.95, *, aggregation: str = "max"):
    """Exact J_load optimum of one instance over all 2^(N·L·E) placements that
    :func:`slimjax.feasible` accepts (load-infeasible ones excluded: the empty placement is always
    load-feasible).

    Returns:
      (placement bool [N, L, E], J_load scalar).
    """
    m = jnp.asarray(max_utilization, inst.latency.dtype)
    return _BRUTE_LOAD_ONE(inst, jnp.asarray(node_tables(inst)), m, aggregation)


def _check_load(solver, batch: Instance) -> None:
    if solver.load and not batch.has_load:
        raise ValueError("load: load=True needs instances with a load model (fields service and rate); "
                         "generate them with network={'load': 0.3} or pass service=... and rate=...")


_BRUTE_LOAD = jax.jit(lambda aggregation, batch, tables, m: jax.lax.map(
    lambda a: _brute_load_one(a[0], a[1], m, aggregation), (batch, tables)), static_argnums=0)


def _check_brute(batch: Instance) -> None:
    N, L, E = batch.latency.shape[-3:]
    if N * L * E > MAX_BRUTE_FORCE:
        raise ValueError(
            f"brute-force: refuses instances with N·L·E > {MAX_BRUTE_FORCE} (got N={N}, L={L}, E={E}, "
            f"N·L·E={N * L * E}: 2^{N * L * E} placements); use method='milp'"
        )


_BRUTE = jax.jit(lambda aggregation, batch, tables: jax.lax.map(lambda a: _brute_one(a[0], a[1], aggregation),
                                                                  (batch, tables)), static_argnums=0)


@document_options
@dataclasses.dataclass(frozen=True)
class BruteForce(Solver):
    """Exact optimum by enumerating all 2^(N·L·E) placements (N·L·E <= 20; for tests and checks).

    Works in real storage units (the tolerance of the feasibility check). Status: optimal.
    With ``load=True`` (``solve(inst, "brute-force", load=True)``) it minimises J_load over the
    load-feasible placements (the reference of the load-aware solvers).
    """

    name: ClassVar[str] = "brute-force"
    exact: ClassVar[bool] = True
    jax_native: ClassVar[bool] = False
    load: bool = option(False, "minimise J_load over the load-feasible placements instead of J")
    max_utilization: float = option(0.95, "with load: the utilisation cap, rho[n] < max_utilization, in (0, 1]")

    @property
    def load_objective(self) -> bool:
        return self.load

    def validate(self) -> None:
        if not isinstance(self.load, bool):
            raise ValueError(f"load: must be a bool, got {self.load!r}")
        check_float("max_utilization", self.max_utilization, 0.0, 1.0, open_lo=True)

    def host_solve(self, batch, grid, keys, aggregation, start, clock):
        _check_brute(batch)
        _check_load(self, batch)
        tables = jnp.asarray(node_tables(batch))  # the storage contract, float64 on the host
        if self.load:
            m = jnp.asarray(self.max_utilization, batch.latency.dtype)
            xs, Js = _compile.call(_BRUTE_LOAD, (aggregation,), (batch, tables, m), clock)
        else:
            xs, Js = _compile.call(_BRUTE, (aggregation,), (batch, tables), clock)
        B = batch.latency.shape[0]
        return np.asarray(xs), {"bound": np.asarray(Js, np.float64)}, np.full(B, Status.OPTIMAL, np.int8)


# ----------------------------------------------------------------------------------------------
# MILP / LP on HiGHS
# ----------------------------------------------------------------------------------------------


def _distinct_activation(pat, w):
    """p[u, l, e] = Σ_m w[u, l, m] · [e ∈ pattern m] (distinct members), NumPy."""
    U, L, M, K = pat.shape
    E_max = int(pat.max()) + 1 if pat.size else 1
    p = np.zeros((U, L, max(E_max, 1)))
    for u in range(U):
        for l in range(L):
            for m in range(M):
                for e in set(int(v) for v in pat[u, l, m]):
                    p[u, l, e] += w[u, l, m]
    return p


def _activation_counts(pat, w, E: int):
    """a[u, l, e] = Σ_m w[u, l, m] · (times e occurs in pattern m), NumPy float64 [U, L, E]."""
    U, L, K = pat.shape[0], pat.shape[1], pat.shape[3]
    act = np.zeros((U, L, E))
    for k in range(K):
        np.add.at(act, (np.arange(U)[:, None, None], np.arange(L)[None, :, None], pat[..., k]), w)
    return act


def _assignment_rows(mdl, useful, xcol):
    """Columns a[u, n, l, e] (-1 where not useful) with rows a <= x and Σ_n a <= 1; (acol, nonzero(useful))."""
    U, N, L, E = useful.shape
    # assignment variables a[u, n, l, e] <= x[n, l, e]; sum_n a <= 1
    acol = np.full((U, N, L, E), -1, np.int64)
    acol[useful] = mdl.cols(int(useful.sum()))
    uu, nn, ll, ee = np.nonzero(useful)
    link = mdl.rows(len(uu), -np.inf, 0.0)
    mdl.coef(link, acol[uu, nn, ll, ee], 1.0)
    mdl.coef(link, xcol[nn, ll, ee], -1.0)
    any_a = useful.any(1)  # [U, L, E]
    au, al, ae = np.nonzero(any_a)
    assign = np.full((U, L, E), -1, np.int64)
    assign[any_a] = mdl.rows(len(au), -np.inf, 1.0)
    mdl.coef(assign[uu, ll, ee], acol[uu, nn, ll, ee], 1.0)
    return acol, (uu, nn, ll, ee)


def _storage_rows(mdl, size, cap, has_x, xcol) -> None:
    """One storage row per node: the storage contract in units of the smallest size, less a margin."""
    N = xcol.shape[0]
    xn, xl, xe = np.nonzero(has_x)
    # The storage contract (slimjax._storage) in units of the smallest size, less a margin above
    # HiGHS's feasibility tolerance (_HIGHS_FEAS_TOL on the row activity), so that what HiGHS accepts the
    # contract accepts too; solve() checks the rounded placement with the contract again.
    unit = float(size.min())
    lim = storage.limit(size, cap) / unit
    store = mdl.rows(N, -np.inf, np.maximum(lim - _HIGHS_TOL, 0.0))
    mdl.coef(store[xn], xcol[xn, xl, xe], size[xl, xe] / unit)


def _sum_objective(mdl, pat, w, tr, fb, saving, acol, nz) -> float:
    """"sum": the cost −act·saving on the assignment columns; returns the constant Σ act·fb."""
    uu, nn, ll, ee = nz
    # J = Σ act·t = Σ act·fb − Σ act·saving·a  (act counts repeated ids; recompute with multiplicity)
    mult = _activation_counts(pat, w, fb.shape[-1])
    mult *= tr[:, None, None]
    offset = float((mult * fb).sum())
    cost = np.zeros(mdl.ncol)
    np.add.at(cost, acol[uu, nn, ll, ee], -(mult[uu, ll, ee] * saving[uu, nn, ll, ee]))
    mdl.cost = [cost]
    return offset


def _max_objective(mdl, pat, w, tr, fb, useful, saving, acol) -> None:
    """"max": one y per distinct member set per (u, l), with y + Σ_n saving·a ≥ fb for each member."""
    U, L, M = pat.shape[:3]
    cost_x = np.zeros(mdl.ncol)
    mdl.cost = [cost_x]
    sets: dict = {}
    for u in range(U):
        for l in range(L):
            for m in range(M):
                if w[u, l, m] <= 0:
                    continue
                key = (u, l, tuple(sorted(set(int(e) for e in pat[u, l, m]))))
                sets[key] = sets.get(key, 0.0) + tr[u] * w[u, l, m]
    keys = list(sets)
    ycol = mdl.cols(len(keys), cost=np.array([sets[k] for k in keys]), lo=0.0, hi=np.inf)
    for (u, l, members), y in zip(keys, ycol):
        for e in members:
            # y + Σ_n saving·a ≥ fb
            r = mdl.rows(1, fb[u, l, e], np.inf)
            mdl.coef(r, y, 1.0)
            ns = np.nonzero(useful[u, :, l, e])[0]
            if len(ns):
                mdl.coef(np.repeat(r, len(ns)), acol[u, ns, l, e], saving[u, ns, l, e])


def _build(inst_np: dict, aggregation: str, max_utilization=None):
    """The MILP of one instance (NumPy fields, float64). Returns (model, x column index [N, L, E] or -1, offset).

    With ``max_utilization`` (the load cap; needs ``service`` and ``rate`` in ``inst_np``) the
    assignment is forced to be the fastest cached copy (ties to the lowest index, as the load
    model) and every node's utilisation, linear in it, is kept below the cap.
    """
    lat, fb = inst_np["latency"], inst_np["fallback"]
    size, cap = inst_np["size"], inst_np["capacity"]
    pat, w, tr = inst_np["patterns"], inst_np["weight"], inst_np["traffic"]
    N, L, E = lat.shape[1:]
    # activation probability of each expert per (u, l)
    act = _activation_counts(pat, w, E)
    if max_utilization is not None:  # a user without traffic still loads the nodes it uses
        useful = (lat < fb[:, None]) & (act[:, None] > 0)
    act *= tr[:, None, None]
    if max_utilization is None:
        useful = (lat < fb[:, None]) & (act[:, None] > 0)  # [U, N, L, E]
    mdl = _highs.Model()  # the model builder shared with the HiGHS bounds
    has_x = useful.any(0)  # [N, L, E]
    xcol = np.full((N, L, E), -1, np.int64)
    xcol[has_x] = mdl.cols(int(has_x.sum()), integer=True)
    acol, nz = _assignment_rows(mdl, useful, xcol)
    _storage_rows(mdl, size, cap, has_x, xcol)
    if max_utilization is not None:
        _load_rows(mdl, inst_np, useful, xcol, acol, float(max_utilization))
    saving = np.where(useful, fb[:, None] - np.where(np.isfinite(lat), lat, 0.0), 0.0)  # [U, N, L, E]
    if aggregation == "sum":
        return mdl, xcol, _sum_objective(mdl, pat, w, tr, fb, saving, acol, nz)
    # "max": one y per distinct member set per (u, l)
    _max_objective(mdl, pat, w, tr, fb, useful, saving, acol)
    return mdl, xcol, 0.0


def _load_rows(mdl, inst_np, useful, xcol, acol, max_utilization):
    """Fastest-copy assignment and the utilisation cap (linear in the assignment).

    For every user u, expert (l, e) and useful node n (in the order of ``latency[u, ·, l, e]``,
    ties to the lower index): ``a[u, n] ≥ x[n] − Σ_{n' before n} x[n']`` — with ``a ≤ x`` and
    ``Σ_n a ≤ 1`` this makes ``a`` the one-hot of the fastest cached useful node, as the load model
    assigns. Then ``Σ_{u,l,e} rate[u]·p[u,l,e]·service[n,l,e]·a[u,n,l,e] ≤ max_utilization·(1 − 1e-6)``.
    """
    lat, svc, rate = inst_np["latency"], inst_np["service"], inst_np["rate"]
    U, N, L, E = lat.shape
    p = _distinct_activation(inst_np["patterns"], inst_np["weight"])[:, :, :E]
    for u, l, e in zip(*np.nonzero(useful.any(1))):
        ns = np.nonzero(useful[u, :, l, e])[0]
        ns = ns[np.lexsort((ns, lat[u, ns, l, e]))]
        for i, n in enumerate(ns):
            r = mdl.rows(1, 0.0, np.inf)  # a[n] − x[n] + Σ_{before} x ≥ 0
            mdl.coef(r, acol[u, n, l, e], 1.0)
            mdl.coef(r, xcol[n, l, e], -1.0)
            if i:
                mdl.coef(np.repeat(r, i), xcol[ns[:i], l, e], 1.0)
    uu, nn, ll, ee = np.nonzero(useful)
    load = rate[uu] * p[uu, ll, ee] * svc[nn, ll, ee]
    keep = load > 0
    rows = mdl.rows(N, -np.inf, max_utilization * (1 - 1e-6))
    mdl.coef(rows[nn[keep]], acol[uu[keep], nn[keep], ll[keep], ee[keep]], load[keep])


def _np_instance(inst: Instance) -> dict:
    out = {f: np.asarray(getattr(inst, f), np.int64 if f == "patterns" else np.float64) for f in
           ("latency", "fallback", "size", "capacity", "patterns", "weight", "traffic")}
    if inst.has_load:
        out["service"] = np.asarray(inst.service, np.float64)
        out["rate"] = np.asarray(inst.rate, np.float64)
    return out


#: HiGHS's feasibility tolerances for the MILP (set below), and the margin kept off the storage rows
#: (in units of the smallest size; far below the contract's 1e-6 relative slack)
_HIGHS_FEAS_TOL = 1e-9
_HIGHS_TOL = 1e-8


def _solve_highs(inst: Instance, aggregation: str, relax: bool, time_limit, mip_rel_gap, threads, verbose,
                 max_utilization=None):
    mdl, xcol, offset = _build(_np_instance(inst), aggregation, max_utilization)
    h = _highs.new_highs(time_limit, threads, verbose)
    if not relax:
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        h.setOptionValue("mip_abs_gap", 1e-9)
        h.setOptionValue("mip_feasibility_tolerance", _HIGHS_FEAS_TOL)
        h.setOptionValue("primal_feasibility_tolerance", _HIGHS_FEAS_TOL)
    t0 = time.perf_counter()
    status = _highs.run(h, mdl, relax, offset)
    secs = time.perf_counter() - t0
    info = h.getInfo()
    return h, xcol, status, info, secs


def milp_instance(inst: Instance, *, aggregation="max", time_limit=None, mip_rel_gap=1e-6, threads=None, verbose=False,
                  max_utilization=None):
    """Solve one instance with HiGHS. Returns (placement bool [N, L, E], info dict).

    ``max_utilization`` (needs the load model): minimise the unloaded J subject to every node's
    utilisation below the cap (exact linear constraints on the fastest-copy assignment).
    """
    N, L, E = inst.latency.shape[-3:]
    h, xcol, status, info, secs = _solve_highs(inst, aggregation, False, time_limit, mip_rel_gap, threads, verbose,
                                               max_utilization)
    x = np.zeros((N, L, E), bool)
    if info.primal_solution_status == 2:  # kSolutionStatusFeasible
        vals = np.asarray(h.getSolution().col_value)
        has = xcol >= 0
        x[has] = vals[xcol[has]] > 0.5
        objective = float(info.objective_function_value)
    else:
        objective = np.inf
    bound = float(info.mip_dual_bound)
    gap = float(info.mip_gap) if np.isfinite(objective) else np.inf
    if status == "Optimal" and not (xcol >= 0).any():  # no integer column: HiGHS solved an LP, no MIP bound
        bound, gap = objective, 0.0
    if status == "Empty":  # no variable at all (no copy helps any user): caching nothing is optimal
        v = _np_instance(inst)
        fb = np.take_along_axis(v["fallback"][:, :, None, :], v["patterns"], axis=-1)  # [U, L, M, K]
        pl = fb.max(-1) if aggregation == "max" else fb.sum(-1)
        objective = bound = float((v["traffic"][:, None, None] * v["weight"] * pl).sum())
        gap = 0.0
    return x, {
        "status": status,
        "objective": objective,
        "bound": bound,
        "gap": gap,
        "nodes": int(info.mip_node_count),
        "solver_seconds": secs,
    }


def _milp_status(info: dict) -> int:
    has = np.isfinite(info["objective"])
    if info["status"] in ("Optimal", "Empty") and has:
        return Status.OPTIMAL
    if not has:
        return Status.FAILED
    if info["status"] == "Time limit reached":
        return Status.TIME_LIMIT
    return Status.FEASIBLE


@document_options
@dataclasses.dataclass(frozen=True)
class MILP(Solver):
    """The exact MILP on HiGHS (needs the ``milp`` extra: ``pip install 'slimjax[milp]'``).

    Per instance: status ``optimal`` when HiGHS proves optimality (within ``mip_rel_gap``),
    ``time-limit`` when it stops at ``time_limit`` with an incumbent (the placement is that
    incumbent; ``info["bound"]`` is HiGHS's dual bound), ``failed`` when it has no incumbent (then
    the placement is empty and not a result: ``solve`` raises unless ``throw=False``). ``info``:
    ``highs_status`` (HiGHS's words), ``incumbent`` (HiGHS's objective value, inf without one; at
    a time limit it can exceed the placement's exact J, which is what ``objective`` reports), ``bound``,
    ``gap`` (relative, HiGHS's definition), ``nodes``, ``solver_seconds``.
    """

    name: ClassVar[str] = "milp"
    exact: ClassVar[bool] = True
    jax_native: ClassVar[bool] = False
    time_limit: Any = option(600.0, "seconds per instance (> 0), or None for no limit")
    mip_rel_gap: float = option(1e-6, "relative gap at which HiGHS stops and calls the incumbent optimal (>= 0)")
    threads: Any = option(None, "HiGHS threads (int >= 1), or None for HiGHS's default")
    verbose: bool = option(False, "print HiGHS's log")
    load: bool = option(False, "keep every node's utilisation below max_utilization (exact linear constraints; "
                        "the objective stays the unloaded J, the reported one is J_load)")
    max_utilization: float = option(0.95, "with load: the utilisation cap, rho[n] < max_utilization, in (0, 1]")

    @property
    def load_objective(self) -> bool:
        return self.load

    def validate(self) -> None:
        if not isinstance(self.load, bool):
            raise ValueError(f"load: must be a bool, got {self.load!r}")
        check_float("max_utilization", self.max_utilization, 0.0, 1.0, open_lo=True)
        check_float("time_limit", self.time_limit, 0.0, open_lo=True, none=True)
        check_float("mip_rel_gap", self.mip_rel_gap, 0.0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        if not isinstance(self.verbose, bool):
            raise ValueError(f"verbose: must be a bool, got {self.verbose!r}")

    def host_solve(self, batch, grid, keys, aggregation, start, clock):
        _highs.highspy()
        _check_load(self, batch)
        cap = self.max_utilization if self.load else None
        xs, infos = [], []
        for i in range(batch.latency.shape[0]):  # HiGHS solves one model at a time
            x, info = milp_instance(batch[i], aggregation=aggregation, time_limit=self.time_limit,
                                    mip_rel_gap=self.mip_rel_gap, threads=self.threads, verbose=self.verbose,
                                    max_utilization=cap)
            xs.append(x)
            infos.append(info)
        status = np.asarray([_milp_status(d) for d in infos], np.int8)
        if self.load:  # optimal for J under the cap, not a proof for J_load
            status = np.where(status == Status.OPTIMAL, Status.FEASIBLE, status).astype(np.int8)
        info = {
            "highs_status": np.asarray([d["status"] for d in infos]),
            "incumbent": np.asarray([d["objective"] for d in infos], np.float64),
            "bound": np.asarray([d["bound"] for d in infos], np.float64),
            "gap": np.asarray([d["gap"] for d in infos], np.float64),
            "nodes": np.asarray([d["nodes"] for d in infos]),
            "solver_seconds": np.asarray([d["solver_seconds"] for d in infos], np.float64),
        }
        return np.stack(xs), info, status
