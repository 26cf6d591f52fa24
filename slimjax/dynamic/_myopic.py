"""The per-window problem with migration, and its solver (pure JAX on one window).

Given the placement ``x_prev`` of the previous window, a window's (forecast) routing, a
migration budget ``budget[n]`` per node and a penalty ``λ`` per unit of size moved:

    minimize   J(x) + λ · Σ_n moved_n(x)
    subject to Σ_{l,e} size[l,e]·x[n,l,e] ≤ capacity[n],   moved_n(x) ≤ budget[n],
    moved_n(x) = Σ_{l,e} size[l,e] · x[n,l,e] · (1 − x_prev[n,l,e])

(keeping a copy is free, making one the node did not hold moves its size into the node,
dropping is free). :func:`window_solve` is the successive decomposition of the paper with the
migration priced inside the per-node step:

1. **node pass**, nodes in order (every candidate order of ``best-of`` in parallel, vmapped):
   the layer oracle gets the item cost ``(λ + μ_n) · size · new`` (``new`` = not held before),
   so ``g[l, c]`` is the best net gain; the capacity DP splits the node's storage. With a budget
   the multiplier ``μ_n`` of node n's budget is found by a fixed number of geometric bisection
   steps between 0 and a value at which no new copy can pay off; the best budget-feasible choice
   seen is kept, and a **repair** drops the node's new copies should it still exceed the budget
   (float noise), so the budget always holds;
2. **revisit**: rounds of per-node best response given the other nodes, kept when the net
   objective falls;
3. **local search**: fixed rounds of the best exact improving move among adds, drops and
   one-node swaps that respect storage and budget (deltas from the exact gain kernels; the top
   candidates are re-evaluated exactly);
4. **keep**: when migration has a price (a finite budget that can bind, or λ > 0), copies held
   before that were dropped are put back while storage remains (free, J never increases), and
   the previous placement itself is returned if it is better. When migration is free nothing
   depends on ``x_prev``: the solve is the from-scratch solve.

With ``budget = 0`` no copy can be made, so the result is ``x_prev`` exactly. Sizes are on the
integer storage grid (rounded up; capacities and budgets rounded down), so a grid-feasible
placement is feasible in real units.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from slimjax._instance import Instance
from slimjax._objective import expert_latency_from, objective_from_d
from slimjax.ops import (
    add_gain_layer,
    capacity_dp,
    drop_loss_layer,
    exact_oracle,
    expert_frequency,
    greedy_oracle,
    node_orders,
    pattern_prep,
    pattern_top,
    priority_fill,
    second_best,
)

__all__ = ["WindowConfig", "window_solve", "net_objective", "moved_units"]

#: geometric bisection range of the budget multiplier: [mu_hi · 2^-BISECT_OCTAVES, mu_hi]
BISECT_OCTAVES = 24


class WindowConfig(NamedTuple):
    """Static (hashable) configuration of the per-window solve.

    Qmax: DP table size (grid units). orders: candidate node orders (names or id tuples).
    oracle: "exact" | "greedy". maxconv: DP backend. aggregation: "max" | "sum".
    revisit: rounds of per-node best response. rounds: local-search rounds.
    budgeted: a migration budget is given (enables the bisection). bisect: its steps.
    migration: migration may have a price in this program (a budget or a penalty > 0 somewhere):
    enables the start from ``x_prev``, the keep step and the comparison with ``x_prev``; False
    is the from-scratch solve.
    moves: candidate moves re-evaluated exactly per local-search round. swap_k: adds × drops per
    node combined into swaps.
    stop_early: with a budget, stop a node's attempts as soon as μ = 0 fits the budget (the
    budget does not bind: the node's optimum); the same results as running all ``2 + bisect``
    attempts (False, the 1.0 route, kept for comparisons).
    """

    Qmax: int
    orders: tuple
    oracle: str
    maxconv: str
    aggregation: str
    revisit: int = 1
    rounds: int = 16
    budgeted: bool = False
    bisect: int = 12
    migration: bool = False
    moves: int = 8
    swap_k: int = 8
    stop_early: bool = True


def moved_units(su: Int[Array, "L"], x: Bool[Array, "N L E"], x_prev: Bool[Array, "N L E"]) -> Int[Array, "N"]:
    """Grid units moved into every node: Σ size_units · x · ¬x_prev, int32 [N]."""
    return jnp.where(x & ~x_prev, su[None, :, None], 0).sum(axis=(1, 2))


def net_objective(inst: Instance, x, new_size, penalty, aggregation: str) -> Float[Array, ""]:
    """J(x) + penalty · Σ size of the new copies (``new_size`` [N, L, E] = size where not held)."""
    d = expert_latency_from(inst.latency, inst.fallback, x)
    return objective_from_d(inst, d, aggregation) + penalty * jnp.where(x, new_size, 0).sum()


def _tol(J):
    return 64 * jnp.finfo(J.dtype).eps * (jnp.abs(J) + jnp.finfo(J.dtype).tiny)


def _oracle(cfg: WindowConfig, patterns, tw, dup, s):
    """``fn(d, newp, q, cost)``: the layer oracle with item costs for a node with ``q`` units."""

    def fn(d, newp, q, cost):
        if cfg.oracle == "exact":
            return exact_oracle(d, newp, patterns, tw, dup, cfg.aggregation, item_cost=cost)
        steps = min(d.shape[-1], max(cfg.Qmax, 1))
        return greedy_oracle(d, newp, patterns, tw, dup, cfg.aggregation, steps=steps, limit=q // s, item_cost=cost)

    return fn


def _pattern_value(v, patterns, aggregation):
    m = jnp.take_along_axis(v[:, :, None, :], patterns, axis=-1)
    return m.max(-1) if aggregation == "max" else m.sum(-1)


def _choose(oracle, inst, tw, d, newp, q, b, s, new_n, newsz_n, pen, cfg: WindowConfig):
    """One node's set given the others: bool [L, E] within capacity ``q`` and budget ``b`` (units).

    Without a budget: one oracle + DP at the user's penalty. With one: attempt 0 is μ = 0 (kept when
    it fits the budget, and then the only attempt: the budget does not bind), attempt 1 is μ_hi (no
    new copy can pay off: feasible), then ``cfg.bisect`` geometric bisection steps; the feasible
    attempt of the best net gain is kept. All attempts run through one loop body, so the oracle and
    the DP are traced once. (Under ``vmap`` the loop runs while some element still needs attempts;
    the finished ones keep their state.)
    """
    cost0 = pen * newsz_n

    def attempt(mu):
        g, select = oracle(d, newp, q, cost0 + mu * newsz_n)
        res = capacity_dp(g, s, q, Qmax=cfg.Qmax, backend=cfg.maxconv)
        ch = select(res.counts)
        moved = jnp.where(ch & new_n, s[:, None], 0).sum()
        value = res.value + mu * jnp.where(ch, newsz_n, 0).sum()  # net gain at the user's penalty
        return ch, moved, value

    if not cfg.budgeted:
        return attempt(jnp.zeros((), newsz_n.dtype))[0]
    # Above mu_hi every new copy costs more than the node can gain in total, so none is taken.
    G = (tw * (_pattern_value(d, inst.patterns, cfg.aggregation)
               - _pattern_value(newp, inst.patterns, cfg.aggregation))).sum()
    smin = jnp.where(new_n, newsz_n, jnp.inf).min()
    has_new = jnp.isfinite(smin)
    mu_hi = jnp.where(has_new, 2 * G / jnp.where(has_new, smin, 1), 0.0) + jnp.finfo(newsz_n.dtype).tiny
    hi0 = jnp.log(mu_hi)
    lo0 = hi0 - BISECT_OCTAVES * np.log(2.0)

    def step(i, st):
        lo, hi, bch, bv, done = st
        mid = 0.5 * (lo + hi)
        mu = jnp.where(i == 0, 0.0, jnp.where(i == 1, mu_hi, jnp.exp(mid)))
        ch, m, v = attempt(mu.astype(newsz_n.dtype))
        ok = (m <= b) & ~done
        better = ok & (v > bv)
        bisecting = i >= 2
        lo = jnp.where(bisecting & ~ok, mid, lo)
        hi = jnp.where(bisecting & ok, mid, hi)
        # mu = 0 within the budget is the node's optimum: stop there
        done = done | ((i == 0) & ok)
        return lo, hi, jnp.where(better, ch, bch), jnp.where(better, v, bv), done

    init = (lo0, hi0, jnp.zeros_like(new_n), jnp.asarray(-jnp.inf, newsz_n.dtype), jnp.bool_(False))
    n_att = 2 + cfg.bisect
    if cfg.stop_early:
        def cond(c):
            return (c[0] < n_att) & ~c[1][4]

        _, (_, _, ch, bv, _) = lax.while_loop(cond, lambda c: (c[0] + 1, step(c[0], c[1])), (jnp.int32(0), init))
    else:
        _, _, ch, bv, _ = lax.fori_loop(0, n_att, step, init)
    # repair: the budget must hold whatever float noise did (dropping the node's new copies does it)
    over = ~jnp.isfinite(bv) | (jnp.where(ch & new_n, s[:, None], 0).sum() > b)
    return jnp.where(over, ch & ~new_n, ch)


def _passes(inst, tw, su, cu, order, bud, new, newsz, pen, oracle, cfg):
    """The successive pass over ``order`` from nothing, then ``cfg.revisit`` rounds of per-node best
    response (kept when the net objective falls): one scan over the node sequence, so the node
    step is traced once. Returns x [N, L, E]."""
    N = inst.latency.shape[1]
    lat, fb = inst.latency, inst.fallback
    seq = jnp.tile(order, 1 + cfg.revisit)
    first = jnp.arange(seq.shape[0]) < N

    def body(carry, step):
        x, J = carry
        n, is_first = step
        others = x.at[n].set(False)
        d = expert_latency_from(lat, fb, others)
        newp = jnp.minimum(d, jnp.take(lat, n, axis=1))
        ch = _choose(oracle, inst, tw, d, newp, cu[n], bud[n], su, new[n], newsz[n], pen, cfg)
        xn = others.at[n].set(ch)
        if cfg.revisit == 0:
            return (xn, J), None
        Jn = net_objective(inst, xn, newsz, pen, cfg.aggregation)
        keep = is_first | (Jn < J - _tol(J))
        return (jnp.where(keep, xn, x), jnp.where(keep, Jn, J)), None

    x0 = jnp.zeros((N,) + lat.shape[2:], bool)
    (x, _), _ = lax.scan(body, (x0, jnp.asarray(jnp.inf, lat.dtype)), (seq, first))
    return x


def _move_gains(inst, x, aggregation):
    """Exact J decrease of adding each (n, l, e) alone and J increase of dropping it: [N, L, E] each."""
    d = expert_latency_from(inst.latency, inst.fallback, x)
    E = d.shape[-1]
    if aggregation == "max":

        def layer(lat_l, fb_l, d_l, x_l, pat_l, w_l):
            top_v, top_ids, dup = pattern_top(d_l, pat_l, 3)
            add = add_gain_layer(lat_l, d_l, top_v, top_ids, w_l, inst.traffic)
            drop = drop_loss_layer(second_best(lat_l, fb_l, x_l), pat_l, top_v, top_ids, dup, w_l, inst.traffic)
            return add, jnp.where(x_l, drop, 0.0)

        add, drop = jax.vmap(layer, in_axes=(2, 1, 1, 1, 1, 1), out_axes=1)(
            inst.latency, inst.fallback, d, x, inst.patterns, inst.weight)
        return add, drop
    freq = inst.traffic[:, None, None] * expert_frequency(inst.patterns, inst.weight, E, distinct=False)  # [U, L, E]
    add = jnp.einsum("ule,unle->nle", freq, d[:, None] - jnp.minimum(d[:, None], inst.latency))
    d_drop = jax.vmap(second_best, in_axes=(2, 1, 1), out_axes=2)(inst.latency, inst.fallback, x)  # [U, N, L, E]
    drop = jnp.where(x, jnp.einsum("ule,unle->nle", freq, d_drop - d[:, None]), 0.0)
    return add, drop


def _same_layer_swaps(inst, x, ri, ai, aggregation):
    """Exact ΔJ of dropping item ``ri[n, i]`` and adding ``ai[n, j]`` on node n when both are in
    one layer: that layer re-evaluated with both changes, [N, k, k] (other pairs: any value)."""
    lat, fb = inst.latency, inst.fallback
    N, L, E = x.shape
    d = expert_latency_from(lat, fb, x)  # [U, L, E]

    def one(n, r, a):
        l, er, ea = a // E, r % E, a % E  # the layer of the add (= the drop's for the pairs used)
        x_l = x[:, l]  # [N, E]
        x_new = x_l.at[n, er].set(False).at[n, ea].set(True)
        lat_l = lat[:, :, l]  # [U, N, E]
        d_new = jnp.minimum(fb[:, l], jnp.where(x_new[None], lat_l, jnp.inf).min(axis=1))  # [U, E]
        pat = inst.patterns[:, l]  # [U, M, K]
        old = _pattern_value(d[:, l][:, None], pat[:, None], aggregation)[:, 0]
        new = _pattern_value(d_new[:, None], pat[:, None], aggregation)[:, 0]
        return (inst.traffic[:, None] * inst.weight[:, l] * (new - old)).sum()

    nodes = jnp.broadcast_to(jnp.arange(N)[:, None, None], (N, ri.shape[1], ai.shape[1]))
    r = jnp.broadcast_to(ri[:, :, None], nodes.shape)
    a = jnp.broadcast_to(ai[:, None, :], nodes.shape)
    return jax.vmap(one)(nodes.reshape(-1), r.reshape(-1), a.reshape(-1)).reshape(nodes.shape)


def _local_search(inst, su, cu, bud, new, newsz, pen, x, cfg: WindowConfig):
    """Fixed rounds of the best exact improving add / drop / one-node swap (storage and budget hold)."""
    N, L, E = x.shape
    LE = L * E
    k = min(cfg.swap_k, LE)
    C = cfg.moves
    sz = jnp.broadcast_to(su[None, :, None], (N, L, E)).reshape(N, LE)
    newu = jnp.where(new, su[None, :, None], 0).reshape(N, LE)
    J0 = net_objective(inst, x, newsz, pen, cfg.aggregation)
    flat_cost = (pen * newsz).reshape(N, LE)

    def round_(_, st):
        x, J, done = st
        add, drop = _move_gains(inst, x, cfg.aggregation)
        xf = x.reshape(N, LE)
        add, drop = add.reshape(N, LE), drop.reshape(N, LE)
        used = jnp.where(xf, sz, 0).sum(-1)
        mv = jnp.where(xf, newu, 0).sum(-1)
        # adds and drops (exact deltas)
        a_ok = ~xf & (used[:, None] + sz <= cu[:, None]) & (mv[:, None] + newu <= bud[:, None])
        d_add = jnp.where(a_ok, flat_cost - add, jnp.inf)
        d_drop = jnp.where(xf, drop - flat_cost, jnp.inf)
        # one-node swaps: the k best adds x the k cheapest drops of every node; exact deltas (across
        # layers the sum of both, within a layer the layer re-evaluated with both changes)
        av, ai = lax.top_k(jnp.where(~xf, add - flat_cost, -jnp.inf), k)  # [N, k]
        rv, ri = lax.top_k(jnp.where(xf, flat_cost - drop, -jnp.inf), k)
        s_a, s_r = jnp.take_along_axis(sz, ai, -1), jnp.take_along_axis(sz, ri, -1)
        n_a, n_r = jnp.take_along_axis(newu, ai, -1), jnp.take_along_axis(newu, ri, -1)
        fit = (used[:, None, None] - s_r[:, :, None] + s_a[:, None, :] <= cu[:, None, None]) & (
            mv[:, None, None] - n_r[:, :, None] + n_a[:, None, :] <= bud[:, None, None])
        approx = -(av[:, None, :] + rv[:, :, None])  # [N, k(drop), k(add)]
        same = (ai // E)[:, None, :] == (ri // E)[:, :, None]
        exact_same = _same_layer_swaps(inst, x, ri, ai, cfg.aggregation) + (
            jnp.take_along_axis(flat_cost, ai, -1)[:, None, :] - jnp.take_along_axis(flat_cost, ri, -1)[:, :, None])
        d_swap = jnp.where(same, exact_same, approx)
        d_swap = jnp.where(fit & jnp.isfinite(av)[:, None, :] & jnp.isfinite(rv)[:, :, None], d_swap, jnp.inf)
        deltas = jnp.concatenate([d_add.reshape(-1), d_drop.reshape(-1), d_swap.reshape(-1)])
        nA = N * LE
        _, pick = lax.top_k(-deltas, C)
        is_add, is_drop = pick < nA, (pick >= nA) & (pick < 2 * nA)
        sw = jnp.maximum(pick - 2 * nA, 0)
        node = jnp.where(is_add, pick // LE, jnp.where(is_drop, (pick - nA) // LE, sw // (k * k)))
        a_item = jnp.where(is_add, pick % LE, jnp.where(is_drop, -1, ai[node, sw % k]))
        r_item = jnp.where(is_add, -1, jnp.where(is_drop, (pick - nA) % LE, ri[node, (sw // k) % k]))
        valid = jnp.isfinite(deltas[pick])

        def apply(n, a, r):
            row = xf[n]
            row = jnp.where((jnp.arange(LE) == r) & (r >= 0), False, row)
            row = jnp.where((jnp.arange(LE) == a) & (a >= 0), True, row)
            return xf.at[n].set(row).reshape(N, L, E)

        cand = jax.vmap(apply)(node, a_item, r_item)  # [C, N, L, E]
        Jc = jax.vmap(lambda xc: net_objective(inst, xc, newsz, pen, cfg.aggregation))(cand)
        Jc = jnp.where(valid, Jc, jnp.inf)
        b = jnp.argmin(Jc)
        go = ~done & (Jc[b] < J - _tol(J))
        return jnp.where(go, cand[b], x), jnp.where(go, Jc[b], J), done | ~go

    x, _, _ = lax.fori_loop(0, cfg.rounds, round_, (x, J0, jnp.bool_(False)))
    return x


def _keep(inst, su, cu, x, x_prev):
    """Put back copies held before that still fit (most frequently activated first)."""
    E = x.shape[-1]
    pop = (inst.traffic[:, None, None] * expert_frequency(inst.patterns, inst.weight, E, distinct=True)).sum(0)
    prio = jnp.where(x_prev & ~x, pop[None], -jnp.inf)
    return jax.vmap(lambda p, c, t: priority_fill(p, su, c, taken=t))(prio, cu, x)


def window_solve(
    inst: Instance,
    su: Int[Array, "L"],
    cu: Int[Array, "N"],
    x_prev: Bool[Array, "N L E"],
    budget: Int[Array, "N"],
    penalty: Float[Array, ""],
    cfg: WindowConfig,
) -> Bool[Array, "N L E"]:
    """Solve one window's problem with migration (see the module docstring); pure JAX.

    Args:
      inst: one window (unbatched); its routing is what the policy believes about the window.
      su: int32 [L] expert sizes in grid units; cu: int32 [N] capacities in grid units.
      x_prev: bool [N, L, E], the placement of the previous window (all False: from scratch).
      budget: int32 [N] grid units that may move into each node (>= cu: no limit).
      penalty: λ >= 0, cost per unit of ``inst.size`` moved (in units of J).
      cfg: a :class:`WindowConfig` (static).

    Returns:
      bool [N, L, E] within storage and budget on the grid.
    """
    su = jnp.asarray(su, jnp.int32)
    cu = jnp.minimum(jnp.asarray(cu, jnp.int32), cfg.Qmax)
    bud = jnp.asarray(budget, jnp.int32)
    pen = jnp.asarray(penalty, inst.size.dtype)
    new = ~x_prev
    newsz = jnp.where(new, inst.size[None], 0)
    tw, dup = pattern_prep(inst.patterns, inst.weight, inst.traffic)
    oracle = _oracle(cfg, inst.patterns, tw, dup, su)
    named = node_orders(inst.latency, inst.traffic, cu)
    orders = jnp.stack([named[o] if isinstance(o, str) else jnp.asarray(o, jnp.int32) for o in cfg.orders])

    def candidate(order):
        x = _passes(inst, tw, su, cu, order, bud, new, newsz, pen, oracle, cfg)
        return x, net_objective(inst, x, newsz, pen, cfg.aggregation)

    if len(cfg.orders) == 1:
        x, _ = candidate(orders[0])
    else:
        xs, Js = jax.vmap(candidate)(orders)
        x = xs[jnp.argmin(Js)]
    if not cfg.migration:  # free migration: nothing depends on x_prev
        return _local_search(inst, su, cu, bud, new, newsz, pen, x, cfg) if cfg.rounds > 0 else x
    priced = (bud < cu).any() | (pen > 0)
    if cfg.rounds > 0:
        # two starts: the best pass, and (when migration has a price) the previous placement,
        # from which a tight budget allows only a few changes
        starts = jnp.stack([x, jnp.where(priced, x_prev, x)])
        xs = jax.vmap(lambda s: _local_search(inst, su, cu, bud, new, newsz, pen, s, cfg))(starts)
        Js = jax.vmap(lambda xc: net_objective(inst, xc, newsz, pen, cfg.aggregation))(xs)
        x = xs[jnp.argmin(Js)]
    kept = _keep(inst, su, cu, x, x_prev)
    x = jnp.where(priced, kept, x)
    J = net_objective(inst, x, newsz, pen, cfg.aggregation)
    J_prev = net_objective(inst, x_prev, newsz, pen, cfg.aggregation)
    return jnp.where(priced & (J_prev < J), x_prev, x)
