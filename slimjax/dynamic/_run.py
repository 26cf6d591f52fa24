"""``run``: one policy over a batch of timelines — vmapped over timelines, scanned over windows.

Compiled programs, each compiled ahead of time with the time measured apart (as the solvers
do): the initial deployment ``x_0`` on window 0 (shared by every policy, so that every policy
starts from the same placement; :func:`deploy`, or given), the policy's scan over windows 1..T-1
(a placement policy's, or the per-token caches' replay of the tokens), and the evaluation of
every placement on its window's *true* routing (J, per-token latencies). On the host, in
float64: the storage moved and loaded (from the float64 sizes), the hits per node, the
percentiles, and the checks that storage and budget hold in every window.
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slimjax import _storage as storage
from slimjax._compile import Clock, call
from slimjax._instance import Instance
from slimjax._keys import as_key
from slimjax._objective import AGGREGATIONS, expert_latency_from, objective_from_d
from slimjax.dynamic._caches import next_use, token_caches
from slimjax.dynamic._myopic import WindowConfig, window_solve
from slimjax.dynamic._objects import Policy, Status, as_policy
from slimjax.dynamic._policies import PolicyConfig, timeline_policy
from slimjax.dynamic._timeline import Timeline, timeline
from slimjax.ops import capacity_grid

__all__ = ["DynamicResult", "deploy", "run", "sample_tokens", "window_config"]


@dataclasses.dataclass(frozen=True, eq=False)
class DynamicResult:
    """What :func:`run` returns (leading axis B: timelines; T: windows; N: nodes; window 0 is x_0).

    Every policy reports every field (NaN where a quantity does not exist, said per field).

    Attributes:
      policy: the policy's name (``"incremental"``, ``"belady"``, ...).
      placements: bool [B, T, N, L, E]: ``placements[b, t]`` is x_t of timeline b (a per-token
        cache: every node's holdings at the start of window t).
      objective: float64 [B, T]: J of window t: placement policies, x_t on window t's true
        routing; per-token caches, the mean per-token latency of window t's replayed tokens
        (window 0: x_0 on window 0, for every policy).
      token_objective: float64 [B, T]: the token-weighted mean per-token latency of window t's
        tokens replayed (through x_t, or through the cache as it changes); equals ``objective``
        when the windows' patterns are their tokens (``drift``, ``timeline_from_trace``); NaN
        without tokens.
      forecast_objective: float64 [B, T]: J of x_t on what the policy believed about window t
        (window 0: x_0 on window 0); NaN for the per-token caches (no forecast).
      moved: float64 [B, T, N]: storage moved into each node at window t,
        ``Σ size · x_t · (1 − x_{t-1})`` (0 at t = 0: the deployment is free), in the unit of
        ``size``; summed on the host in float64 from the sizes as float64.
      loaded: float64 [B, T, N]: storage actually loaded into each node, re-loads included, in
        the unit of ``size`` (Σ of the real sizes, float64): ``moved`` for the placement policies
        but :class:`LRU` (what its replay of window t-1 loaded to build x_t); a per-token cache,
        what it loaded while serving window t.
      hits, accesses: int64 [B, T, N]: the expert accesses of window t's tokens whose user's
        device is node n, and those that found the expert on it (0 for nodes that are no user's
        device; 0 without tokens).
      p50, p95, p99: float64 [B, T]: percentiles of the per-token latency of window t's replayed
        tokens (the smallest latency at which q % of the window's token weight is reached,
        ``numpy.percentile(method="inverted_cdf")`` for equal weights; NaN without tokens).
      budget: float64 [B, N]: the budget in size units (inf when none or the policy has none).
      status: int8 [B] of :class:`~slimjax.dynamic.Status` (ONLINE, or OFFLINE for a reference
        that sees the future).
      seconds: wall-clock seconds of the call without compilation.
      compile_seconds: seconds spent tracing, lowering and compiling (0 when every program was
        compiled before in this process).
    """

    policy: str
    placements: np.ndarray
    objective: np.ndarray
    token_objective: np.ndarray
    forecast_objective: np.ndarray
    moved: np.ndarray
    loaded: np.ndarray
    hits: np.ndarray
    accesses: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    p99: np.ndarray
    budget: np.ndarray
    status: np.ndarray
    seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def total(self) -> np.ndarray:
        """float64 [B]: Σ of J over the evaluated windows 1..T-1."""
        return self.objective[:, 1:].sum(-1)

    @property
    def total_moved(self) -> np.ndarray:
        """float64 [B]: storage moved over the timeline (all nodes, windows 1..T-1)."""
        return self.moved.sum(axis=(1, 2))

    @property
    def total_loaded(self) -> np.ndarray:
        """float64 [B]: storage loaded over the timeline (all nodes, windows 1..T-1)."""
        return self.loaded.sum(axis=(1, 2))

    @property
    def hit_rate(self) -> np.ndarray:
        """float64 [B, N]: hits / accesses of every node over windows 1..T-1 (NaN for a node
        without accesses: a server, or no tokens)."""
        h, a = self.hits[:, 1:].sum(1), self.accesses[:, 1:].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(a > 0, h / np.where(a > 0, a, 1), np.nan)

    @property
    def status_names(self) -> np.ndarray:
        """The status as names (``"online"``, ``"offline"``)."""
        names = np.array([s.name.lower() for s in Status])
        return names[np.asarray(self.status, np.int64)]

    @property
    def info(self) -> dict:
        """The 0.x ``info`` dict, built from the typed fields (``forecast_objective``,
        ``loaded``, ``budget``, ``p50``, ``p99``); prefer the fields."""
        return {"forecast_objective": self.forecast_objective, "loaded": self.loaded, "budget": self.budget,
                "p50": self.p50, "p99": self.p99}

    def __repr__(self) -> str:
        B, T = self.objective.shape
        return (f"DynamicResult(policy={self.policy!r}, B={B}, T={T}, total mean {float(np.mean(self.total)):.6g}, "
                f"seconds={self.seconds:.4g}, compile_seconds={self.compile_seconds:.4g})")


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
    ids, user, w = call(_SAMPLE, (int(tokens),), (as_key(key), tl.windows), clock)
    return Timeline(tl.windows, ids, user, w)


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


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


def _cache_fn(static, latency, fallback, su, cu, x0, first, tokens, token_user, token_weight, nxt, slot_of_user):
    kind, warm, evict, slots, aggregation = static
    return jax.vmap(lambda lat, fb, s, c, x, f, tok, usr, tw, nx: token_caches(
        kind, warm, evict, slots, aggregation, lat, fb, s, c, x, f, tok, usr, tw, nx, slot_of_user))(
        latency, fallback, su, cu, x0, first, tokens, token_user, token_weight, nxt)


_CACHE = jax.jit(_cache_fn, static_argnums=0)


class _Setup:
    """The host-side facts of one batch of timelines that every program shares."""

    def __init__(self, tl: Timeline, solver: Any, capacity_unit, aggregation: str):
        self.tl = tl
        w = tl.windows
        self.B, self.T = tl.batch_shape[0], tl.num_windows
        self.first = jax.tree_util.tree_map(lambda a: a[:, 0], w)
        self.grid = capacity_grid(self.first, capacity_unit)
        self.su = np.asarray(self.grid.size_units, np.int32)
        self.cu = np.asarray(self.grid.capacity_units, np.int32)
        self.unit = np.asarray(self.grid.unit, np.float64).reshape(self.B)
        self.size = np.asarray(self.first.size, np.float64)  # [B, L, E]
        self.aggregation = aggregation
        self.solver = solver

    def window_config(self, *, budgeted: bool, bisect: int = 12, migration: bool | None = None) -> WindowConfig:
        return window_config(self.solver, self.tl.shape, self.grid, self.aggregation, budgeted=budgeted,
                             bisect=bisect, migration=migration)

    def deployment(self, clock: Clock) -> jax.Array:
        """x_0 solved on window 0 (free migration, the default bisection: one program for every policy)."""
        cfg = self.window_config(budgeted=False, migration=False)
        return call(_X0, (cfg,), (self.tl.windows, jnp.asarray(self.su), jnp.asarray(self.cu)), clock)

    def check_x0(self, x0) -> jax.Array:
        B = self.B
        U, N, L, E, _, _ = self.tl.shape
        a = np.asarray(x0)
        if a.shape == (N, L, E) and B == 1:
            a = a[None]
        if a.shape != (B, N, L, E) or a.dtype != bool:
            raise ValueError(f"x0: expected a bool placement [B={B}, N={N}, L={L}, E={E}], got {a.dtype} {list(a.shape)}")
        used = np.where(a, self.su[:, None, :, None], 0).sum(axis=(2, 3))
        if (used > self.cu).any():
            b, n = (int(i) for i in np.argwhere(used > self.cu)[0])
            raise ValueError(f"x0: node {n} of timeline {b} holds {used[b, n]} storage units, its capacity is "
                             f"{self.cu[b, n]} (the storage grid of the timelines' window 0)")
        return jnp.asarray(a)


def deploy(timelines: Timeline | Instance, *, solver: Any = "successive-best", capacity_unit: float | None = None,
           aggregation: str = "max") -> np.ndarray:
    """The initial deployment x_0 of :func:`run`: window 0 solved with ``solver`` (no migration cost).

    Every policy starts from it; pass it to :func:`run` as ``x0=`` to compute it once for several
    policies (what :func:`sweep` does).

    Returns:
      bool [B, N, L, E] (B = 1 for a single timeline).

    Examples:
      >>> import jax
      >>> from slimjax import dynamic
      >>> tl = dynamic.drift(jax.random.key(0), 2, 4, model="mixtral_8x7b", network={"servers": 2})
      >>> x0 = dynamic.deploy(tl, solver="successive")
      >>> r = dynamic.run(tl, "static", solver="successive", x0=x0)
      >>> bool((r.placements[:, 0] == x0).all())
      True
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")
    tl, _ = _as_batched(timelines)
    return np.asarray(_Setup(tl, solver, capacity_unit, aggregation).deployment(Clock()))


def _hits(xs: np.ndarray, tokens: np.ndarray, token_user: np.ndarray, token_weight: np.ndarray,
          dev_of_user: np.ndarray, N: int, hit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hits, accesses) int64 [B, T, N]: accesses by each device node's users; a hit when the
    device holds the expert in x_t (or ``hit`` [B, T, W, L, K] says so)."""
    B, T, W, L, K = tokens.shape
    dev = dev_of_user[token_user]  # [B, T, W]
    if hit is None:
        bi, ti = np.arange(B)[:, None, None, None, None], np.arange(T)[None, :, None, None, None]
        hit = xs[bi, ti, dev[..., None, None], np.arange(L)[None, None, None, :, None], tokens]
    valid = token_weight > 0
    onehot = (dev[..., None] == np.arange(N)) & valid[..., None]  # [B, T, W, N]
    hits = np.einsum("btwn,btw->btn", onehot.astype(np.int64), hit.sum(axis=(-1, -2)).astype(np.int64))
    return hits, onehot.sum(2).astype(np.int64) * (L * K)


def _weighted_mean(lat: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (lat * w).sum(-1) / w.sum(-1)


def run(
    timelines: Timeline | Instance,
    policy: Policy | str,
    *,
    solver: Any = "successive-best",
    devices: Any = None,
    sampled_tokens: int = 256,
    key: Any = None,
    capacity_unit: float | None = None,
    aggregation: str = "max",
    x0: Any = None,
    **options: Any,
) -> DynamicResult:
    """Run one policy over a batch of timelines.

    x_0 is the deployment solved on window 0 (no migration cost; :func:`deploy`); for
    t = 1..T-1 the policy chooses x_t from windows < t (``Hindsight``: knowing window t) and x_t
    is evaluated on window t's true routing. A per-token cache instead replays the tokens of
    windows 1..T-1 one by one through every user's device cache, starting from x_0.

    Args:
      timelines: a :class:`Timeline` (or an Instance with a window axis) ``[(B,) T, ...]``; a
        single timeline is run as a batch of one.
      policy: a policy object (:class:`Static`, :class:`Resolve`, :class:`Incremental`,
        :class:`LFU`, :class:`LRU`, :class:`Hindsight`, :class:`TokenLRU`, :class:`TokenLFU`,
        :class:`Belady`) or its name (:data:`POLICIES`) with its options as keywords (sugar, see
        :func:`as_policy`: ``run(tl, "incremental", budget=b)`` is ``run(tl, Incremental(budget=b))``).
      solver: the per-window solve and x_0: a ``Successive`` solver object or name, optionally
        chained with ``Polish`` (default ``"successive-best"``); see :func:`window_config`.
      devices: the device node of every user (default node u for user u, the layout of
        :mod:`slimjax.generate`): where the ``LRU`` and the per-token caches live and whose hits
        are counted.
      sampled_tokens: policies that replay tokens (``LRU``, the per-token caches) on timelines
        without tokens: tokens per window sampled from the routing (with ``key``).
      key: PRNG seed or key (only used to sample tokens).
      capacity_unit: the unit of the integer storage grid, as in :func:`slimjax.solve_batch`.
      aggregation: ``"max"`` or ``"sum"`` over a pattern's experts, as in :func:`slimjax.solve_batch`.
      x0: the deployment bool [B, N, L, E] (default: :func:`deploy` with ``solver``).
      **options: the policy's options when ``policy`` is a name (or changes to an object's).

    Returns:
      a :class:`DynamicResult`.

    Raises:
      ValueError: an unknown policy or option, a bad budget, penalty, device or x0.
      RuntimeError: a placement that violates storage or the budget (a bug; never expected).

    Examples:
      >>> import jax
      >>> from slimjax import dynamic
      >>> tl = dynamic.drift(jax.random.key(0), 2, 4, model="mixtral_8x7b", network={"servers": 2})
      >>> b = 0.1 * tl.windows.capacity[:, 0]
      >>> res = dynamic.run(tl, dynamic.Incremental(budget=b), solver="successive")
      >>> res.objective.shape, res.moved.shape
      ((2, 4), (2, 4, 3))
      >>> same = dynamic.run(tl, "incremental", budget=b, solver="successive")   # the name: sugar
      >>> bool((same.placements == res.placements).all())
      True
    """
    clock = Clock()
    t0 = time.perf_counter()
    pol = as_policy(policy, **options)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")
    if isinstance(sampled_tokens, bool) or not isinstance(sampled_tokens, numbers.Integral) or sampled_tokens < 1:
        raise ValueError(f"sampled_tokens: must be an integer >= 1, got {sampled_tokens!r}")
    tl, _ = _as_batched(timelines)
    st = _Setup(tl, solver, capacity_unit, aggregation)
    w = tl.windows
    B, T = st.B, st.T
    U, N, L, E, M, K = tl.shape
    budget = getattr(pol, "budget", None)
    budget_real, bud = _budget_units(budget, B, N, st.size, st.unit, st.cu)
    pen = _penalty(getattr(pol, "penalty", 0.0), B)
    replays = pol.per_token or pol.name == "lru"
    lat0 = np.asarray(w.latency[:, 0])
    try:
        devs = _devices(devices, U, N, lat0)
    except ValueError:
        if devices is not None or replays:
            raise
        devs = None  # the default layout does not fit this network: no hits to count
    if replays and not tl.has_tokens:
        tl = sample_tokens(tl, sampled_tokens, key, clock)
    x0 = st.deployment(clock) if x0 is None else st.check_x0(x0)
    cache_hit = cache_lat = None
    if pol.per_token:
        xs, loads, cache_hit, cache_lat = _run_cache(pol, tl, st, devs, x0, clock)
        fobj = None
    else:
        xs, fobj, loads = _run_placement(pol, tl, st, devs, x0, bud, pen, clock)
    J, tok_lat = call(_EVAL, (aggregation,), (w, xs, tl.tokens, tl.token_user), clock)
    xs = np.asarray(xs)
    J = np.asarray(J, np.float64)
    if not np.isfinite(J).all():
        raise RuntimeError(f"policy {pol.name!r}: non-finite J (a bug)")
    moved, loaded = _moves(pol, w, st, xs, budget_real, loads)
    fobj = np.full((B, T), np.nan) if fobj is None else np.asarray(fobj, np.float64)
    tok_J, pct, hits, acc = _token_metrics(pol, tl, xs, J, tok_lat, devs, cache_hit, cache_lat, N)
    status = np.full(B, Status.OFFLINE if pol.offline else Status.ONLINE, np.int8)
    seconds = max(time.perf_counter() - t0 - clock.compile_seconds, 0.0)
    return DynamicResult(pol.name, xs, J, tok_J, fobj, moved, loaded, hits, acc, pct["p50"], pct["p95"], pct["p99"],
                         budget_real, status, seconds, clock.compile_seconds)


def _moves(pol: Policy, w: Instance, st: _Setup, xs: np.ndarray, budget_real: np.ndarray, loads) -> tuple:
    """Bytes moved into every node per window (new copies; float64 sizes summed in float64, not
    the device's float32 sum) and bytes loaded (a cache's re-loads included), after checking the
    storage contract (slimjax._storage) in every window and the budget like a capacity."""
    size_t = np.asarray(w.size, np.float64)  # [B, T, L, E]
    prev = np.concatenate([xs[:, :1], xs[:, :-1]], axis=1)
    moved = np.einsum("btnle,btle->btn", (xs & ~prev).astype(np.float64), size_t)
    cap = np.asarray(w.capacity[:, 0], np.float64)  # [B, N]
    _check("storage", storage.fits(st.size[:, None], cap[:, None], xs), pol.name)
    _check("budget", storage.fits(st.size[:, None], budget_real[:, None], xs & ~prev), pol.name)
    loaded = moved if loads is None else np.einsum("btnle,btle->btn", np.asarray(loads).astype(np.float64), size_t)
    return moved, loaded


def _token_metrics(pol: Policy, tl: Timeline, xs: np.ndarray, J: np.ndarray, tok_lat, devs, cache_hit, cache_lat,
                   N: int) -> tuple:
    """Per-token figures: J of the replayed tokens (and, for a per-token cache, J itself from
    window 1 on), p50/p95/p99, and hits/accesses per device node (NaN and zeros without tokens)."""
    B, T = J.shape
    if tok_lat is None:
        nan = np.full((B, T), np.nan)
        zeros = np.zeros((B, T, N), np.int64)
        return nan, {"p50": nan, "p95": nan, "p99": nan}, zeros, zeros
    tok_lat = np.asarray(tok_lat, np.float64)
    tw = np.asarray(tl.token_weight, np.float64)
    tokens, users = np.asarray(tl.tokens), np.asarray(tl.token_user)
    if cache_hit is not None:
        tok_lat[:, 1:] = np.asarray(cache_lat, np.float64)
    tok_J = _weighted_mean(tok_lat, tw)
    if pol.per_token:
        J[:, 1:] = tok_J[:, 1:]
    pct = _percentiles(tok_lat, tw)
    if devs is None:
        zeros = np.zeros((B, T, N), np.int64)
        return tok_J, pct, zeros, zeros
    dev_of_user = np.asarray(devs, np.int64)
    hits, acc = _hits(xs, tokens, users, tw, dev_of_user, N)
    if cache_hit is not None:
        h1, _ = _hits(xs[:, 1:], tokens[:, 1:], users[:, 1:], tw[:, 1:], dev_of_user, N, np.asarray(cache_hit))
        hits[:, 1:] = h1
    return tok_J, pct, hits, acc


def _run_placement(pol: Policy, tl: Timeline, st: _Setup, devs, x0, bud, pen, clock):
    """The placement policies' scan: (placements [B, T, N, L, E], forecast J [B, T], loads or None)."""
    w = tl.windows
    budget = getattr(pol, "budget", None)
    bisect = int(getattr(pol, "bisect", 12))
    cfg = st.window_config(budgeted=budget is not None, bisect=bisect,
                           migration=budget is not None or bool((pen > 0).any()))
    is_lru = pol.name == "lru"
    evict = 1
    if is_lru:
        evict = int(np.max(-(-st.su.max(-1) // st.su.min(-1))))
        if budget is None:  # the LRU counts its admissions against the budget: none = unbounded
            bud = np.full_like(bud, np.iinfo(np.int32).max)
    hind = pol.name == "hindsight"  # incremental knowing window t: the same program with lag 0
    wcfg = cfg._replace(budgeted=False, migration=False) if pol.name in ("static", "lru") else cfg  # unused by them
    fc = getattr(pol, "forecast", "last")
    pcfg = PolicyConfig(policy="incremental" if hind else pol.name, window=wcfg, forecast=fc,
                        alpha=float(getattr(pol, "ema_alpha", 0.5)),
                        horizon=int(getattr(pol, "ema_horizon", 4)) if fc == "ema" else 1,
                        devices=tuple(devs) if is_lru else (0,), evict=evict)
    tok = (tl.tokens, tl.token_user, tl.token_weight) if is_lru else (None, None, None)
    lag = jnp.int32(0 if hind else 1)
    xs, info = call(_POLICY, (pcfg,), (w, *tok, jnp.asarray(st.su), jnp.asarray(st.cu), x0, jnp.asarray(bud),
                                       jnp.asarray(pen, w.size.dtype), lag), clock)
    return xs, info["forecast_objective"], (info["loads"] if is_lru else None)


def _run_cache(pol: Policy, tl: Timeline, st: _Setup, devs, x0, clock):
    """The per-token caches' replay: (placements [B, T, N, L, E] with x_0 first, loads [B, T, N, L, E],
    hit [B, T-1, W, L, K], token latency [B, T-1, W])."""
    w = tl.windows
    slots = tuple(sorted(set(int(d) for d in devs)))
    slot_of_user = np.array([slots.index(int(d)) for d in devs], np.int32)
    x0_np = np.asarray(x0)
    nxt, first = next_use(np.asarray(tl.tokens), np.asarray(tl.token_user), np.asarray(tl.token_weight),
                          slot_of_user, x0_np[:, list(slots)])
    evict = int(np.max(-(-st.su.max(-1) // st.su.min(-1))))
    static = (pol.name, bool(pol.warm), evict, slots, st.aggregation)
    args = (w.latency[:, 0], w.fallback[:, 0], jnp.asarray(st.su), jnp.asarray(st.cu), x0, jnp.asarray(first),
            tl.tokens, tl.token_user, tl.token_weight, jnp.asarray(nxt), jnp.asarray(slot_of_user))
    xs, loads, hit, lat = call(_CACHE, (static,), args, clock)
    placements = jnp.concatenate([x0[:, None], xs], axis=1)
    loads = jnp.concatenate([jnp.zeros_like(loads[:, :1]), loads], axis=1)
    return placements, loads, hit, lat
