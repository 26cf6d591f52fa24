"""``lower_bound`` and ``certify``: certified lower bounds on J and certified optimality gaps.

Every method returns, per instance, a number that is ≤ the optimal J of that instance over all
placements that :func:`slimjax.feasible` accepts (slimjax's one storage contract,
:mod:`slimjax._storage`: ``used ≤ capacity·(1 + 1e-6) + 1e-9·max(1, max size)``, float64), however
far an iterative method got. By construction: every relaxation's storage rows contain that set
(:func:`slimjax._storage.storage_cut` for the whole-expert rows of ``threshold``/``levels``, each
layer's smallest size; :func:`slimjax._storage.relaxed_limit` for the LP of the MILP), and every
LP-based value is a Lagrangian dual function evaluated in float64 at the dual point the method (or
HiGHS) reached (weak duality), never a primal objective. The float64 evaluation subtracts a
rounding margin of 1e-9 times the magnitudes it sums (far above float64's ~1e-16 per operation);
``levels`` inflates its float32 knapsack values by their worst-case rounding before the float64
combination. So a bound exceeds the optimum only by the float64 rounding of the optimum's own
evaluation (≤ ~1e-15 relative).
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slimjax import _storage as storage
from slimjax._instance import Instance, is_batched
from slimjax.bounds import _assignment, _levels, _threshold
from slimjax.bounds import _pdhg as pdhg
from slimjax.ops._patterns import _merge_numpy

__all__ = ["Bound", "Certificate", "HostBatch", "METHODS", "lower_bound", "certify", "host_batch", "objective64"]

METHODS = ("auto", "levels", "threshold", "lp", "threshold-highs", "highs", "trivial")
"""The bound methods of :func:`lower_bound`, the default first."""
_STATUS = {pdhg.STATUS_RUNNING: "iteration_limit", pdhg.STATUS_OPTIMAL: "optimal",
           pdhg.STATUS_CONVERGED: "converged", pdhg.STATUS_TARGET: "target", pdhg.STATUS_DOMINATED: "dominated"}
_FORMS = {"threshold": _threshold, "lp": _assignment}


class Bound(NamedTuple):
    """Certified lower bounds of a batch (fields have a leading axis B; 0-d for one instance).

    Attributes:
      value: float64 [B], ≤ the optimal J of each instance.
      status: str [B]: ``"optimal"`` (within ``rtol`` of a feasible LP point: the LP is solved),
        ``"converged"`` (the bound rose by < ``stall_rtol`` over ``patience`` checks and the LP's
        relative KKT error is ≤ ``rtol``), ``"dominated"`` (``auto``: a feasible point of the
        threshold LP is already below the ``levels`` bound, which is kept), ``"target"`` (the bound
        reached ``upper / (1 + target_gap)``), ``"iteration_limit"``, ``"time_limit"``; ``levels``:
        ``"solved"``; HiGHS methods: ``"optimal"`` or ``"time_limit"`` (then the trivial bound);
        ``"exact"`` for ``trivial``. The value is a valid bound whatever the status.
      iterations: int [B] first-order iterations (0 for host methods).
      lp_error: float [B] relative KKT error of the LP at the end (nan where not measured).
      lp_gap: float [B] relative gap between a feasible LP point and the bound (an upper bound on
        how far the bound is below the LP optimum; nan where not measured).
      seconds: wall time of the call without compilation (the whole batch).
      compile_seconds: time spent compiling (0 when cached).
      instance_seconds: float [B] time per instance (batched methods: ``seconds / B``).
      method: the method name.
    """

    value: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    lp_error: np.ndarray
    lp_gap: np.ndarray
    seconds: float
    compile_seconds: float
    instance_seconds: np.ndarray
    method: str


class Certificate(NamedTuple):
    """Certified optimality gaps: ``gap = objective / bound.value − 1`` ≥ the true gap to the optimum.

    Attributes:
      gap: float64 [B] (0 when objective = bound = 0, inf when the bound is ≤ 0 < objective).
      objective: float64 [B] J of the certified placements (or the given values).
      bound: the :class:`Bound` used.
    """

    gap: np.ndarray
    objective: np.ndarray
    bound: Bound

    @property
    def lower(self) -> np.ndarray | np.floating:
        """float64 [B]: the certified lower bounds (``bound.value``; a scalar for one instance)."""
        return self.bound.value

    @property
    def status(self) -> np.ndarray | str:
        """str [B]: the bound's status per instance (``bound.status``; a str for one instance)."""
        return self.bound.status

    @property
    def seconds(self) -> float:
        """Wall time of the bound for the batch, compilation apart (``bound.seconds``)."""
        return self.bound.seconds


# -- validation --------------------------------------------------------------------------------


def _check_options(method, aggregation, max_iters, check_every, rtol, stall_rtol, patience, target_gap,
                   time_limit, dtype):
    if method not in METHODS:
        raise ValueError(f"method: unknown bound method {method!r}; valid methods are {METHODS}")
    if aggregation not in ("max", "sum"):
        raise ValueError(f"aggregation: must be one of ('max', 'sum'), got {aggregation!r}")
    for name, v in (("max_iters", max_iters), ("check_every", check_every), ("patience", patience)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    for name, v in (("rtol", rtol), ("stall_rtol", stall_rtol)):
        if not isinstance(v, (int, float)) or not (0 <= v < 1) or math.isnan(v):
            raise ValueError(f"{name}: must be a number in [0, 1), got {v!r}")
    if target_gap is not None and (not isinstance(target_gap, (int, float)) or not target_gap >= 0):
        raise ValueError(f"target_gap: must be a number >= 0 or None, got {target_gap!r}")
    if time_limit is not None and (not isinstance(time_limit, (int, float)) or not time_limit > 0):
        raise ValueError(f"time_limit: must be a number > 0 or None (seconds), got {time_limit!r}")
    if dtype is not None and np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype: must be float32, float64 or None, got {dtype!r}")
    if dtype is not None and np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype: float64 iterations need jax_enable_x64 (the certified value is float64 anyway)")


def _as_batch(batch) -> tuple[Instance, bool]:
    if not isinstance(batch, Instance):
        raise ValueError(f"batch: expected a slimjax.Instance (one or a batch), got {type(batch).__name__}")
    if is_batched(batch):
        if batch.latency.shape[0] < 1:
            raise ValueError("batch: the batch axis is empty")
        return batch, False
    return jax.tree_util.tree_map(lambda a: a[None], batch), True


def _check_upper(upper, B: int):
    if upper is None:
        return np.full(B, np.inf)
    u = np.asarray(upper, np.float64).reshape(-1) if np.ndim(upper) else np.full(B, float(upper))
    if u.shape != (B,):
        raise ValueError(f"upper: expected {B} values (one per instance), got shape {np.shape(upper)}")
    if np.isnan(u).any():
        raise ValueError(f"upper: NaN at index {int(np.flatnonzero(np.isnan(u))[0])}")
    return u


# -- the objective in float64 (the one place J is evaluated here) -------------------------------


def objective64(batch: Instance, placement, aggregation: str = "max") -> np.ndarray:
    """J of every instance in float64 on the host (the value :func:`certify` certifies).

    Args:
      batch: a batch; placement: bool [B, N, L, E].

    Returns:
      float64 [B].
    """
    lat = np.asarray(batch.latency, np.float64)
    fb = np.asarray(batch.fallback, np.float64)
    x = np.asarray(placement).astype(bool)
    d = np.minimum(fb, np.where(x[:, None], lat, np.inf).min(axis=2))  # [B, U, L, E]
    pat = np.asarray(batch.patterns).astype(np.int64)
    B, U, L, M, K = pat.shape
    bi = np.arange(B)[:, None, None, None, None]
    ui = np.arange(U)[None, :, None, None, None]
    li = np.arange(L)[None, None, :, None, None]
    mem = d[bi, ui, li, pat]
    pl = mem.max(-1) if aggregation == "max" else mem.sum(-1)
    w = np.asarray(batch.weight, np.float64)
    tr = np.asarray(batch.traffic, np.float64)
    return (tr[:, :, None, None] * w * pl).sum(axis=(1, 2, 3))


def _trivial(batch: Instance, aggregation: str) -> np.ndarray:
    """J with every expert on every node: a valid (weak) bound."""
    B, N, L, E = batch.latency.shape[0], *batch.latency.shape[2:]
    return objective64(batch, np.ones((B, N, L, E), bool), aggregation)


# -- the data the bounds are computed from ------------------------------------------------------


class HostBatch(NamedTuple):
    """A batch as float64 NumPy arrays (patterns int64), with ``aggregation="sum"`` already turned
    into one-member patterns and identical patterns merged in float64 (so the bounds see exactly
    the instance's J: merging in float32 would round the summed weights)."""

    latency: np.ndarray
    fallback: np.ndarray
    size: np.ndarray
    capacity: np.ndarray
    patterns: np.ndarray
    weight: np.ndarray
    traffic: np.ndarray


def host_batch(batch: Instance, aggregation: str = "max", merge: bool = True) -> HostBatch:
    """The float64 host copy of a batch the bounds are built from (see :class:`HostBatch`)."""
    pat = np.asarray(batch.patterns).astype(np.int64)
    w = np.asarray(batch.weight, np.float64)
    if aggregation == "sum":
        pat, w = _threshold._sum_patterns(pat, w)
    E = batch.latency.shape[-1]
    M, K = pat.shape[-2:]
    Mp = min(M, math.comb(E + K - 1, K))
    if merge and Mp < M:
        pat, w = _merge_numpy(pat, w, Mp)
    return HostBatch(np.asarray(batch.latency, np.float64), np.asarray(batch.fallback, np.float64),
                     np.asarray(batch.size, np.float64), np.asarray(batch.capacity, np.float64),
                     np.asarray(pat).astype(np.int64), np.asarray(w, np.float64),
                     np.asarray(batch.traffic, np.float64))


def expert_spread(host: HostBatch, rtol: float = 1e-6) -> np.ndarray:
    """bool [B]: some node serves some user at different latencies for different experts (or the
    fallbacks differ between experts). ``auto`` runs the threshold LP only on such instances (and
    where ``levels`` does not apply): on node-wise latencies the level bound was the tighter one on
    every instance measured, at a fraction of the time."""
    lat = host.latency
    fin = np.isfinite(lat)
    hi = np.where(fin, lat, -np.inf).max(axis=(3, 4))
    lo = np.where(fin, lat, np.inf).min(axis=(3, 4))
    node = (fin.any(axis=(3, 4)) & (hi - lo > rtol * np.abs(hi))).any(axis=(1, 2))
    fb = host.fallback
    fbs = (fb.max(axis=(2, 3)) - fb.min(axis=(2, 3)) > rtol * fb.max(axis=(2, 3))).any(axis=1)
    return node | fbs


# -- first-order methods -------------------------------------------------------------------------

_COMPILED: dict = {}


def _compiled(name, fn, *args, **static):
    """AOT-compile ``fn`` for these argument shapes once per process; returns (callable, seconds)."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    key = (name, tree, tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves), tuple(sorted(static.items())))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    t0 = time.perf_counter()
    exe = jax.jit(fn, static_argnames=tuple(static)).lower(*args, **static).compile()
    _COMPILED[key] = exe
    if len(_COMPILED) > 64:
        _COMPILED.pop(next(iter(_COMPILED)))
    return exe, time.perf_counter() - t0


def _init(mod, data, b0):
    v0 = jax.vmap(mod.initial_primal)(data)
    y0 = jax.vmap(mod.initial_dual)(data)
    return pdhg.init_state(mod.FORMULATION, data, v0, y0, b0)


def _run(mod, data, st, target, rtol, stall_rtol, total, check_every, n_checks, patience):
    return pdhg.run_chunks.__wrapped__(mod.FORMULATION, data, st, target, rtol, stall_rtol, total,
                                       check_every=check_every, n_checks=n_checks, patience=patience)


def _targets(upper, target_gap, B):
    if target_gap is None:
        return np.full(B, np.inf)
    return np.where(np.isfinite(upper), upper / (1 + target_gap), np.inf)


def _levels_bound(batch, host, aggregation, upper, target_gap, dtype, max_levels: int = 32):
    """The level-decomposition bound (exact, non-iterative)."""
    t0 = time.perf_counter()
    B = batch.latency.shape[0]
    data = _levels.build(host, "max", max_levels)
    dt = jnp.dtype(dtype) if dtype is not None else batch.latency.dtype
    U, G, L = data["free"].shape[1:]
    E = batch.latency.shape[-1]
    Wc = _levels._masks_by_size(E).shape[1]
    per = U * L * ((1 << E) + (E + 1) * Wc) * 12 + 1
    bs = int(max(1, min(B, (1 << 28) // per)))
    args = tuple(jnp.asarray(data[k], dt if k == "w" else jnp.int32) for k in ("masks", "w", "free", "elig", "cap",
                                                                                "s_hat"))
    fn, comp = _compiled(("levels",), lambda *a, E, qmax, batch_size: _levels.level_opt.__wrapped__(
        *a, E=E, qmax=qmax, batch_size=batch_size), *args, E=E, qmax=int(data["qmax"]), batch_size=bs)
    opt = np.asarray(fn(*args))
    value = _levels.value64(data, opt, dt)
    value = np.maximum(value, _trivial(batch, aggregation))
    secs = time.perf_counter() - t0 - comp
    status = np.where(value >= _targets(upper, target_gap, B), "target", "solved").astype(object)
    return Bound(value, status, np.zeros(B, np.int64), np.full(B, np.nan), np.full(B, np.nan), secs, comp,
                 np.full(B, secs / B), "levels")


def _first_order(batch, host, method, aggregation, upper, target_gap, max_iters, check_every, rtol, stall_rtol,
                 patience, time_limit, dtype, chunk_checks: int = 16, start=None, skip=None):
    mod = _FORMS[method]
    t0 = time.perf_counter()
    B = batch.latency.shape[0]
    data64 = mod.build(host, "max")
    dt = jnp.dtype(dtype) if dtype is not None else batch.latency.dtype
    data = mod.to_device(data64, dt)
    tgt_np = _targets(upper, target_gap, B)
    tgt = jnp.asarray(tgt_np, dt)
    b0 = jnp.asarray(start if start is not None else np.full(B, -np.inf), dt)
    init, c1 = _compiled(("init", method), lambda d, b: _init(mod, d, b), data, b0)
    st = init(data, b0)
    done0 = np.zeros(B, bool) if skip is None else np.asarray(skip, bool)
    if start is not None:  # instances already certified to the target by another bound
        done0 |= start >= tgt_np
    if done0.any():  # frozen from the start: no iterations
        st = st._replace(status=jnp.where(jnp.asarray(done0), pdhg.STATUS_TARGET, st.status))
    n_checks = chunk_checks  # fixed, so that max_iters does not change the compiled program
    args = (data, st, tgt, jnp.asarray(rtol, dt), jnp.asarray(stall_rtol, dt), jnp.int32(max_iters))
    run, c2 = _compiled(("run", method), lambda d, s, t, r, sr, tot, check_every, n_checks, patience:
                        _run(mod, d, s, t, r, sr, tot, check_every, n_checks, patience),
                        *args, check_every=check_every, n_checks=n_checks, patience=patience)
    compile_s = c1 + c2
    t_start = time.perf_counter()  # the time limit counts the iterations only
    timed_out = False
    while True:
        st = run(data, st, tgt, args[3], args[4], args[5])
        status = np.asarray(st.status)
        iters = np.asarray(st.iters)
        running = (status == pdhg.STATUS_RUNNING) & (iters < max_iters)
        if not running.any():
            break
        if time_limit is not None and time.perf_counter() - t_start >= time_limit:
            timed_out = True
            break
    ys = jax.tree_util.tree_map(np.asarray, st.best_y)
    value = mod.dual_value64(data64, ys)
    names = np.array([_STATUS[int(s)] for s in status], dtype=object)
    if timed_out:
        names[running] = "time_limit"
    value = np.maximum(value, _trivial(batch, aggregation))  # both are valid; keep the larger
    if start is not None:
        value = np.maximum(value, start)
    seconds = time.perf_counter() - t0 - compile_s
    # instances frozen from the start never iterated: their KKT error and LP gap were not measured
    err = np.where(done0, np.nan, np.asarray(st.err, np.float64))
    gap = np.where(done0, np.nan, np.asarray(st.gap, np.float64))
    return Bound(value, names, iters.astype(np.int64), err, gap,
                 seconds, compile_s,
                 np.full(B, seconds / B), method)


# -- HiGHS references ------------------------------------------------------------------------------


def _run_lp(highspy, mdl, offset: float, time_limit, threads):
    """Solve an LP model on HiGHS (quiet, with the time limit and threads): (Highs, status name)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    h.passModel(mdl.lp(highspy, True, offset))
    h.run()
    return h, h.modelStatusToString(h.getModelStatus())


def _threshold_highs_one(data64: dict, b: int, time_limit, threads):
    """The threshold LP of instance b on HiGHS: (g(μ) at HiGHS's row duals, status, HiGHS's LP objective)."""
    from slimjax.solvers._exact import _highspy, _Model

    highspy = _highspy()
    act, c, fidx = data64["act"][b], data64["c"][b], data64["fidx"][b]
    xg = data64["xgather"][b]
    U, L, M, K, I = act.shape
    N = data64["q_hat"].shape[-1]
    E = xg.shape[2]
    N1 = N + 1
    mdl = _Model()
    xcol = mdl.cols(N * L * E)
    zmask = c > 0
    zcol = np.full(c.shape, -1, np.int64)
    zcol[zmask] = mdl.cols(int(zmask.sum()), cost=-c[zmask])
    rows_on = act > 0
    uu, ll, mm, kk, ii = np.nonzero(rows_on)
    nrow = len(uu)
    r = mdl.rows(nrow, -np.inf, 0.0)
    mdl.coef(r, zcol[uu, ll, mm, ii], 1.0)
    f = fidx[uu, ll, mm, kk, ii].astype(np.int64)
    rank = f % N1
    e = (f // N1) % E
    j = np.arange(N)[None, :]
    on = j < rank[:, None]
    rr = np.broadcast_to(r[:, None], on.shape)[on]
    cc = xcol[xg[uu, ll, e][:, :N]][on]
    mdl.coef(rr, cc, -1.0)
    store = mdl.rows(N, -np.inf, data64["q_hat"][b])
    nn = np.repeat(np.arange(N), L * E)
    mdl.coef(store[nn], xcol, np.tile(np.repeat(data64["s_hat"][b], E), N))
    h, status = _run_lp(highspy, mdl, float(data64["j0"][b]), time_limit, threads)
    mu = np.zeros((1,) + act.shape)
    sol = h.getSolution()
    if sol.dual_valid:
        rd = np.asarray(sol.row_dual)[:nrow]
        mu[0, uu, ll, mm, kk, ii] = np.maximum(-rd, 0.0)
    one = {k: v[b : b + 1] for k, v in data64.items()}
    objective = float(h.getInfo().objective_function_value) if status == "Optimal" else np.nan
    return (float(_threshold.dual_value64(one, (mu, None))[0]), ("optimal" if status == "Optimal" else "time_limit"),
            objective)


def _assignment_highs_one(data64: dict, b: int, time_limit, threads):
    """The LP of the MILP (:mod:`._assignment`'s, over every accepted placement) of instance b on
    HiGHS: (the Lagrangian at HiGHS's row duals in float64, status)."""
    from slimjax.solvers._exact import _highspy, _Model

    highspy = _highspy()
    useful, hasx, anyu, gm = (data64[k][b] > 0 for k in ("useful", "hasx", "anyu", "gm"))
    U, N, L, E = useful.shape
    M, K = gm.shape[2:]
    mdl = _Model()
    xcol = np.full((N, L, E), -1, np.int64)
    xcol[hasx] = mdl.cols(int(hasx.sum()))
    acol = np.full((U, N, L, E), -1, np.int64)
    acol[useful] = mdl.cols(int(useful.sum()))
    ycol = mdl.cols(U * L * M, cost=data64["cy"][b].reshape(-1), hi=data64["ymax"][b].reshape(-1)).reshape(U, L, M)
    uu, nn, ll, ee = np.nonzero(useful)
    ra = mdl.rows(len(uu), -np.inf, 0.0)  # α: a − x ≤ 0
    mdl.coef(ra, acol[uu, nn, ll, ee], 1.0)
    mdl.coef(ra, xcol[nn, ll, ee], -1.0)
    rbeta = np.full((U, L, E), -1, np.int64)
    rbeta[anyu] = mdl.rows(int(anyu.sum()), -np.inf, 1.0)  # β: Σ_n a ≤ 1
    mdl.coef(rbeta[uu, ll, ee], acol[uu, nn, ll, ee], 1.0)
    gu, gl, gmm, gk = np.nonzero(gm)  # γ: −y − Σ_n saving·a ≤ −fallback, per member
    rg = mdl.rows(len(gu), -np.inf, -data64["fbm"][b][gu, gl, gmm, gk])
    mdl.coef(rg, ycol[gu, gl, gmm], -1.0)
    e_of = data64["gidx"][b][gu, gl, gmm, gk].astype(np.int64) % E
    on = useful[gu, :, gl, e_of]  # [rows, N]
    r_i, n_i = np.nonzero(on)
    uo, lo, eo = gu[r_i], gl[r_i], e_of[r_i]
    mdl.coef(rg[r_i], acol[uo, n_i, lo, eo], -data64["saving"][b][uo, n_i, lo, eo])
    rl = mdl.rows(N, -np.inf, data64["qcap"][b])  # λ: storage over the accepted placements
    xn, xl, xe = np.nonzero(hasx)
    mdl.coef(rl[xn], xcol[xn, xl, xe], data64["size"][b][xl, xe])
    h, status = _run_lp(highspy, mdl, 0.0, time_limit, threads)
    sol = h.getSolution()
    alpha, beta = np.zeros((1, U, N, L, E)), np.zeros((1, U, L, E))
    gamma, lam = np.zeros((1, U, L, M, K)), np.zeros((1, N))
    if sol.dual_valid:
        rd = -np.asarray(sol.row_dual)  # ≤ rows of a minimisation: multiplier = −(row dual) ≥ 0
        alpha[0, uu, nn, ll, ee] = rd[ra]
        beta[0][anyu] = rd[rbeta[anyu]]
        gamma[0, gu, gl, gmm, gk] = rd[rg]
        lam[0] = rd[rl]
    one = {k: v[b : b + 1] for k, v in data64.items()}
    value = float(_assignment.dual_value64(one, (alpha, beta, gamma, lam))[0])
    return value, ("optimal" if status == "Optimal" else "time_limit")


def _highs(batch, method, aggregation, time_limit, threads):
    from slimjax.solvers._exact import _highspy

    _highspy()
    t0 = time.perf_counter()
    B = batch.latency.shape[0]
    triv = _trivial(batch, aggregation)
    vals, names, secs = np.empty(B), np.empty(B, dtype=object), np.empty(B)
    host = host_batch(batch, aggregation)
    data64 = (_threshold if method == "threshold-highs" else _assignment).build(host, "max")
    for b in range(B):  # HiGHS solves one model at a time
        t1 = time.perf_counter()
        if method == "threshold-highs":
            v, s, _ = _threshold_highs_one(data64, b, time_limit, threads)
        else:
            v, s = _assignment_highs_one(data64, b, time_limit, threads)
        vals[b], names[b] = max(v, triv[b]), s
        secs[b] = time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    return Bound(vals, names, np.zeros(B, np.int64), np.full(B, np.nan), np.full(B, np.nan), seconds, 0.0, secs,
                 method)


# -- public functions ----------------------------------------------------------------------------


def lower_bound(
    batch: Instance,
    method: str = "auto",
    *,
    aggregation: str = "max",
    upper=None,
    target_gap: float | None = None,
    max_iters: int = 20000,
    check_every: int = 64,
    rtol: float = 1e-5,
    stall_rtol: float = 1e-7,
    patience: int = 8,
    time_limit: float | None = None,
    dtype=None,
    threads: int | None = None,
    max_levels: int = 32,
    merge: bool = True,
) -> Bound:
    """Certified lower bounds on the optimal J of every instance of a batch.

    The methods (``method=``):

    - ``"auto"`` (default): ``levels`` where it applies (E ≤ 16), raised by ``threshold`` on the
      instances whose node latencies differ between experts and that ``levels`` did not already
      certify to ``target_gap``; ``threshold`` alone for larger E.
    - ``"levels"``: the level decomposition, an exact knapsack per latency level over all 2^E
      expert sets of a layer (E ≤ 16).
    - ``"threshold"``: the threshold formulation of the pattern max with whole-expert
      (Chvátal–Gomory) storage rows, solved for the whole batch by restarted PDHG in JAX; the value
      is its Lagrangian dual with the per-node 0/1 knapsacks solved exactly, in float64.
    - ``"lp"``: the LP relaxation of the MILP by the same PDHG; equals HiGHS's LP value when
      converged (weaker than ``threshold``).
    - ``"threshold-highs"``: the threshold LP on HiGHS (CPU, one instance at a time), value at
      HiGHS's duals; ``"highs"``: the MILP's LP on HiGHS (the reference; the trivial bound when it
      does not finish within ``time_limit``); ``"trivial"``: J with every expert on every node.

    Args:
      batch: an Instance or a batch (leading axis B).
      method: one of :data:`METHODS`.
      aggregation: "max" or "sum".
      upper: optional float [B], known objective values (e.g. J of a solution); with
        ``target_gap`` an instance stops once its bound reaches ``upper / (1 + target_gap)``.
      target_gap: relative gap at which to stop (None: never stop on the gap).
      max_iters: PDHG iteration cap per instance.
      check_every: PDHG steps between two bound evaluations.
      rtol: relative KKT error (and LP gap) at which an instance counts as solved.
      stall_rtol: an instance stops when its bound rose by less than this (relative) ...
      patience: ... over this many checks.
      time_limit: seconds (PDHG: for the batch, checked every 16 checks; HiGHS: per instance).
      dtype: iteration precision of PDHG (default: the instance's); the certified value is float64.
      threads: HiGHS threads.
      max_levels: most latency levels of the ``levels`` bound (a coarser grid when there are more
        distinct latencies; still valid, possibly weaker).
      merge: merge identical patterns first (J unchanged; smaller LPs).

    Returns:
      :class:`Bound` (per-instance value, status, iterations; the time taken apart from compilation).

    Raises:
      ValueError: an unknown method, a bad option or a non-Instance ``batch``.

    Examples:
      >>> import jax, slimjax
      >>> from slimjax.bounds import lower_bound
      >>> batch = slimjax.generate.instances(jax.random.key(0), 4, model="mixtral_8x7b")  # doctest: +SKIP
      >>> lower_bound(batch).value  # doctest: +SKIP
    """
    _check_options(method, aggregation, max_iters, check_every, rtol, stall_rtol, patience, target_gap, time_limit,
                   dtype)
    if isinstance(max_levels, bool) or not isinstance(max_levels, (int, np.integer)) or max_levels < 1:
        raise ValueError(f"max_levels: must be an integer >= 1, got {max_levels!r}")
    batch, single = _as_batch(batch)
    B = batch.latency.shape[0]
    up = _check_upper(upper, B)
    host = host_batch(batch, aggregation, merge) if method not in ("highs", "threshold-highs", "trivial") else None
    E = batch.latency.shape[-1]
    if method == "levels" or (method == "auto" and E <= _levels.LEVELS_MAX_E):
        res = _levels_bound(batch, host, aggregation, up, target_gap, dtype, int(max_levels))
        if method == "auto":
            lv = res
            need = expert_spread(host) & (lv.status != "target")
            if need.any():
                res = _first_order(batch, host, "threshold", aggregation, up, target_gap, int(max_iters),
                                   int(check_every), float(rtol), float(stall_rtol), int(patience), time_limit,
                                   dtype, start=lv.value, skip=~need)
                res = res._replace(status=np.where(need, res.status, lv.status),
                                   iterations=np.where(need, res.iterations, 0),
                                   seconds=res.seconds + lv.seconds,
                                   compile_seconds=res.compile_seconds + lv.compile_seconds,
                                   instance_seconds=res.instance_seconds + lv.instance_seconds)
            res = res._replace(method="auto")
    elif method == "auto":
        res = _first_order(batch, host, "threshold", aggregation, up, target_gap, int(max_iters),
                           int(check_every), float(rtol), float(stall_rtol), int(patience), time_limit,
                           dtype)._replace(method="auto")
    elif method in _FORMS:
        res = _first_order(batch, host, method, aggregation, up, target_gap, int(max_iters), int(check_every), float(rtol),
                           float(stall_rtol), int(patience), time_limit, dtype)
    elif method in ("highs", "threshold-highs"):
        res = _highs(batch, method, aggregation, time_limit, threads)
    else:
        t0 = time.perf_counter()
        v = _trivial(batch, aggregation)
        s = time.perf_counter() - t0
        res = Bound(v, np.array(["exact"] * B, dtype=object), np.zeros(B, np.int64), np.full(B, np.nan),
                    np.full(B, np.nan), s, 0.0, np.full(B, s / B), method)
    if single:
        res = _squeeze(res)
    return res


#: relative slack of certify's "J below the bound" check for float64 J: the float64 rounding of the
#: two evaluations (J over M·K terms, the bound's own margin is already subtracted), with room
_F64_SLACK = 1e-12

_PER_INSTANCE = ("value", "status", "iterations", "lp_error", "lp_gap", "instance_seconds")


def _squeeze(b: Bound) -> Bound:
    return b._replace(**{k: np.asarray(getattr(b, k)).reshape(-1)[0] for k in _PER_INSTANCE})


def _unsqueeze(b: Bound) -> Bound:
    return b._replace(**{k: np.atleast_1d(getattr(b, k)) for k in _PER_INSTANCE})


def _storage_check(batch: Instance, x: np.ndarray) -> None:
    """The storage contract (:mod:`slimjax._storage`, as :func:`slimjax.feasible`)."""
    used = storage.used(batch.size, x)
    cap = np.asarray(batch.capacity, np.float64)
    bad = ~(used <= storage.limit(batch.size, batch.capacity))
    if bad.any():
        b, n = np.argwhere(bad)[0]
        raise ValueError(f"placement: infeasible at instance {b}, node {n}: uses {used[b, n]:.6g} > capacity "
                         f"{cap[b, n]:.6g}; a lower bound certifies feasible placements only")


def certify(batch: Instance, solution: Any, method: str = "auto", *, aggregation: str = "max",
            target_gap: float | None = 1e-5, bound: Bound | None = None, **options) -> Certificate:
    """Certified optimality gap of placements (or objective values): ``J / bound − 1`` per instance.

    Args:
      batch: an Instance or a batch.
      solution: an object with a ``placement`` attribute (a solver's Solution), a placement
        bool [B, N, L, E], or objective values float [B] (taken as given).
      method: the bound method (:func:`lower_bound`).
      aggregation: "max" or "sum".
      target_gap: stop each instance once its gap is certified below this (None: run to
        convergence); the certified gap is then at most about this.
      bound: a precomputed :class:`Bound` of ``batch`` (skips the bound computation).
      **options: passed to :func:`lower_bound`.

    Returns:
      :class:`Certificate` (gap, objective, bound). The gap is an upper bound on the true relative
      gap ``J / J* − 1``.

    Raises:
      ValueError: a placement of the wrong shape or one that violates the storage limits, or
        objective values below the certified bound (not the J of any feasible placement).
    """
    b, single = _as_batch(batch)
    B = b.latency.shape[0]
    placement = getattr(solution, "placement", solution)
    arr = np.asarray(placement)
    want = (B,) + tuple(b.latency.shape[2:])
    if arr.ndim in (3, 4) and arr.shape[-3:] == want[1:]:
        x = arr.reshape(want)
        if not (arr.dtype == bool or np.isin(arr, (0, 1)).all()):
            raise ValueError("placement: entries must be 0/1 or bool")
        _storage_check(b, x.astype(bool))
        obj = objective64(b, x, aggregation)
        tol = _F64_SLACK  # J and the bound are both float64 evaluations
    elif arr.ndim <= 1 and arr.size == B:
        obj = arr.astype(np.float64).reshape(B)
        # values computed in float32 (a solver's J) carry float32 rounding; float64 values float64's
        tol = _F64_SLACK if arr.dtype == np.float64 else 1e-6
        if not np.isfinite(obj).all():
            raise ValueError(f"objective: values must be finite, got {obj[~np.isfinite(obj)][0]}")
    else:
        raise ValueError(f"solution: expected a placement [B, N, L, E] = {list(want)}, objective values [{B}] "
                         f"or an object with .placement; got shape {arr.shape}")
    if bound is None:
        bound = lower_bound(b, method, aggregation=aggregation, upper=obj, target_gap=target_gap, **options)
        if single:
            bound = _unsqueeze(bound)
    lb = np.asarray(bound.value, np.float64).reshape(-1)
    if lb.shape != (B,):
        raise ValueError(f"bound: expected {B} values, got shape {np.shape(bound.value)}")
    scale = np.maximum(np.abs(obj), np.abs(lb))
    below = obj < lb - tol * scale
    if below.any():
        i = int(np.flatnonzero(below)[0])
        raise ValueError(f"objective: instance {i} has J = {obj[i]:.9g} below its certified lower bound "
                         f"{lb[i]:.9g}; it is not the J of a feasible placement of this instance")
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(lb > 0, obj / lb - 1, np.where(obj <= 0, 0.0, np.inf))
    gap = np.maximum(gap, 0.0)
    if single:
        return Certificate(gap[0], obj[0], _squeeze(_unsqueeze(bound)))
    return Certificate(gap, obj, bound)
