"""The placement policies' programs: how x_t is chosen from what was seen before it (pure JAX).

The options of each policy are its object (:mod:`slimjax.dynamic._objects`); this module is
the compiled side, configured by a hashable :class:`PolicyConfig`.

Every policy is one step ``x_t = step(x_{t-1}, windows < t)`` of a ``lax.scan`` over windows:

- ``static``: ``x_t = x_0`` (the deployment on window 0, never changed);
- ``resolve``: solve the forecast of window t from scratch, ignoring migration;
- ``incremental``: solve the forecast from ``x_{t-1}`` with migration priced (budget, penalty);
- ``lfu``: popularity re-placement from the forecast (the most frequently activated experts on
  the fastest nodes: what a plain cache does);
- ``lru``: token-level least-recently-used caching on the users' devices (the servers keep
  ``x_0``): every token of window t-1 that misses on its user's device loads the expert there,
  evicting the least recently used; ``x_t`` is the device cache after window t-1;
- ``hindsight``: solves window t knowing window t (a reference, not a policy).

The forecast of window t (``last``: window t-1; ``ema``: the exponential moving average of the
pattern frequencies of the last ``horizon`` windows, weight ``alpha·(1-alpha)^k`` on window
t-1-k, renormalised over the windows that exist) is what ``resolve``, ``incremental`` and ``lfu``
see. Budgets hold for every policy: ``resolve`` admits the new copies of its from-scratch solution by
their value in it (the J its removal would cost) and ``lfu`` by activation frequency while the
node's budget allows, then both keep what they held while storage remains;
``lru`` admits a miss only while the budget allows, ``static`` never moves. The penalty is traded
by ``incremental`` and ``hindsight`` (the policies that optimise J); the others ignore it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from slimjax._instance import Instance
from slimjax.dynamic._myopic import WindowConfig, _move_gains, window_solve
from slimjax.ops import expert_frequency, node_orders

__all__ = ["PolicyConfig", "timeline_policy", "forecast_window", "lfu_placement"]

_NEG = -jnp.inf
_BIG = jnp.iinfo(jnp.int32).max


class PolicyConfig(NamedTuple):
    """Static configuration of one policy run (hashable)."""

    policy: str
    window: WindowConfig  # the per-window solve (budgeted flag included)
    forecast: str = "last"
    alpha: float = 0.5
    horizon: int = 4
    devices: tuple = (0,)  # lru: the device node of every user
    evict: int = 1  # lru: most evictions one miss may need (largest / smallest expert size)


def _window(windows: Instance, t) -> Instance:
    return jax.tree_util.tree_map(lambda a: lax.dynamic_index_in_dim(a, t, 0, keepdims=False), windows)


def forecast_window(windows: Instance, t, forecast: str, alpha: float, horizon: int, lag=1) -> Instance:
    """What a policy believes about window ``t`` (``t >= 1``) from windows ``< t``; one Instance.

    ``last``: window t-lag. ``ema``: the patterns of windows t-lag .. t-lag-horizon+1 side by side
    (``[U, L, horizon·M, K]``), window t-lag-k weighted by ``alpha·(1-alpha)^k`` (renormalised over
    the windows that exist), and the users' traffic averaged the same way. ``lag`` (traced) is 1
    for a policy; 0 is hindsight (window t itself).
    """
    if forecast == "last":
        return _window(windows, t - lag)
    T = windows.latency.shape[0]
    ks = jnp.arange(horizon)
    idx = t - lag - ks
    a = alpha * (1.0 - alpha) ** ks.astype(windows.weight.dtype) * (idx >= 0)
    a = a / a.sum()
    past = jax.tree_util.tree_map(lambda arr: arr[jnp.clip(idx, 0, T - 1)], windows)  # [H, ...]
    tr = a[:, None] * past.traffic  # [H, U]
    traffic = tr.sum(0)
    share = jnp.where(traffic > 0, tr / jnp.where(traffic > 0, traffic, 1), a[:, None])  # [H, U]
    w = share[:, :, None, None] * past.weight  # [H, U, L, M]
    U, L, M, K = past.patterns.shape[1:]
    pat = jnp.moveaxis(past.patterns, 0, 2).reshape(U, L, horizon * M, K)
    w = jnp.moveaxis(w, 0, 2).reshape(U, L, horizon * M)
    now = _window(windows, t)
    return Instance(latency=now.latency, fallback=now.fallback, size=now.size, capacity=now.capacity,
                    patterns=pat, weight=w, traffic=traffic, base=now.base, validate=False)


def lfu_placement(inst: Instance, su: Int[Array, "L"], cu: Int[Array, "N"]):
    """Popularity placement (LFU) of one window and the popularity [L, E] it used.

    Nodes fastest first; each is filled with its most frequently activated helpful experts
    (some user that activates the expert gets it faster) while they fit. The same rule as the
    ``popularity`` solver.
    """
    U, N, L, E = inst.latency.shape
    act = inst.traffic[:, None, None] * expert_frequency(inst.patterns, inst.weight, E, distinct=True)  # [U, L, E]
    pop = act.sum(0)

    def node(d, n):
        lat_n = inst.latency[:, n]
        helpful = (act * jnp.maximum(d - lat_n, 0)).sum(0) > 0
        take = _fill(jnp.where(helpful, pop, _NEG), su, cu[n])
        return jnp.where(take[None], jnp.minimum(d, lat_n), d), take

    order = node_orders(inst.latency, inst.traffic, cu)["fastest-first"]
    _, takes = lax.scan(node, inst.fallback, order)
    return jnp.zeros((N, L, E), bool).at[order].set(takes), pop


def _fill(prio, su, cap, x_prev=None, budget=None, taken=None):
    """Items by decreasing ``prio`` while they fit; a new item (not in ``x_prev``) also needs budget."""
    L, E = prio.shape
    p = prio.reshape(-1)
    s = jnp.broadcast_to(su[:, None], (L, E)).reshape(-1)
    x0 = jnp.zeros(L * E, bool) if taken is None else taken.reshape(-1)
    held = jnp.ones(L * E, bool) if x_prev is None else x_prev.reshape(-1)
    bud = _BIG if budget is None else budget
    used0 = jnp.where(x0, s, 0).sum()
    spent0 = jnp.where(x0 & ~held, s, 0).sum()
    order = jnp.argsort(-p, stable=True)

    def step(carry, i):
        used, spent = carry
        new = ~held[i]
        take = ~x0[i] & (p[i] > _NEG) & (used + s[i] <= cap) & (~new | (spent + s[i] <= bud))
        return (used + jnp.where(take, s[i], 0), spent + jnp.where(take & new, s[i], 0)), take

    _, took = lax.scan(step, (used0, spent0), order)
    return (jnp.zeros(L * E, bool).at[order].set(took) | x0).reshape(L, E)


def _admit(target, x_prev, value, pop, su, cu, bud):
    """Move towards ``target`` within the budget: keep target ∩ held, admit target's new copies by
    ``value`` [N, L, E] while the budget allows, then keep held copies by ``pop`` [L, E] while
    storage remains."""
    keep = target & x_prev

    def node(t, xp, kp, v, c, b):
        x = _fill(jnp.where(t & ~xp, v, _NEG), su, c, xp, b, taken=kp)
        return _fill(jnp.where(xp & ~x, pop, _NEG), su, c, taken=x)

    return jax.vmap(node)(target, x_prev, keep, value, cu, bud)


def _lru_window(x, ts, clock, x_prev, tokens, user, weight, su, cu, bud, devices, evict):
    """Replay one window's tokens through the devices' LRU caches.

    ``x`` bool [N, L, E] (only device rows change), ``ts`` int32 [N, L, E] last use; returns the
    new (x, ts, clock) and ``loads`` int32 [N, L, E], how many times each copy was loaded (re-loads
    included). The budget is counted in grid units (``su``); the caller turns ``loads`` into storage
    in size units with the real sizes.
    """
    W, L, K = tokens.shape
    N = x.shape[0]
    dev = jnp.asarray(devices, jnp.int32)[user]  # [W] the node of each token's user

    def access(carry, i):
        x, ts, used, spent, loads, clock = carry
        w, l, k = i // (L * K), (i // K) % L, i % K
        n, e = dev[w], tokens[w, l, k]
        valid = weight[w] > 0
        hit = x[n, l, e]
        need = su[l]
        admit = valid & ~hit & (need <= cu[n]) & (x_prev[n, l, e] | (spent[n] + need <= bud[n]))

        def evict_one(_, st):
            x, used = st
            over = admit & (used[n] + need > cu[n])
            flat = jnp.where(x[n], ts[n], _BIG).reshape(-1)
            v = jnp.argmin(flat)
            vl, ve = v // x.shape[2], v % x.shape[2]
            x = x.at[n, vl, ve].set(x[n, vl, ve] & ~over)
            used = used.at[n].add(jnp.where(over, -su[vl], 0))
            return x, used

        x, used = lax.fori_loop(0, evict, evict_one, (x, used))
        admit = admit & (used[n] + need <= cu[n])  # storage holds, whatever the eviction bound
        x = x.at[n, l, e].set(x[n, l, e] | admit)
        used = used.at[n].add(jnp.where(admit, need, 0))
        spent = spent.at[n].add(jnp.where(admit & ~x_prev[n, l, e], need, 0))
        loads = loads.at[n, l, e].add(admit.astype(jnp.int32))
        ts = ts.at[n, l, e].set(jnp.where(valid & (hit | admit), clock, ts[n, l, e]))
        return (x, ts, used, spent, loads, clock + valid.astype(jnp.int32)), None

    used0 = jnp.where(x, su[None, :, None], 0).sum(axis=(1, 2))
    z = jnp.zeros(N, jnp.int32)
    loads0 = jnp.zeros(x.shape, jnp.int32)
    (x, ts, _, _, loads, clock), _ = lax.scan(access, (x, ts, used0, z, loads0, clock), jnp.arange(W * L * K))
    return x, ts, clock, loads


def timeline_policy(
    windows: Instance,
    tokens: Int[Array, "T W L K"] | None,
    token_user: Int[Array, "T W"] | None,
    token_weight: Float[Array, "T W"] | None,
    su: Int[Array, "L"],
    cu: Int[Array, "N"],
    x0: Bool[Array, "N L E"],
    budget: Int[Array, "N"],
    penalty: Float[Array, ""],
    lag: Int[Array, ""],
    cfg: PolicyConfig,
):
    """Run one policy over one timeline (windows ``[T, ...]``); a ``lax.scan`` over t = 1..T-1.

    ``hindsight`` is ``incremental`` with ``lag = 0`` (it sees window t itself; ``lag`` is traced,
    so both share one compiled program); every other policy has ``lag = 1``.

    Returns:
      (placements bool [T, N, L, E] with ``placements[0] = x0``, info dict of [T, ...] arrays:
      ``forecast_objective`` [T] (J of x_t on what the policy believed; window 0: its own J) and
      ``loads`` int32 [T, N, L, E] (how many times the LRU's token-level process loaded each copy,
      re-loads included; 0 elsewhere)).
    """
    from slimjax._objective import expert_latency_from, objective_from_d

    T = windows.latency.shape[0]
    N = x0.shape[0]
    agg = cfg.window.aggregation
    pen = jnp.asarray(penalty, windows.size.dtype)
    nolimit = cu  # a budget >= capacity never binds
    zeros = jnp.zeros_like(x0)
    is_dev = jnp.zeros(N, bool).at[jnp.asarray(cfg.devices, jnp.int32)].set(True)

    def J_of(inst, x):
        return objective_from_d(inst, expert_latency_from(inst.latency, inst.fallback, x), agg)

    def step(carry, t):
        x_prev, ts, clock = carry
        loads = jnp.zeros_like(x0, jnp.int32)
        p = cfg.policy
        F = forecast_window(windows, t, cfg.forecast, cfg.alpha, cfg.horizon, lag)
        if p == "static":
            x = x_prev
        elif p == "resolve":
            x = window_solve(F, su, cu, zeros, nolimit, jnp.zeros_like(pen),
                             cfg.window._replace(budgeted=False, migration=False))
            if cfg.window.budgeted:  # new copies by their value in the target (J lost without them)
                _, value = _move_gains(F, x, cfg.window.aggregation)
                x = _admit(x, x_prev, value, _popularity(F), su, cu, budget)
        elif p == "incremental":
            x = window_solve(F, su, cu, x_prev, budget, pen, cfg.window)
        elif p == "lfu":
            x, pop = lfu_placement(F, su, cu)
            if cfg.window.budgeted:
                x = _admit(x, x_prev, jnp.broadcast_to(pop, x.shape), pop, su, cu, budget)
        else:  # lru on the devices; the servers keep x_0
            xd, ts, clock, loads = _lru_window(x_prev, ts, clock, x_prev, tokens[t - 1], token_user[t - 1],
                                                token_weight[t - 1], su, cu, budget, cfg.devices, cfg.evict)
            x = jnp.where(is_dev[:, None, None], xd, x0)
        return (x, ts, clock), (x, J_of(F, x), loads)

    ts0 = jnp.where(x0, -1, _BIG).astype(jnp.int32)
    _, (xs, Jf, loads) = lax.scan(step, (x0, ts0, jnp.int32(0)), jnp.arange(1, T))
    placements = jnp.concatenate([x0[None], xs])
    info = {
        "forecast_objective": jnp.concatenate([J_of(_window(windows, 0), x0)[None], Jf]),
        "loads": jnp.concatenate([jnp.zeros((1, *x0.shape), jnp.int32), loads]),
    }
    return placements, info


def _popularity(inst: Instance) -> Float[Array, "L E"]:
    E = inst.latency.shape[-1]
    return (inst.traffic[:, None, None] * expert_frequency(inst.patterns, inst.weight, E, distinct=True)).sum(0)
