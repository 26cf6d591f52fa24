"""Successive decomposition — SlimCaching's method for K ≥ 1 (DESIGN §4.4) — methods
``successive`` and ``successive-fast``.

Nodes are taken one after another (a fixed-trip ``lax.scan`` over a computed node order). For
each node, given what earlier nodes cache (the current expert latencies ``d``):

1. a layer oracle (:mod:`slimjax.solvers.oracle`) gives ``g[l, c]``, the best gain with at most
   ``c`` experts of layer ``l`` on this node, and the sets behind it;
2. the capacity DP over layers (:func:`slimjax.maxconv.capacity_dp`) splits the node's storage;
3. the chosen sets are committed and ``d`` is updated.

Options (``slimjax.solve(inst, method="successive", **options)``):

- ``order``: ``"fastest-first"`` (traffic-weighted mean latency over the users that reach the
  node), ``"largest-first"`` (capacity), ``"given"`` (index order), an explicit tuple of node ids,
  or ``"best-of"``: every order in ``best_of`` run in parallel (vmapped), the best J kept.
- ``oracle``: ``"exact"`` (2^E subsets), ``"greedy"`` (chain), ``"auto"`` (exact when E ≤ 12).
- ``maxconv``: ``"dense"`` (exact DP) or ``"hull"`` (concave envelopes; reports the LP bound).
- ``union_first``: ``"on"``, ``"off"`` or ``"auto"`` (= an extra best-of candidate when
  ``order="best-of"``, else off). Nodes whose capacity is below K experts of every layer cannot
  complete a pattern alone, so a pure per-node pass gains ~nothing from them; union-first treats
  them as one virtual node (capacity = their sum, latency = the slowest of them), chooses the
  union, splits it over them (most important expert first, each to the node with room where it is
  fastest), then runs the per-node pass over all nodes with the capacity left.
- ``revisit``: rounds of per-node best response after each pass (block-coordinate descent: each
  node is re-solved by its oracle + DP given all other nodes; with the exact oracle and dense DP
  J never increases). ``"auto"`` = 2 with ``order="best-of"``, else 0.
- ``restarts``: extra best-of candidates whose first pass may not use a random 25 % of the
  (node, layer, expert) copies, followed by ``revisit``; escapes the node-by-node equilibria a
  plain pass gets stuck in. Seeded by ``key``. ``"auto"`` = 8 with ``order="best-of"``, else 0.
- ``polish``: rounds of the §4.9 local search applied to the kept placement (0 = none).

The plain paper method is ``order="fastest-first", polish=0`` (``union_first``, ``revisit`` and
``restarts`` are then off).
``successive-fast`` = ``maxconv="hull"``, ``oracle="greedy"``, fastest-first, no polish.

``info``: ``order`` int [B, N] (the kept node order), ``candidate`` int [B] (its index among the
best-of candidates), ``node_gain`` [B, N] (DP value per node), ``node_bound`` [B, N] (LP bound for
``hull``, = node_gain for ``dense``), ``node_gap`` [B, N], ``latency_before_polish`` [B],
``polish_moves`` [B].
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Int

from slimjax._instance import Instance
from slimjax.ops._grid import bucket_units
from slimjax.ops._maxconv import BACKENDS, capacity_dp
from slimjax._objective import AGGREGATIONS, expert_latency_from, objective_from_d
from slimjax.ops._order import ORDERS, node_orders
from slimjax.ops._oracle import EXACT_MAX_E, exact_oracle, greedy_oracle, pattern_prep
from slimjax.solvers._registry import register
__all__ = ["SuccessiveConfig", "successive_instance", "successive_batch"]

ORACLES = ("auto", "exact", "greedy")
UNION = ("auto", "on", "off")
AUTO_EXACT_MAX_E = 12
AUTO_REVISIT = 2  # revisit rounds of "auto" with order="best-of" (small instances)
AUTO_RESTARTS = 8  # random restarts of "auto" with order="best-of" (small instances)
AUTO_REVISIT_LARGE = 1  # ... above AUTO_SMALL placement variables N·L·E
AUTO_RESTARTS_LARGE = 0
AUTO_SMALL = 512  # N·L·E up to which "auto" spends restarts (cheap there, and where they matter)


class SuccessiveConfig(NamedTuple):
    """Static (hashable) configuration of one compiled successive solver."""

    Qmax: int  # DP table size (grid units)
    orders: tuple  # candidate orders: names or tuples of node ids
    unions: tuple  # per candidate: union-first on/off
    oracle: str  # "exact" | "greedy"
    maxconv: str  # "dense" | "hull"
    polish: int  # polish rounds (0 = none)
    aggregation: str
    revisit: int = 0  # rounds of per-node best response after the pass (0 = none)
    restarts: int = 0  # extra candidates: a first pass with random experts forbidden, then revisit
    tabu: float = 0.25  # share of (node, layer, expert) forbidden in a restart's first pass
    Qunion: int = 0  # DP table size of the union-first virtual node (sum of the small capacities)


def _oracle_fn(cfg: SuccessiveConfig, patterns, tw, dup, s):
    """``fn(d, newp, q)``: the layer oracle for a node with ``q`` capacity units (``s`` [L] sizes)."""

    def fn(d, newp, q):
        if cfg.oracle == "exact":
            return exact_oracle(d, newp, patterns, tw, dup, cfg.aggregation)
        steps = min(d.shape[-1], max(cfg.Qmax, cfg.Qunion, 1))
        return greedy_oracle(d, newp, patterns, tw, dup, cfg.aggregation, steps=steps, limit=q // s)

    return fn


def _node_pass(inst, s, cap, order, d0, x0, oracle, cfg: SuccessiveConfig, tabu=None):
    """One successive pass over ``order``; returns (x, d, node_gain [N], node_bound [N]).

    ``tabu`` bool [N, L, E] (optional): copies this pass may not make.
    """
    N = inst.latency.shape[1]

    def body(carry, n):
        d, x = carry
        lat_n = jnp.take(inst.latency, n, axis=1)  # [U, L, E]
        newp = jnp.minimum(d, lat_n)
        if tabu is not None:
            newp = jnp.where(tabu[n][None], d, newp)
        g, select = oracle(d, newp, cap[n])
        res = capacity_dp(g, s, cap[n], Qmax=cfg.Qmax, backend=cfg.maxconv)
        chosen = select(res.counts)  # [L, E]
        d = jnp.where(chosen[None], newp, d)
        x = x.at[n].set(x[n] | chosen)
        return (d, x), (res.value, res.bound)

    (d, x), (vals, bounds) = lax.scan(body, (d0, x0), order)
    gain = jnp.zeros((N,), vals.dtype).at[order].set(vals)
    bound = jnp.zeros((N,), vals.dtype).at[order].set(bounds)
    return x, d, gain, bound


def _revisit(inst, s, cap, order, x, oracle, cfg: SuccessiveConfig):
    """Block-coordinate descent: re-solve each node given all the others (``cfg.revisit`` rounds).

    With the exact oracle and the dense DP this is the node's exact best response, so J never
    increases; with approximate ones a response is kept only when it does not increase J.
    """
    lat, fb = inst.latency, inst.fallback
    seq = jnp.tile(order, cfg.revisit)
    J0 = objective_from_d(inst, expert_latency_from(lat, fb, x), cfg.aggregation)

    def body(carry, n):
        x, J = carry
        others = x.at[n].set(False)
        d = expert_latency_from(lat, fb, others)
        newp = jnp.minimum(d, jnp.take(lat, n, axis=1))
        g, select = oracle(d, newp, cap[n])
        res = capacity_dp(g, s, cap[n], Qmax=cfg.Qmax, backend=cfg.maxconv)
        chosen = select(res.counts)
        J_new = objective_from_d(inst, jnp.where(chosen[None], newp, d), cfg.aggregation)
        better = J_new < J
        return (jnp.where(better, others.at[n].set(chosen), x), jnp.where(better, J_new, J)), None

    (x, J), _ = lax.scan(body, (x, J0), seq)
    return x, J


def _union_start(inst, s, cap, oracle, cfg: SuccessiveConfig, K: int):
    """Union-first: choose a union for the nodes below K experts, split it by speed.

    Returns (x0 [N, L, E], d0 [U, L, E], capacity left [N]).
    """
    U, N, L, E = inst.latency.shape
    small = (cap < K * s.min()) & (cap > 0)  # cannot complete a pattern of any layer alone
    lat = inst.latency
    lat_g = jnp.where(small[None, :, None, None], lat, -jnp.inf).max(axis=1)  # slowest member of the group
    lat_g = jnp.where(jnp.isneginf(lat_g), jnp.inf, lat_g)
    qg = jnp.minimum(jnp.where(small, cap, 0).sum(), cfg.Qunion)
    d0 = inst.fallback
    newp = jnp.minimum(d0, lat_g)
    g, select = oracle(d0, newp, qg)
    res = capacity_dp(g, s, qg, Qmax=cfg.Qunion, backend=cfg.maxconv)
    chosen = select(res.counts)  # [L, E]
    # importance of an expert: traffic-weighted pattern mass times its speed-up
    onehot_w = jnp.zeros((L * E,), d0.dtype)
    lidx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None, :, None, None], inst.patterns.shape)
    w = (inst.traffic[:, None, None] * inst.weight)[..., None] * (
        jnp.take_along_axis((d0 - newp)[:, :, None, :], inst.patterns, axis=-1)
    )
    imp = onehot_w.at[(lidx * E + inst.patterns).reshape(-1)].add(w.reshape(-1))
    prio = jnp.argsort(-imp, stable=True)  # items (l*E + e) most important first
    item_size = jnp.repeat(s, E)[prio]
    item_chosen = chosen.reshape(-1)[prio]
    # Each chosen item, most important first, goes to the small node (with room) where it is
    # fastest for the traffic (per expert, not by node averages).
    score = (inst.traffic[:, None, None, None] * jnp.minimum(lat, inst.fallback[:, None])).sum(0)  # [N, L, E]
    score = score.reshape(N, L * E)[:, prio]

    def place(carry, i):
        rem, x = carry
        ok = small & (rem >= item_size[i]) & item_chosen[i]
        n = jnp.argmin(jnp.where(ok, score[:, i], jnp.inf))
        go = ok.any()
        rem = rem.at[n].add(jnp.where(go, -item_size[i], 0))
        x = x.at[n, prio[i]].set(x[n, prio[i]] | go)
        return (rem, x), None

    (_, x0), _ = lax.scan(place, (jnp.where(small, cap, 0), jnp.zeros((N, L * E), bool)), jnp.arange(L * E))
    x0 = x0.reshape(N, L, E)
    d = expert_latency_from(lat, inst.fallback, x0)
    used = (x0.astype(jnp.int32) * s[None, :, None]).sum(axis=(1, 2))
    return x0, d, cap - used


def successive_instance(
    inst: Instance,
    size_units: Int[Array, "L"],
    capacity_units: Int[Array, "N"],
    cfg: SuccessiveConfig,
    key: Array | None = None,
) -> tuple[Bool[Array, "N L E"], dict]:
    """Successive decomposition on one instance (pure JAX; vmap it over a batch).

    Args:
      inst: one unbatched :class:`~slimjax.Instance`.
      size_units: int32 [L] expert size of each layer in grid units (>= 1).
      capacity_units: int32 [N] node capacities in grid units (<= cfg.Qmax).
      cfg: a :class:`SuccessiveConfig` (static).
      key: PRNG key of the random restarts (default ``jax.random.key(0)``).

    Returns:
      (placement bool [N, L, E], info dict of arrays; see the module docstring).
    """
    U, N, L, E = inst.latency.shape
    K = inst.patterns.shape[-1]
    if key is None:
        key = jax.random.key(0)
    s = jnp.asarray(size_units, jnp.int32)
    cap = jnp.minimum(jnp.asarray(capacity_units, jnp.int32), cfg.Qmax)
    tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
    oracle = _oracle_fn(cfg, inst.patterns, tw, dup, s)
    named = node_orders(inst.latency, inst.traffic, cap)
    C0 = len(cfg.orders)
    R = cfg.restarts
    orders = jnp.stack(
        [named[o] if isinstance(o, str) else jnp.asarray(o, jnp.int32) for o in cfg.orders]
        + [named[o] if isinstance(o, str) else jnp.asarray(o, jnp.int32) for o in (cfg.orders * R)[:R]]
    )  # [C, N]
    C = C0 + R
    unions = tuple(cfg.unions) + (False,) * R
    x_empty = jnp.zeros((N, L, E), bool)
    d_empty = inst.fallback
    if any(unions):
        xu, du, capu = _union_start(inst, s, cap, oracle, cfg, K)
        flags = jnp.asarray(unions)
        x0 = jnp.where(flags[:, None, None, None], xu[None], x_empty[None])
        d0 = jnp.where(flags[:, None, None, None], du[None], d_empty[None])
        c0 = jnp.where(flags[:, None], capu[None], cap[None])
    else:
        x0 = jnp.broadcast_to(x_empty, (C, N, L, E))
        d0 = jnp.broadcast_to(d_empty, (C,) + d_empty.shape)
        c0 = jnp.broadcast_to(cap, (C, N))
    if R > 0:
        keys = jax.random.split(key, R)
        rand = jax.vmap(lambda k: jax.random.bernoulli(k, cfg.tabu, (N, L, E)))(keys)
        tabu = jnp.concatenate([jnp.zeros((C0, N, L, E), bool), rand])
    else:
        tabu = None

    def run(order, xs, ds, cs, tb):
        x, d, gain, bound = _node_pass(inst, s, cs, order, ds, xs, oracle, cfg, tb)
        J = objective_from_d(inst, d, cfg.aggregation)
        if cfg.revisit > 0:
            x, J = _revisit(inst, s, cap, order, x, oracle, cfg)
        return x, J, gain, bound

    if C == 1:
        x, J, gain, bound = run(orders[0], x0[0], d0[0], c0[0], None)
        best = jnp.int32(0)
    else:
        xs, Js, gains, bounds = jax.vmap(run)(orders, x0, d0, c0, tabu)
        best = jnp.argmin(Js).astype(jnp.int32)
        x, J, gain, bound = xs[best], Js[best], gains[best], bounds[best]
    moves = jnp.int32(0)
    if cfg.polish > 0:
        polish_instance = _polish_fn()
        x, moves = polish_instance(inst, s, cap, x, rounds=cfg.polish, aggregation=cfg.aggregation)
    info = {
        "order": orders[best],
        "candidate": best,
        "node_gain": gain,
        "node_bound": bound,
        "node_gap": jnp.maximum(bound - gain, 0),
        "latency_before_polish": J,
        "polish_moves": jnp.asarray(moves, jnp.int32),
    }
    return x, info


def _polish_fn():
    try:
        from slimjax.solvers._polish import polish_instance
    except ImportError as err:  # pragma: no cover - depends on the polish module having landed
        raise ValueError(
            "polish: option polish > 0 needs slimjax.solvers.polish.polish_instance, which is not "
            f"available ({err}); pass polish=0"
        ) from None
    return polish_instance


@partial(jax.jit, static_argnames=("cfg",))
def successive_batch(
    batch: Instance,
    size_units: Int[Array, "B L"],
    capacity_units: Int[Array, "B N"],
    cfg: SuccessiveConfig,
    key: Array | None = None,
):
    """:func:`successive_instance` vmapped over a batch and jitted (one compile per shape and cfg).

    ``key`` (one PRNG key, shared by every instance) seeds the random restarts.
    """
    if key is None:
        key = jax.random.key(0)
    return jax.vmap(lambda i, su, cu: successive_instance(i, su, cu, cfg, key))(batch, size_units, capacity_units)


# ----------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------


def _auto(options, name: str, shape: tuple):
    """The value of option ``restarts`` or ``revisit``, with ``"auto"`` resolved: the small-instance
    or large-instance setting with ``order="best-of"`` (N·L·E ≤ :data:`AUTO_SMALL` is small), else 0."""
    value = options[name]
    if value != "auto":
        return value
    if options["order"] != "best-of":
        return 0
    _, N, L, E, _, _ = shape
    small = N * L * E <= AUTO_SMALL
    if name == "restarts":
        return AUTO_RESTARTS if small else AUTO_RESTARTS_LARGE
    return AUTO_REVISIT if small else AUTO_REVISIT_LARGE


def _config(batch: Instance, grid, options) -> SuccessiveConfig:
    U, N, L, E, M, K = batch.shape
    agg = options["aggregation"]
    if agg not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {agg!r}")
    oracle = options["oracle"]
    if oracle not in ORACLES:
        raise ValueError(f"oracle: must be one of {ORACLES}, got {oracle!r}")
    if oracle == "auto":
        oracle = "exact" if E <= AUTO_EXACT_MAX_E else "greedy"
    if oracle == "exact" and E > EXACT_MAX_E and agg == "max":
        raise ValueError(f"oracle: 'exact' needs E <= {EXACT_MAX_E} (2^E subsets), got E={E}; use oracle='greedy'")
    backend = options["maxconv"]
    if backend not in BACKENDS:
        raise ValueError(f"maxconv: must be one of {BACKENDS}, got {backend!r}")
    polish = options["polish"]
    if isinstance(polish, bool) or not isinstance(polish, (int, np.integer)) or polish < 0:
        raise ValueError(f"polish: must be an int >= 0 (rounds), got {polish!r}")
    restarts = _auto(options, "restarts", batch.shape)
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 0:
        raise ValueError(f"restarts: must be an int >= 0, got {restarts!r}")
    revisit = _auto(options, "revisit", batch.shape)
    if isinstance(revisit, bool) or not isinstance(revisit, (int, np.integer)) or revisit < 0:
        raise ValueError(f"revisit: must be an int >= 0 (rounds), got {revisit!r}")
    union = options["union_first"]
    if union not in UNION:
        raise ValueError(f"union_first: must be one of {UNION}, got {union!r}")

    def check_order(o, name):
        if isinstance(o, str):
            if o not in ORDERS:
                raise ValueError(f"{name}: unknown order {o!r}; valid orders are {ORDERS} (or a tuple of node ids)")
            return o
        ids = tuple(int(i) for i in o)
        if sorted(ids) != list(range(N)):
            raise ValueError(f"{name}: an explicit order must be a permutation of 0..{N - 1}, got {ids}")
        return ids

    order = options["order"]
    if order == "best-of":
        best_of = options["best_of"]
        if isinstance(best_of, str) or len(best_of) < 1:
            raise ValueError(f"best_of: must be a non-empty tuple of orders, got {best_of!r}")
        orders = tuple(check_order(o, "best_of") for o in best_of)
        unions = (union == "on",) * len(orders)
        if union == "auto" and agg == "max" and K >= 2:
            orders = orders + ("fastest-first",)
            unions = unions + (True,)
    else:
        orders = (check_order(order, "order"),)
        unions = (union == "on",)
    return SuccessiveConfig(
        Qmax=bucket_units(grid.max_units),
        orders=orders,
        unions=unions,
        oracle=oracle,
        maxconv=backend,
        polish=int(polish),
        aggregation=agg,
        revisit=int(revisit),
        restarts=int(restarts),
        Qunion=_union_units(grid, K) if any(unions) else 0,
    )


def _union_units(grid, K: int) -> int:
    """Static DP size of the union-first virtual node: the largest sum of small capacities."""
    su = np.asarray(grid.size_units)
    cu = np.asarray(grid.capacity_units)
    small = (cu < K * su.min(-1, keepdims=True)) & (cu > 0)
    return bucket_units(max(int((cu * small).sum(-1).max(initial=0)), int(grid.max_units)))


def _bytes(shape: tuple, max_units: int, options) -> float:
    """Working set of one instance (bytes), for the chunker. Calibrated against XLA's own
    ``memory_analysis`` of the compiled solver (mixtral, phi3.5, qwen1.5: within 1–4× above it):
    the candidates run side by side (vmapped), the polish afterwards."""
    U, N, L, E, M, K = shape
    q = bucket_units(max_units) + 1
    best = options["order"] == "best-of"
    restarts = _auto(options, "restarts", shape)
    restarts = int(restarts) if isinstance(restarts, (int, np.integer)) else 0  # bad values are refused by _config
    C = (len(options["best_of"]) + 1 if best else 1) + restarts
    exact = options["oracle"] == "exact" or (options["oracle"] == "auto" and E <= AUTO_EXACT_MAX_E)
    oracle = 4 * (L * 2**E * (E + 2) + U * L * M * 2**K * 4) if exact else 4 * U * L * M * K * 16
    dp = 4 * q * (E + 1) * 3 + 4 * L * q
    inst = 4 * (U * N * L * E + 2 * U * L * E + U * L * M * (K + 1))
    pol = 4.0 * (0.35 * U * L * M * E * E + 16 * (U * N * L * E + U * L * M * K)) if options["polish"] else 0.0
    return 4 * inst + max(C * (oracle + dp + 4 * N * L * E), pol)


def _run(batch, grid, options, key=None):
    cfg = _config(batch, grid, options)
    x, info = successive_batch(
        batch, jnp.asarray(grid.size_units, jnp.int32), jnp.asarray(grid.capacity_units, jnp.int32), cfg, key
    )
    return x, info


SUCCESSIVE_DEFAULTS = {
    "order": "best-of",
    "best_of": ("fastest-first", "largest-first", "given"),
    "oracle": "auto",
    "maxconv": "dense",
    "union_first": "auto",
    "revisit": "auto",
    "restarts": "auto",
    "polish": 16,
}
# successive-fast: the same options, with the accelerated backends and the plain node order.
FAST_DEFAULTS = dict(SUCCESSIVE_DEFAULTS, order="fastest-first", oracle="greedy", maxconv="hull", polish=0)


@register(
    "successive",
    defaults=SUCCESSIVE_DEFAULTS,
    description="SlimCaching successive decomposition: per-node layer oracle + (max,+) DP over layers, §4.4",
    bytes_per_instance=_bytes,
)
def _successive_method(batch, grid, key, options, **extra):
    """Successive decomposition (see the module docstring)."""
    return _run(batch, grid, options, key)


@register(
    "successive-fast",
    defaults=FAST_DEFAULTS,
    description="Successive decomposition with the hull (max,+) backend and the greedy layer oracle, §4.3-4.4",
    bytes_per_instance=_bytes,
)
def _successive_fast_method(batch, grid, key, options, **extra):
    """Accelerated successive decomposition (hull DP, greedy chain oracle)."""
    return _run(batch, grid, options, key)
