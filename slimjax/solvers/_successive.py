"""Successive decomposition — SlimCaching's method for K ≥ 1 — the solver :class:`Successive`.

Nodes are taken one after another (a fixed-trip ``lax.scan`` over a computed node order). For
each node, given what earlier nodes cache (the current expert latencies ``d``):

1. a layer oracle (:mod:`slimjax.ops`) gives ``g[l, c]``, the best gain with at most ``c``
   experts of layer ``l`` on this node, and the sets behind it;
2. the capacity DP over layers (:func:`slimjax.ops.capacity_dp`) splits the node's storage;
3. the chosen sets are committed and ``d`` is updated.

``Successive()`` with its defaults is the paper's method (fastest-first order, exact layer
oracle where E ≤ 12, dense DP, nothing else). The options below add what goes beyond it (best-of
orders, union-first, revisits, random restarts); the strongest configuration is the named solver
``"successive-best"`` = ``chain(Successive(order="best-of", union_first="auto", revisit="auto",
restarts="auto"), Polish(rounds=16))``.

- ``order``: ``"fastest-first"`` (traffic-weighted mean latency over the users that reach the
  node), ``"largest-first"`` (capacity), ``"given"`` (index order), ``"slowest-first"``,
  ``"smallest-first"``, an explicit tuple of node ids, or ``"best-of"``: every order in
  ``best_of`` run in parallel (vmapped), the best J kept.
- ``union_first``: nodes whose capacity is below K experts of every layer cannot complete a
  pattern alone, so a pure per-node pass gains ~nothing from them; union-first treats them as one
  virtual node (capacity = their sum, latency = the slowest of them), chooses the union, splits
  it over them (most important expert first, each to the node with room where it is fastest),
  then runs the per-node pass over all nodes with the capacity left. ``"auto"`` = an extra
  best-of candidate when ``order="best-of"``.
- ``revisit``: rounds of per-node best response after each pass (block-coordinate descent; with
  the exact oracle and the dense DP J never increases).
- ``restarts``: extra best-of candidates whose first pass may not use a random share ``tabu`` of
  the (node, layer, expert) copies, followed by ``revisit``; seeded by the instance's key.

``info``: ``order`` int [B, N] (the kept node order), ``candidate`` int [B] (its index among the
candidates), ``node_gain`` [B, N] (DP value per node), ``node_bound`` [B, N] (an upper bound on
each node's DP optimum: = node_gain for ``dense``), ``node_gap`` [B, N].
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Int

from slimjax._instance import Instance
from slimjax._objective import AGGREGATIONS, expert_latency_from, objective_from_d
from slimjax.ops import (
    BACKENDS,
    EXACT_MAX_E,
    ORDERS,
    bucket_units,
    capacity_dp,
    exact_oracle,
    greedy_oracle,
    node_orders,
    pattern_prep,
)
from slimjax.solvers._base import Prepared, Solver, check_choice, check_float, check_int, document_options, option

__all__ = ["Successive", "SuccessiveConfig", "successive_instance", "successive_batch"]

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
    maxconv: str  # one of BACKENDS
    aggregation: str
    revisit: int = 0  # rounds of per-node best response after the pass (0 = none)
    restarts: int = 0  # extra candidates: a first pass with random experts forbidden, then revisit
    tabu: float = 0.25  # share of (node, layer, expert) forbidden in a restart's first pass
    Qunion: int = 0  # DP table size of the union-first virtual node (sum of the small capacities)
    sequential: bool = False  # candidates one after another (twins skipped) instead of side by side


#: pattern members U·L·M·K from which the candidates run one after another (see :func:`successive_instance`)
SEQUENTIAL_MIN_MEMBERS = 2**17


def _maybe(pred, fn, default, args):
    """``fn(*args)`` when ``pred`` else ``default``, as a ``while_loop`` of 0 or 1 trips: unlike
    ``lax.cond`` it stays a branch under ``vmap`` (the trip runs only when some lane needs it).

    ``args`` enter the body through an optimization barrier together with the loop's predicate, so
    that what ``fn`` computes depends on the loop carry. Otherwise everything in the body depends
    only on values fixed during the loop, and XLA's while-loop-invariant code motion hoists it out
    of the loop, where it runs whatever ``pred`` is (the vmapped programs did: every skipped
    candidate and revisit ran all the same).
    """

    def body(c):
        _, a = lax.optimization_barrier((c[0], args))
        return jnp.zeros((), bool), fn(*a)

    return lax.while_loop(lambda c: c[0], body, (jnp.asarray(pred), default))[1]


def _oracle_fn(cfg: SuccessiveConfig, patterns, tw, dup, s):
    """``fn(d, newp, q)``: the layer oracle for a node with ``q`` capacity units (``s`` [L] sizes)."""

    def fn(d, newp, q):
        if cfg.oracle == "exact":
            return exact_oracle(d, newp, patterns, tw, dup, cfg.aggregation)
        steps = min(d.shape[-1], max(cfg.Qmax, cfg.Qunion, 1))
        return greedy_oracle(d, newp, patterns, tw, dup, cfg.aggregation, steps=steps, limit=q // s)

    return fn


#: step kinds of the one scan that runs a candidate (see :func:`successive_instance`)
_UNION, _PASS, _REVISIT = 0, 1, 2


def _union_plan(inst, s, cap, cfg: SuccessiveConfig, K: int):
    """Union-first, what does not depend on the candidate: the virtual node of the nodes below K
    experts of every layer (latency = the slowest of them, capacity = their sum) and the data of
    the split of its chosen set over them.

    Returns (lat_g [U, L, E], qg [], place: chosen bool [L, E] -> x0 bool [N, L, E]).
    """
    U, N, L, E = inst.latency.shape
    small = (cap < K * s.min()) & (cap > 0)  # cannot complete a pattern of any layer alone
    lat = inst.latency
    lat_g = jnp.where(small[None, :, None, None], lat, -jnp.inf).max(axis=1)  # slowest member of the group
    lat_g = jnp.where(jnp.isneginf(lat_g), jnp.inf, lat_g)
    qg = jnp.minimum(jnp.where(small, cap, 0).sum(), cfg.Qunion)
    d0 = inst.fallback
    newp = jnp.minimum(d0, lat_g)
    # importance of an expert: traffic-weighted pattern mass times its speed-up
    lidx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None, :, None, None], inst.patterns.shape)
    w = (inst.traffic[:, None, None] * inst.weight)[..., None] * (
        jnp.take_along_axis((d0 - newp)[:, :, None, :], inst.patterns, axis=-1)
    )
    imp = jnp.zeros((L * E,), d0.dtype).at[(lidx * E + inst.patterns).reshape(-1)].add(w.reshape(-1))
    prio = jnp.argsort(-imp, stable=True)  # items (l*E + e) most important first
    item_size = jnp.repeat(s, E)[prio]
    # Each chosen item, most important first, goes to the small node (with room) where it is
    # fastest for the traffic (per expert, not by node averages).
    score = (inst.traffic[:, None, None, None] * jnp.minimum(lat, inst.fallback[:, None])).sum(0)  # [N, L, E]
    score = score.reshape(N, L * E)[:, prio]

    def place(chosen):
        item_chosen = chosen.reshape(-1)[prio]

        def step(carry, i):
            rem, x = carry
            ok = small & (rem >= item_size[i]) & item_chosen[i]
            n = jnp.argmin(jnp.where(ok, score[:, i], jnp.inf))
            go = ok.any()
            rem = rem.at[n].add(jnp.where(go, -item_size[i], 0))
            x = x.at[n, prio[i]].set(x[n, prio[i]] | go)
            return (rem, x), None

        (_, x0), _ = lax.scan(step, (jnp.where(small, cap, 0), jnp.zeros((N, L * E), bool)), jnp.arange(L * E))
        return x0.reshape(N, L, E)

    return lat_g, qg, place


def _candidates(inst, cap, cfg: SuccessiveConfig, key):
    """The candidates: node orders int [C, N], union-first flags (C) and restart tabu masks bool [C, N, L, E]."""
    N, L, E = inst.latency.shape[1:]
    named = node_orders(inst.latency, inst.traffic, cap)
    C0 = len(cfg.orders)
    R = cfg.restarts
    orders = jnp.stack(
        [named[o] if isinstance(o, str) else jnp.asarray(o, jnp.int32) for o in cfg.orders]
        + [named[o] if isinstance(o, str) else jnp.asarray(o, jnp.int32) for o in (cfg.orders * R)[:R]]
    )  # [C, N]
    C = C0 + R
    unions = tuple(cfg.unions) + (False,) * R
    if R > 0:
        keys = jax.random.split(key, R)
        rand = jax.vmap(lambda k: jax.random.bernoulli(k, cfg.tabu, (N, L, E)))(keys)
        tabu = jnp.concatenate([jnp.zeros((C0, N, L, E), bool), rand])
    else:
        tabu = jnp.zeros((C, 1, 1, 1), bool)  # never read
    return orders, unions, tabu


def _schedule(orders, has_union: bool, revisit: int):
    """The steps of every candidate: kinds int [T] (shared), nodes int [C, T] (each one's order), step ids [T]."""
    C, N = orders.shape
    kinds = [_UNION] * has_union + [_PASS] * N + [_REVISIT] * (N * revisit)
    first_pass = int(has_union)
    nodes = jnp.concatenate([jnp.zeros((C, first_pass), jnp.int32)] + [orders] * (1 + revisit), axis=1)  # [C, T]
    return jnp.asarray(kinds, jnp.int32), nodes, jnp.arange(len(kinds), dtype=jnp.int32)


def _step(inst, s, cap, cfg: SuccessiveConfig, oracle, union, Qdp: int, tabu_c, q_union_c, carry, xs):
    """One step of a candidate's scan (union node, pass or revisit): oracle, capacity DP and commit."""
    if cfg.sequential and cfg.revisit > 0:
        return _step_skipping(inst, s, cap, cfg, oracle, union, Qdp, tabu_c, q_union_c, carry, xs)
    return _step_core(inst, s, cap, cfg, oracle, union, Qdp, tabu_c, q_union_c, carry, xs)


def _step_skipping(inst, s, cap, cfg: SuccessiveConfig, oracle, union, Qdp: int, tabu_c, q_union_c, carry, xs):
    """:func:`_step` that skips a revisit whose inputs equal those of the node's last evaluation.

    ``ver`` counts the steps that changed (x, J); ``last[n]`` is ``ver`` after node n's last plain
    evaluation (a revisit, or a pass that started from an empty node without tabu), else -1. A
    revisit of n with ``last[n] == ver`` sees the same d, newp and capacity as that evaluation, so
    it would choose the same set and get the same J: x is unchanged and J does not drop.
    """
    x, J, ver, last = carry
    t, kind, n = xs
    skip = (kind == _REVISIT) & (last[n] == ver)
    zero = jnp.zeros((), inst.fallback.dtype)
    (x_new, J_new), (val, bnd) = _maybe(
        ~skip, lambda x_, J_, xs_: _step_core(inst, s, cap, cfg, oracle, union, Qdp, tabu_c, q_union_c, (x_, J_), xs_),
        ((x, J), (zero, zero)), (x, J, xs))
    changed = (x_new != x).any() | (J_new != J)
    ver_new = ver + changed.astype(jnp.int32)
    keep = x[n] & (kind == _PASS)
    tabu_on = tabu_c[n].any() if cfg.restarts > 0 else jnp.zeros((), bool)
    plain = (kind == _REVISIT) | ((kind == _PASS) & ~keep.any() & ~tabu_on)
    last = jnp.where(skip, last, last.at[n].set(jnp.where(plain, ver_new, -1)))
    return (x_new, J_new, ver_new, last), (val, bnd)


def _step_core(inst, s, cap, cfg: SuccessiveConfig, oracle, union, Qdp: int, tabu_c, q_union_c, carry, xs):
    lat, fb = inst.latency, inst.fallback
    has_union = union is not None
    x, J = carry
    t, kind, n = xs
    is_pass = kind == _PASS
    keep = x[n] & is_pass  # a pass adds to what the node holds; a revisit re-chooses it
    others = x.at[n].set(keep)
    d = expert_latency_from(lat, fb, others)
    row = jnp.take(lat, n, axis=1)  # [U, L, E]
    if has_union:
        lat_g, place = union
        row = jnp.where(kind == _UNION, lat_g, row)
    newp = jnp.minimum(d, row)
    if cfg.restarts > 0:
        newp = jnp.where(tabu_c[n][None] & is_pass, d, newp)
    q = jnp.where(is_pass, cap[n] - (keep.astype(jnp.int32) * s[:, None]).sum(), cap[n])
    if has_union:
        q = jnp.where(kind == _UNION, q_union_c, q)
    g, select = oracle(d, newp, q)
    res = capacity_dp(g, s, q, Qmax=Qdp, backend=cfg.maxconv)
    chosen = select(res.counts)  # [L, E]
    x_new = x.at[n].set(keep | chosen)
    if cfg.revisit > 0:  # revisits keep a response only when J drops
        J_new = objective_from_d(inst, jnp.where(chosen[None], newp, d), cfg.aggregation)
        better = (kind != _REVISIT) | (J_new < J)
        x_new = jnp.where(better, x_new, x)
        J = jnp.where(better, J_new, J)
    if has_union:  # the union's chosen set is split over the small nodes (first step only)
        x_new = lax.cond(t == 0, lambda: place(chosen), lambda: x_new)
    return (x_new, J), (res.value, res.bound)


def _run_candidate(inst, s, cap, cfg: SuccessiveConfig, oracle, union, Qdp: int, C: int, kinds, steps,
                   nodes_c, tabu_c, q_union_c):
    """One candidate: the scan over its schedule; (x, J, node gain [N], node bound [N])."""
    N, L, E = inst.latency.shape[1:]
    lat, fb = inst.latency, inst.fallback
    first_pass = int(union is not None)
    body = partial(_step, inst, s, cap, cfg, oracle, union, Qdp, tabu_c, q_union_c)
    init = (jnp.zeros((N, L, E), bool), jnp.zeros((), fb.dtype))
    if cfg.sequential and cfg.revisit > 0:
        init = init + (jnp.int32(0), jnp.full((N,), -1, jnp.int32))
    (x, J, *_), (vals, bounds) = lax.scan(body, init, (steps, kinds, nodes_c))
    if cfg.revisit == 0 and C > 1:
        J = objective_from_d(inst, expert_latency_from(lat, fb, x), cfg.aggregation)
    order = nodes_c[first_pass : first_pass + N]
    gain = jnp.zeros((N,), vals.dtype).at[order].set(vals[first_pass : first_pass + N])
    bound = jnp.zeros((N,), vals.dtype).at[order].set(bounds[first_pass : first_pass + N])
    return x, J, gain, bound


def successive_instance(
    inst: Instance,
    size_units: Int[ArrayLike, "L"],
    capacity_units: Int[ArrayLike, "N"],
    cfg: SuccessiveConfig,
    key: Array | None = None,
) -> tuple[Bool[Array, "N L E"], dict]:
    """Successive decomposition on one instance (pure JAX; vmap it over a batch).

    Every candidate (an order, with or without union-first, or a restart) is one fixed-trip
    ``lax.scan`` over a schedule of steps, and every step is the same traced code: one layer
    oracle, one capacity DP and a commit. A step is the union-first virtual node (first, when a
    candidate uses it), a pass over one node (the node keeps what it holds and gets the capacity
    left) or a revisit of one node (its copies are re-chosen given all the others and kept only
    when J drops). The candidates run side by side (``vmap``) and the best J is kept; so the
    compiled program holds one oracle and one DP whatever the options.

    Args:
      inst: one unbatched :class:`~slimjax.Instance`.
      size_units: int32 [L] expert size of each layer in grid units (>= 1).
      capacity_units: int32 [N] node capacities in grid units (<= cfg.Qmax).
      cfg: a :class:`SuccessiveConfig` (static).
      key: PRNG key of the random restarts (default ``jax.random.key(0)``).

    Returns:
      (placement bool [N, L, E], info dict of arrays; see the module docstring).
    """
    K = inst.patterns.shape[-1]
    if key is None:
        key = jax.random.key(0)
    s = jnp.asarray(size_units, jnp.int32)
    cap = jnp.minimum(jnp.asarray(capacity_units, jnp.int32), cfg.Qmax)
    tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
    oracle = _oracle_fn(cfg, inst.patterns, tw, dup, s)
    orders, unions, tabu = _candidates(inst, cap, cfg, key)
    C = orders.shape[0]
    has_union = any(unions)
    Qdp = max(cfg.Qmax, cfg.Qunion) if has_union else cfg.Qmax
    if has_union:
        lat_g, qg, place = _union_plan(inst, s, cap, cfg, K)
        union = (lat_g, place)
        q_union = jnp.where(jnp.asarray(unions), qg, 0)  # [C]: 0 = the step is a no-op
    else:
        union, q_union = None, jnp.zeros((C,), jnp.int32)

    # The schedule: kinds are the same for every candidate, nodes follow each candidate's order.
    kinds, nodes, steps = _schedule(orders, has_union, cfg.revisit)
    run = partial(_run_candidate, inst, s, cap, cfg, oracle, union, Qdp, C, kinds, steps)
    if C == 1:
        x, J, gain, bound = run(nodes[0], tabu[0], q_union[0])
        best = jnp.int32(0)
    else:
        if cfg.sequential:
            xs, Js, gains, bounds = _run_sequential(run, nodes, tabu, q_union, inst.fallback.dtype)
        else:
            xs, Js, gains, bounds = jax.vmap(run)(nodes, tabu, q_union)
        best = jnp.argmin(Js).astype(jnp.int32)
        x, J, gain, bound = xs[best], Js[best], gains[best], bounds[best]
    info = {
        "order": orders[best],
        "candidate": best,
        "node_gain": gain,
        "node_bound": bound,
        "node_gap": jnp.maximum(bound - gain, 0),
    }
    return x, info


def _run_sequential(run, nodes, tabu, q_union, dt):
    """The candidates one after another; a twin of an earlier one (same order, union capacity and
    tabu mask: the same computation) is skipped and gets J = inf, so ``argmin`` keeps the earlier."""
    C, N = nodes.shape
    same = (nodes[:, None] == nodes[None]).all(-1) & (q_union[:, None] == q_union[None])
    same = same & (tabu[:, None] == tabu[None]).reshape(C, C, -1).all(-1)
    twin = (same & jnp.tril(jnp.ones((C, C), bool), -1)).any(-1)
    shapes = jax.eval_shape(run, nodes[0], tabu[0], q_union[0])
    none = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    none = (none[0], jnp.full((), jnp.inf, dt), none[2], none[3])

    def body(i, acc):
        out = _maybe(~twin[i], run, none, (nodes[i], tabu[i], q_union[i]))
        return jax.tree.map(lambda a, o: a.at[i].set(o), acc, out)

    acc = jax.tree.map(lambda a: jnp.zeros((C,) + a.shape, a.dtype), none)
    return lax.fori_loop(0, C, body, acc)


@partial(jax.jit, static_argnames=("cfg",))
def successive_batch(
    batch: Instance,
    size_units: Int[Array, "B L"],
    capacity_units: Int[Array, "B N"],
    cfg: SuccessiveConfig,
    keys: Array | None = None,
):
    """:func:`successive_instance` vmapped over a batch and jitted (one compile per shape and cfg).

    ``keys`` [B] (one PRNG key per instance) seed the random restarts; default ``key(0)`` for all.
    """
    if keys is None:
        keys = jnp.broadcast_to(jax.random.key(0), (batch.latency.shape[0],))
    return jax.vmap(lambda i, su, cu, k: successive_instance(i, su, cu, cfg, k))(batch, size_units, capacity_units, keys)


# ----------------------------------------------------------------------------------------------
# The solver object
# ----------------------------------------------------------------------------------------------


def _resolve_auto(value, name: str, order, shape: tuple) -> int:
    """Option ``restarts`` or ``revisit`` with ``"auto"`` resolved: the small-instance or
    large-instance setting with ``order="best-of"`` (N·L·E ≤ :data:`AUTO_SMALL` is small), else 0."""
    if value != "auto":
        return int(value)
    if order != "best-of":
        return 0
    _, N, L, E, _, _ = shape
    small = N * L * E <= AUTO_SMALL
    if name == "restarts":
        return AUTO_RESTARTS if small else AUTO_RESTARTS_LARGE
    return AUTO_REVISIT if small else AUTO_REVISIT_LARGE


def _check_order(o, name: str):
    if isinstance(o, str):
        if o not in ORDERS:
            raise ValueError(f"{name}: unknown order {o!r}; valid orders are {ORDERS} (or a tuple of node ids)")
        return
    try:
        ids = tuple(int(i) for i in o)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be an order name {ORDERS} or a tuple of node ids, got {o!r}") from None
    if sorted(ids) != list(range(len(ids))):
        raise ValueError(f"{name}: an explicit order must be a permutation of 0..N-1, got {ids}")


#: DP working memory above which a dense successive refuses the grid (share of the memory budget)
DENSE_DP_SHARE = 0.5


@document_options
@dataclasses.dataclass(frozen=True)
class Successive(Solver):
    """SlimCaching's successive decomposition: per node, a layer oracle and a (max,+) DP over layers.

    The defaults are the paper's method (fastest-first, exact layer oracle for E ≤ 12, dense DP,
    nothing else); see the module :mod:`slimjax.solvers._successive` for what each extension does.
    Cost: one oracle + DP per node and candidate; ``exact`` oracle O(L·(M·K·2^K + E·2^E)) per node,
    ``dense`` DP O(L·Q·E) with Q the node's capacity in grid units, ``hull`` O(L·E·log(L·E)).
    """

    name: ClassVar[str] = "successive"
    order: Any = option("fastest-first", f"node order: one of {ORDERS}, 'best-of' (every order of best_of in "
                        "parallel, best J kept; cost x candidates) or a tuple of node ids")
    best_of: tuple | list = option(("fastest-first", "largest-first", "given"),
                            "candidate orders of order='best-of' (names or tuples of node ids)")
    oracle: str = option("auto", "layer oracle: 'exact' (all 2^E subsets, E <= 16), 'greedy' (a chain of growing "
                         "sets incl. pattern completions), 'auto' (exact when E <= 12)")
    maxconv: str = option("dense", f"capacity DP backend, one of {BACKENDS}: 'dense' is exact (O(L*Q*E) per node); "
                          "'fptas' is >= (1 - 0.1)*optimum per node in time independent of Q; 'hull' (concave "
                          "envelopes) can lose much on real curves (see slimjax.ops.capacity_dp)")
    union_first: str = option("off", "'on', 'off' or 'auto' (an extra best-of candidate when order='best-of'): "
                              "choose one union for the nodes below K experts, then split it by speed")
    revisit: Any = option(0, "rounds of per-node best response after each pass (int >= 0, or 'auto' = 2 on small "
                          "instances with order='best-of', 1 on large ones); cost ~ one pass per round")
    restarts: Any = option(0, "extra best-of candidates whose first pass forbids a random share tabu of the copies "
                           "(int >= 0, or 'auto' = 8 when N*L*E <= 512 with order='best-of', else 0)")
    tabu: float = option(0.25, "share of (node, layer, expert) copies a restart's first pass may not use, in (0, 1)")

    def validate(self) -> None:
        if self.order != "best-of":
            _check_order(self.order, "order")
        if isinstance(self.best_of, str) or not isinstance(self.best_of, tuple) or len(self.best_of) < 1:
            raise ValueError(f"best_of: must be a non-empty tuple of orders, got {self.best_of!r}")
        for o in self.best_of:
            _check_order(o, "best_of")
        check_choice("oracle", self.oracle, ORACLES)
        check_choice("maxconv", self.maxconv, BACKENDS)
        check_choice("union_first", self.union_first, UNION)
        check_int("revisit", self.revisit, 0, auto=True)
        check_int("restarts", self.restarts, 0, auto=True)
        check_float("tabu", self.tabu, 0.0, 1.0, open_lo=True)
        if self.tabu >= 1.0:
            raise ValueError(f"tabu: must be in (0, 1), got {self.tabu!r}")

    def config(self, shape: tuple, grid, aggregation: str) -> SuccessiveConfig:
        """The static :class:`SuccessiveConfig` of this solver on a batch of ``shape`` and ``grid``."""
        U, N, L, E, M, K = shape
        oracle = self.oracle
        if oracle == "auto":
            oracle = "exact" if E <= AUTO_EXACT_MAX_E else "greedy"
        if oracle == "exact" and E > EXACT_MAX_E and aggregation == "max":
            raise ValueError(f"oracle: 'exact' needs E <= {EXACT_MAX_E} (2^E subsets), got E={E}; use oracle='greedy'")

        def perm(o, name):
            if isinstance(o, str):
                return o
            ids = tuple(int(i) for i in o)
            if len(ids) != N:
                raise ValueError(f"{name}: an explicit order must be a permutation of 0..{N - 1}, got {ids}")
            return ids

        restarts = _resolve_auto(self.restarts, "restarts", self.order, shape)
        if self.order == "best-of":
            orders = tuple(perm(o, "best_of") for o in self.best_of)
            unions = (self.union_first == "on",) * len(orders)
            if self.union_first == "auto" and aggregation == "max" and K >= 2:
                orders = orders + ("fastest-first",)
                unions = unions + (True,)
        else:
            orders = (perm(self.order, "order"),)
            unions = (self.union_first == "on",)
        return SuccessiveConfig(
            Qmax=bucket_units(grid.max_units),
            orders=orders,
            unions=unions,
            oracle=oracle,
            maxconv=self.maxconv,
            aggregation=aggregation,
            revisit=_resolve_auto(self.revisit, "revisit", self.order, shape),
            restarts=restarts,
            tabu=float(self.tabu),
            Qunion=_union_units(grid, K) if any(unions) else 0,
            sequential=len(orders) + restarts > 1 and U * L * M * K >= SEQUENTIAL_MIN_MEMBERS,
        )

    def prepare(self, batch, grid, aggregation):
        return Prepared(static=self.config(batch.shape, grid, aggregation))

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        return successive_batch(batch, size_units, capacity_units, static, keys)

    def bytes_per_instance(self, shape, static) -> float:
        return _bytes(shape, static)

    def check_memory(self, shape, static, budget_bytes: float, grid) -> None:
        """Refuse a dense DP whose table alone exceeds :data:`DENSE_DP_SHARE` of the budget."""
        if static.maxconv != "dense":
            return
        U, N, L, E, M, K = shape
        q = max(static.Qmax, static.Qunion) + 1
        need = (4.0 * q * (E + 1) * 3 + 8.0 * L * q) * len(static.orders + ((),) * static.restarts)
        if need > DENSE_DP_SHARE * budget_bytes:
            raise ValueError(
                f"capacity_unit: the storage grid has {static.Qmax} units per node, so the dense DP needs about "
                f"{need / 2**20:.0f} MB per instance, more than {DENSE_DP_SHARE:.0%} of memory_budget_mb "
                f"({budget_bytes / 2**20:.0f} MB); choose a coarser capacity_unit (e.g. the smallest expert size, "
                "the default), raise memory_budget_mb, or use an accelerated maxconv"
            )


def _union_units(grid, K: int) -> int:
    """Static DP size of the union-first virtual node: the largest sum of small capacities."""
    su = np.asarray(grid.size_units)
    cu = np.asarray(grid.capacity_units)
    small = (cu < K * su.min(-1, keepdims=True)) & (cu > 0)
    return bucket_units(max(int((cu * small).sum(-1).max(initial=0)), int(grid.max_units)))


def _bytes(shape: tuple, cfg: SuccessiveConfig) -> float:
    """Working set of one instance (bytes), for the chunker. Calibrated against XLA's own
    ``memory_analysis`` of the compiled solver (mixtral, phi3.5, qwen1.5: within 1–4x above it;
    measuring it per shape would cost two extra compilations per call): the candidates run side
    by side (vmapped)."""
    U, N, L, E, M, K = shape
    q = max(cfg.Qmax, cfg.Qunion) + 1
    C = len(cfg.orders) + cfg.restarts
    exact = cfg.oracle == "exact"
    oracle = 4 * (L * 2**E * (E + 2) + U * L * M * 2**K * 4) if exact else 4 * U * L * M * K * 16
    dp = 4 * q * (E + 1) * 3 + 4 * L * q
    inst = 4 * (U * N * L * E + 2 * U * L * E + U * L * M * (K + 1))
    return 4 * inst + C * (oracle + dp + 4 * N * L * E)
