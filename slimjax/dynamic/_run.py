"""``run``: one policy over a batch of timelines — vmapped over timelines, scanned over windows.

Three compiled programs, each compiled ahead of time with the time measured apart (as the
solvers do): the initial deployment ``x_0`` on window 0 (shared by every policy, so that every
policy starts from the same placement), the policy's scan over windows 1..T-1, and the
evaluation of every placement on its window's *true* routing (J, per-token latencies). On the
host, in float64: the storage moved and the LRU's loads (from the float64 sizes), and the checks
that storage and budget hold in every window.
"""

from __future__ import annotations

import numbers
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slimjax._instance import Instance
from slimjax import _storage as storage
from slimjax._objective import AGGREGATIONS, expert_latency_from, objective_from_d
from slimjax.dynamic._myopic import WindowConfig, window_solve
from slimjax.dynamic._policies import FORECASTS, POLICIES, PolicyConfig, timeline_policy
from slimjax.dynamic._timeline import Timeline, timeline
from slimjax.ops._grid import capacity_grid
from slimjax._compile import Clock, call

__all__ = ["DynamicResult", "run", "window_config", "sample_tokens"]


class DynamicResult(NamedTuple):
    """What :func:`run` returns (leading axis B: timelines; T: windows; window 0 is x_0).

    Attributes:
      policy: the policy's name.
      placements: bool [B, T, N, L, E]: ``placements[b, t]`` is x_t of timeline b.
      objective: float64 [B, T]: J of x_t on window t's true routing (window 0: x_0 on window 0).
      moved: float64 [B, T, N]: storage moved into each node at window t,
        ``Σ size · x_t · (1 − x_{t-1})`` (0 at t = 0: the deployment is free), in the unit of
        ``size``; summed on the host in float64 from the sizes as float64.
      p95: float64 [B, T]: 95th percentile of the per-token latency of window t's tokens replayed
        through x_t (NaN without tokens); ``info`` has ``p50`` and ``p99``.
      info: ``forecast_objective`` [B, T] (J of x_t on what the policy believed about window t),
        ``loaded`` float64 [B, T, N] (storage the LRU loaded token by token, re-loads included,
        in the unit of ``size``: Σ size[l, e] over the copies it loaded, summed in float64 — not
        the grid units its budget counts; 0 for other policies),
        ``budget`` [B, N] (the budget in size units, inf when none), ``p50``, ``p99``.
      seconds: wall-clock seconds of the call without compilation.
      compile_seconds: seconds spent tracing, lowering and compiling (0 when every program was
        compiled before in this process).
    """

    policy: str
    placements: np.ndarray
    objective: np.ndarray
    moved: np.ndarray
    p95: np.ndarray
    info: dict
    seconds: float
    compile_seconds: float

    @property
    def total(self) -> np.ndarray:
        """float64 [B]: Σ of J over the evaluated windows 1..T-1."""
        return self.objective[:, 1:].sum(-1)

    @property
    def total_moved(self) -> np.ndarray:
        """float64 [B]: storage moved over the timeline (all nodes, windows 1..T-1)."""
        return self.moved.sum(axis=(1, 2))


# ----------------------------------------------------------------------------------------------
# The per-window solver from a solver object
# ----------------------------------------------------------------------------------------------


def window_config(solver: Any, shape: tuple, grid, aggregation: str, *, budgeted: bool, bisect: int = 12,
                  migration: bool | None = None) -> WindowConfig:
    """The static :class:`WindowConfig` of a solver object or name (``Successive``, optionally
    chained with ``Polish``): its node orders (``best-of`` candidates), oracle, DP backend and
    revisit rounds, and Polish's rounds as local-search rounds. Union-first candidates and random
    restarts of ``Successive`` are not part of the migration-aware solve and are left out."""
    from slimjax.solvers import Polish, Successive, as_solver

    obj = as_solver(solver)
    stages = obj.stages()
    ok = isinstance(stages[0], Successive) and (len(stages) == 1 or (len(stages) == 2 and isinstance(stages[1], Polish)))
    if not ok:
        raise ValueError(
            f"solver: the per-window solve is the migration-aware successive decomposition; give a Successive "
            f"solver, optionally chained with Polish (e.g. 'successive', 'successive-best'), got {obj!r}"
        )
    first = stages[0]
    if first.union_first == "on":
        raise ValueError("solver: union_first='on' is not supported by the migration-aware solve (use 'off' or 'auto')")
    sc = first.config(shape, grid, aggregation)
    orders = tuple(o for o, u in zip(sc.orders, sc.unions) if not u)
    rounds = int(stages[1].rounds) if len(stages) == 2 else 0
    return WindowConfig(Qmax=int(sc.Qmax), orders=orders, oracle=sc.oracle, maxconv=sc.maxconv, aggregation=aggregation,
                        revisit=int(sc.revisit), rounds=rounds, budgeted=bool(budgeted), bisect=int(bisect),
                        migration=bool(budgeted) if migration is None else bool(migration))


# ----------------------------------------------------------------------------------------------
# Compiled programs
# ----------------------------------------------------------------------------------------------


def _x0_fn(cfg: WindowConfig, windows, su, cu):
    def one(w, s, c):
        first = jax.tree_util.tree_map(lambda a: a[0], w)
        zeros = jnp.zeros(first.latency.shape[1:], bool)
        return window_solve(first, s, c, zeros, c, jnp.zeros((), first.size.dtype), cfg)

    return jax.vmap(one)(windows, su, cu)


def _policy_fn(cfg: PolicyConfig, windows, tokens, token_user, token_weight, su, cu, x0, budget, penalty, lag):
    return jax.vmap(lambda *a: timeline_policy(*a, lag, cfg=cfg))(
        windows, tokens, token_user, token_weight, su, cu, x0, budget, penalty)


def _eval_fn(aggregation: str, windows, placements, tokens, token_user):
    def one(w, xs, tok, usr):
        d = jax.vmap(lambda i, x: expert_latency_from(i.latency, i.fallback, x))(w, xs)  # [T, U, L, E]
        J = jax.vmap(lambda i, dd: objective_from_d(i, dd, aggregation))(w, d)
        if tok is None:
            return J, None
        L = d.shape[2]

        def tokens_of(dd, ids, u):  # [W] per-token latency of one window
            m = dd[u[:, None, None], jnp.arange(L)[None, :, None], ids]  # [W, L, K]
            return (m.max(-1) if aggregation == "max" else m.sum(-1)).sum(-1)

        return J, jax.vmap(tokens_of)(d, tok, usr)

    return jax.vmap(one)(windows, placements, tokens, token_user)


_X0 = jax.jit(_x0_fn, static_argnums=0)
_POLICY = jax.jit(_policy_fn, static_argnums=0)
_EVAL = jax.jit(_eval_fn, static_argnums=0)


def _sample_fn(W: int, key, windows):
    """W tokens per window: a user by traffic, then a pattern by its weight."""
    B, T = windows.latency.shape[:2]
    U, L, M = windows.weight.shape[-3:]

    def one(k, w):  # one window of one timeline
        ku, kp = jax.random.split(k)
        user = jax.random.categorical(ku, jnp.log(w.traffic), shape=(W,))
        logits = jnp.log(w.weight)  # [U, L, M]; layers are drawn independently
        m = jax.random.categorical(kp, logits[user], axis=-1)  # [W, L]
        ids = w.patterns[user[:, None], jnp.arange(L)[None, :], m]  # [W, L, K]
        return ids, user.astype(jnp.int32)

    keys = jax.random.split(key, B * T).reshape(B, T)
    ids, user = jax.vmap(jax.vmap(one))(keys, windows)
    return ids.astype(jnp.int32), user, jnp.full((B, T, W), 1.0 / W, windows.weight.dtype)


_SAMPLE = jax.jit(_sample_fn, static_argnums=0)


def sample_tokens(timelines: Timeline, tokens: int, key=0, clock: Clock | None = None) -> Timeline:
    """The timelines with ``tokens`` tokens per window sampled from their routing (replacing any).

    Each token draws a user by ``traffic`` and, per layer, a pattern by ``weight`` (the layers of
    a token are drawn independently: patterns carry no cross-layer structure). Every token weighs
    ``1 / tokens``.
    """
    tl = _as_batched(timelines)[0]
    if isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral) or tokens < 1:
        raise ValueError(f"tokens: must be an integer >= 1, got {tokens!r}")
    ids, user, w = call(_SAMPLE, (int(tokens),), (_key(key), tl.windows), clock)
    return Timeline(tl.windows, ids, user, w)


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def _key(key):
    if key is None:
        key = 0
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    raise ValueError(f"key: must be an int seed or a jax.random.key(...), got {key!r}")


def _as_batched(timelines) -> tuple[Timeline, bool]:
    if isinstance(timelines, Instance):
        timelines = timeline(timelines)
    if not isinstance(timelines, Timeline):
        raise ValueError(f"timelines: expected a slimjax.dynamic.Timeline or an Instance [(B,) T, ...], "
                         f"got {type(timelines).__name__}")
    if timelines.num_windows < 2:
        raise ValueError(f"timelines: need T >= 2 windows, got {timelines.num_windows}")
    if timelines.batch_shape:
        return timelines, True
    return jax.tree_util.tree_map(lambda a: a[None], timelines), False


def _budget_units(budget, B: int, N: int, size: np.ndarray, unit: np.ndarray, cu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(budget in size units float64 [B, N] (inf = none), in grid units int32 [B, N], capped at capacity)."""
    if budget is None:
        return np.full((B, N), np.inf), cu.astype(np.int32)
    try:
        b = np.asarray(budget, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"budget: must be None, a number or an array [N] / [B, N], got {budget!r}") from None
    try:
        b = np.broadcast_to(b, (B, N)).copy()
    except ValueError:
        raise ValueError(f"budget: shape {list(b.shape)} does not broadcast to [B={B}, N={N}]") from None
    if np.isnan(b).any() or (b < 0).any():
        bad = tuple(int(i) for i in np.argwhere(np.isnan(b) | (b < 0))[0])
        raise ValueError(f"budget: must be >= 0 (inf = no limit), got {b[bad]} at index {bad}")
    # a budget is a storage limit on what moves in: whole grid units as for capacities (slimjax._storage)
    units = storage.grid_units(size, np.where(np.isfinite(b), b, 0.0), unit)[1]
    return b, np.where(np.isfinite(b), np.minimum(units, cu), cu).astype(np.int32)


def _penalty(penalty, B: int) -> np.ndarray:
    try:
        p = np.broadcast_to(np.asarray(penalty, np.float64), (B,)).copy()
    except (TypeError, ValueError):
        raise ValueError(f"penalty: must be a number >= 0 or an array [B], got {penalty!r}") from None
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"penalty: must be finite and >= 0, got {penalty!r}")
    return p


def _devices(devices, U: int, N: int, latency: np.ndarray) -> tuple:
    devs = tuple(range(U)) if devices is None else tuple(int(d) for d in np.atleast_1d(devices))
    if len(devs) != U:
        raise ValueError(f"devices: need one device node per user (U={U}), got {devs}")
    for u, n in enumerate(devs):
        if not 0 <= n < N:
            raise ValueError(f"devices: node ids must be in [0, N={N}), got {n} for user {u}")
        if not np.isfinite(latency[..., u, n, :, :]).all():
            raise ValueError(f"devices: user {u} cannot reach node {n} (latency is inf), so it is not its device")
    return devs


def _check(kind: str, ok: np.ndarray, policy: str) -> None:
    if not ok.all():
        b, t, n = (int(i) for i in np.argwhere(~ok)[0])
        raise RuntimeError(f"policy {policy!r}: {kind} violated at timeline {b}, window {t}, node {n} (a bug)")


def _percentiles(lat: np.ndarray, w: np.ndarray, qs=(50, 95, 99)) -> dict[str, np.ndarray]:
    """Weighted percentiles over the last axis: the smallest latency at which the cumulative token
    weight reaches q % (``numpy.percentile(method="inverted_cdf")`` for equal weights)."""
    order = np.argsort(lat, axis=-1, kind="stable")
    ls = np.take_along_axis(lat, order, -1)
    cw = np.cumsum(np.take_along_axis(w, order, -1), axis=-1)
    total = cw[..., -1:]
    out = {}
    for q in qs:
        thr = q / 100.0 * total * (1 - 1e-9)
        i = np.minimum((cw < thr).sum(-1, keepdims=True), lat.shape[-1] - 1)
        out[f"p{q}"] = np.take_along_axis(ls, i, -1)[..., 0]
    return out


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------


def run(
    timelines: Timeline | Instance,
    policy: str,
    *,
    budget: Any = None,
    penalty: Any = 0.0,
    forecast: str = "last",
    solver: Any = "successive-best",
    ema_alpha: float = 0.5,
    ema_horizon: int = 4,
    devices: Any = None,
    sampled_tokens: int = 256,
    bisect: int = 12,
    key: Any = None,
    capacity_unit: float | None = None,
    aggregation: str = "max",
) -> DynamicResult:
    """Run one policy over a batch of timelines.

    x_0 is the deployment solved on window 0 (no migration cost); for t = 1..T-1 the policy
    chooses x_t from windows < t (``hindsight``: knowing window t) and x_t is evaluated on window
    t's true routing.

    Args:
      timelines: a :class:`Timeline` (or an Instance with a window axis) ``[(B,) T, ...]``; a
        single timeline is run as a batch of one.
      policy: one of :data:`POLICIES` (``static``, ``resolve``, ``incremental``, ``lfu``, ``lru``,
        ``hindsight``).
      budget: storage that may move into a node per window (unit of ``size``): None (no limit),
        a number, or an array [N] or [B, N] (``inf`` = no limit for that node).
      penalty: latency-equivalent cost per unit of size moved (unit of J per unit of size), a
        number or [B]; traded against J by ``incremental`` and ``hindsight``.
      forecast: ``"last"`` (window t-1) or ``"ema"`` (moving average of the pattern frequencies,
        ``ema_alpha`` on window t-1, over the last ``ema_horizon`` windows).
      solver: the per-window solve: a ``Successive`` solver object or name, optionally chained
        with ``Polish`` (default ``"successive-best"``); see :func:`window_config`.
      devices: ``lru``: the device node of every user (default node u for user u, the layout of
        :mod:`slimjax.generate`).
      sampled_tokens: ``lru`` on timelines without tokens: tokens per window sampled from the
        routing (with ``key``).
      bisect: bisection steps of the budget multiplier (with a budget).
      key: PRNG seed or key (only used to sample tokens).
      capacity_unit: the unit of the integer storage grid, as in :func:`slimjax.solve_batch`.
      aggregation: ``"max"`` or ``"sum"`` over a pattern's experts, as in :func:`slimjax.solve_batch`.

    Returns:
      a :class:`DynamicResult` (``placements`` [B, T, N, L, E], ``objective`` [B, T], ``moved``
      [B, T, N], ``p95`` [B, T], ``info``, ``seconds``, ``compile_seconds``).

    Raises:
      ValueError: an unknown policy or forecast, a bad budget, penalty or option.
      RuntimeError: a placement that violates storage or the budget (a bug; never expected).

    Examples:
      >>> import jax
      >>> from slimjax import dynamic
      >>> tl = dynamic.drift(jax.random.key(0), 2, 4, model="mixtral_8x7b", network={"servers": 2})
      >>> res = dynamic.run(tl, "incremental", budget=0.1 * tl.windows.capacity[:, 0], solver="successive")
      >>> res.objective.shape, res.moved.shape
      ((2, 4), (2, 4, 3))
    """
    clock = Clock()
    t0 = time.perf_counter()
    if policy not in POLICIES:
        raise ValueError(f"policy: must be one of {POLICIES}, got {policy!r}")
    if forecast not in FORECASTS:
        raise ValueError(f"forecast: must be one of {FORECASTS}, got {forecast!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")
    if isinstance(ema_alpha, bool) or not isinstance(ema_alpha, numbers.Real) or not 0 < ema_alpha <= 1:
        raise ValueError(f"ema_alpha: must be in (0, 1], got {ema_alpha!r}")
    for name, v, lo in (("ema_horizon", ema_horizon, 1), ("bisect", bisect, 0), ("sampled_tokens", sampled_tokens, 1)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
    tl, _ = _as_batched(timelines)
    w = tl.windows
    B, T = tl.batch_shape[0], tl.num_windows
    U, N, L, E, M, K = tl.shape
    first = jax.tree_util.tree_map(lambda a: a[:, 0], w)
    grid = capacity_grid(first, capacity_unit)
    su = np.asarray(grid.size_units, np.int32)
    cu = np.asarray(grid.capacity_units, np.int32)
    unit = np.asarray(grid.unit, np.float64).reshape(B)
    budget_real, bud = _budget_units(budget, B, N, np.asarray(first.size, np.float64), unit, cu)
    pen = _penalty(penalty, B)
    cfg = window_config(solver, tl.shape, grid, aggregation, budgeted=budget is not None, bisect=bisect,
                        migration=budget is not None or bool((pen > 0).any()))
    devs = (0,)
    evict = 1
    if policy == "lru":
        devs = _devices(devices, U, N, np.asarray(w.latency[:, 0]))
        if not tl.has_tokens:
            tl = sample_tokens(tl, sampled_tokens, key, clock)
        evict = int(np.max(-(-su.max(-1) // su.min(-1))))
        if budget is None:  # the LRU counts its admissions against the budget: none = unbounded
            bud = np.full_like(bud, np.iinfo(np.int32).max)
    hind = policy == "hindsight"  # incremental knowing window t: the same program with lag 0
    wcfg = cfg._replace(budgeted=False, migration=False) if policy in ("static", "lru") else cfg  # unused by them
    fc = "last" if hind else forecast
    pcfg = PolicyConfig(policy="incremental" if hind else policy, window=wcfg, forecast=fc, alpha=float(ema_alpha),
                        horizon=int(ema_horizon) if fc == "ema" else 1, devices=devs, evict=evict)
    fdt = w.size.dtype
    su_j, cu_j = jnp.asarray(su), jnp.asarray(cu)
    x0 = call(_X0, (cfg._replace(budgeted=False, migration=False),), (w, su_j, cu_j), clock)
    tok = (tl.tokens, tl.token_user, tl.token_weight) if (tl.has_tokens and policy == "lru") else (None, None, None)
    lag = jnp.int32(0 if hind else 1)
    xs, info = call(_POLICY, (pcfg,), (w, *tok, su_j, cu_j, x0, jnp.asarray(bud), jnp.asarray(pen, fdt), lag), clock)
    J, tok_lat = call(_EVAL, (aggregation,), (w, xs, tl.tokens, tl.token_user), clock)
    xs = np.asarray(xs)
    J = np.asarray(J, np.float64)
    # moved on the host: float64 sizes of each window, summed in float64 (not the device's float32 sum)
    size_t = np.asarray(w.size, np.float64)  # [B, T, L, E]
    new = xs & ~np.concatenate([xs[:, :1], xs[:, :-1]], axis=1)
    moved = np.einsum("btnle,btle->btn", new.astype(np.float64), size_t)
    # host checks in float64: storage and budget in every window
    size = np.asarray(w.size[:, 0], np.float64)  # [B, L, E]
    cap = np.asarray(w.capacity[:, 0], np.float64)  # [B, N]
    # the storage contract (slimjax._storage) in every window; a budget is checked like a capacity
    _check("storage", storage.fits(size[:, None], cap[:, None], xs), policy)
    prev = np.concatenate([xs[:, :1], xs[:, :-1]], axis=1)
    _check("budget", storage.fits(size[:, None], budget_real[:, None], xs & ~prev), policy)
    if not np.isfinite(J).all():
        raise RuntimeError(f"policy {policy!r}: non-finite J (a bug)")
    info = {k: np.asarray(v) for k, v in info.items()}
    # loads: int32 [B, T, N, L, E] copies the LRU loaded; loaded in size units (not rounded-up grid units)
    info["loaded"] = np.einsum("btnle,btle->btn", info.pop("loads").astype(np.float64), size_t)
    info["forecast_objective"] = info["forecast_objective"].astype(np.float64)
    info["budget"] = budget_real
    if tok_lat is not None:
        pct = _percentiles(np.asarray(tok_lat, np.float64), np.asarray(tl.token_weight, np.float64))
        p95 = pct["p95"]
        info["p50"], info["p99"] = pct["p50"], pct["p99"]
    else:
        p95 = np.full((B, T), np.nan)
    seconds = max(time.perf_counter() - t0 - clock.compile_seconds, 0.0)
    return DynamicResult(policy, xs, J, moved, p95, info, seconds, clock.compile_seconds)
