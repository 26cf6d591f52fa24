"""Per-token caches on the users' devices: LRU, LFU and Belady's MIN with bypass (pure JAX).

The accesses of windows 1..T-1 are replayed in time order: token w of window t needs, at every
layer l, its K experts ``tokens[t, w, l, :]``; access (t, w, l, k) goes to the cache of the
token's user's device node (``devices[user]``). An access *hits* when that device holds the
expert at that moment. Every node keeps its own cache in its storage (``capacity_units[n]`` grid
units, an expert of layer l takes ``size_units[l]``); servers keep the deployment ``x_0``.

- ``token-lru``: a miss loads the expert, evicting least recently used experts until it fits;
- ``token-lfu``: the same, evicting the fewest accesses so far (counts of every expert the node
  has seen, cached or not; ties: least recently used);
- ``belady``: on a miss the expert is admitted only if its next use (the index of the next access
  of the same expert at the same node) is sooner than that of every cached expert it would evict
  (free storage counts as an expert never used again); victims farthest-first.

The sequence is a ``lax.scan`` over windows with a ``lax.scan`` over the window's accesses inside,
vmapped over the device nodes (each handles its own accesses) and, by the caller, over timelines.
The next-use indices Belady needs are computed on the host (:func:`next_use`, NumPy, vectorised).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

__all__ = ["CACHES", "next_use", "token_caches"]

CACHES = ("token-lru", "token-lfu", "belady")
_BIG = np.iinfo(np.int32).max


def next_use(tokens: np.ndarray, token_user: np.ndarray, token_weight: np.ndarray, slot_of_user: np.ndarray,
             x0_slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next-use indices of the accesses of windows 1..T-1, per timeline (host, NumPy).

    Args:
      tokens: int [B, T, W, L, K]; token_user: int [B, T, W]; token_weight: float [B, T, W] (0 =
        padding, not an access); slot_of_user: int [U] the cache slot (device) of every user;
      x0_slots: bool [B, D, L, E] (only its shape is used: D slots, E experts).

    Returns:
      ``(nxt int32 [B, T-1, W, L, K], first int32 [B, D, L, E])``: the index (in access order
      over windows 1..T-1, flattened ``(t, w, l, k)``) of the next access of the same expert at
      the same slot after each access (``2^31-1`` = never), and the first access of every expert
      at every slot.
    """
    B, T, W, L, K = tokens.shape
    D, E = x0_slots.shape[1], x0_slots.shape[-1]
    tok = np.asarray(tokens)[:, 1:]
    S = (T - 1) * W * L * K
    slot = np.asarray(slot_of_user)[np.asarray(token_user)[:, 1:]]  # [B, T-1, W]
    valid = np.broadcast_to((np.asarray(token_weight)[:, 1:] > 0)[..., None, None], tok.shape)
    item = (slot[..., None, None] * L + np.arange(L)[:, None]) * E + tok  # [B, T-1, W, L, K]
    key = (np.arange(B)[:, None] * (D * L * E) + item.reshape(B, S)).reshape(-1)
    pos = np.broadcast_to(np.arange(S), (B, S)).reshape(-1)
    v = valid.reshape(-1)
    key, pos_v, flat = key[v], pos[v], np.flatnonzero(v)
    order = np.lexsort((pos_v, key))
    ks, ps, fs = key[order], pos_v[order], flat[order]
    same = ks[1:] == ks[:-1]
    nxt = np.full(B * S, _BIG, np.int64)
    nxt[fs[:-1]] = np.where(same, ps[1:], _BIG)
    first = np.full(B * D * L * E, _BIG, np.int64)
    starts = np.concatenate([[True], ~same]) if ks.size else np.zeros(0, bool)
    first[ks[starts]] = ps[starts]
    return nxt.reshape(B, T - 1, W, L, K).astype(np.int32), first.reshape(B, D, L, E).astype(np.int32)


def _slot_replay(kind: str, warm: bool, evict: int, x0: Bool[Array, "L E"], first: Int[Array, "L E"],
                 mine: Bool[Array, "T S"], layer: Int[Array, "S"], expert: Int[Array, "T S"], nxt: Int[Array, "T S"],
                 su: Int[Array, "L"], cap: Int[Array, ""]):
    """One device's cache over windows 1..T-1 (``T`` here = T-1 windows of ``S`` accesses each).

    Returns (state at the start of every window bool [T, L, E], loads int32 [T, L, E], hit bool [T, S]).
    """
    L, E = x0.shape
    S = layer.shape[0]
    x_init = x0 if warm else jnp.zeros_like(x0)
    ts0 = jnp.where(x_init, -1, _BIG).astype(jnp.int32)  # last use (LRU order; deployment first out)
    cnt0 = jnp.zeros((L, E), jnp.int32)  # accesses so far (LFU)
    nu0 = jnp.where(x_init, first, _BIG).astype(jnp.int32)  # next use of the held experts (Belady)
    used0 = jnp.where(x_init, su[:, None], 0).sum()

    def access(carry, a):
        x, ts, cnt, nu, used, loads = carry
        i, m, l, e, n_i = a
        need = su[l]
        hit = m & x[l, e]
        miss = m & ~x[l, e]
        if kind == "belady":
            # admit only if cheaper in the future than what it would displace (free space: never used)
            evictable = x & (nu > n_i)
            room = cap - used + jnp.where(evictable, su[:, None], 0).sum()
            admit = miss & (n_i < _BIG) & (need <= cap) & (room >= need)
        else:
            admit = miss & (need <= cap)

        def evict_one(_, st):
            x, used = st
            over = admit & (used + need > cap)
            if kind == "token-lru":
                v = jnp.argmin(jnp.where(x, ts, _BIG).reshape(-1))
            elif kind == "token-lfu":
                c = jnp.where(x, cnt, _BIG)
                low = x & (c == c.min())
                v = jnp.argmin(jnp.where(low, ts, _BIG).reshape(-1))
            else:
                v = jnp.argmax(jnp.where(x, nu, -1).reshape(-1))
            vl, ve = v // E, v % E
            x = x.at[vl, ve].set(x[vl, ve] & ~over)
            return x, used - jnp.where(over, su[vl], 0)

        x, used = lax.fori_loop(0, evict, evict_one, (x, used))
        admit = admit & (used + need <= cap)
        touch = hit | admit
        x = x.at[l, e].set(x[l, e] | admit)
        used = used + jnp.where(admit, need, 0)
        loads = loads.at[l, e].add(admit.astype(jnp.int32))
        ts = ts.at[l, e].set(jnp.where(touch, i, ts[l, e]))
        nu = nu.at[l, e].set(jnp.where(touch, n_i, nu[l, e]))
        cnt = cnt.at[l, e].add(m.astype(jnp.int32))
        return (x, ts, cnt, nu, used, loads), hit

    def window(carry, wa):
        x, ts, cnt, nu, used = carry
        base, m, ex, nx = wa
        loads0 = jnp.zeros((L, E), jnp.int32)
        idx = base + jnp.arange(S, dtype=jnp.int32)
        (x2, ts, cnt, nu, used, loads), hit = lax.scan(access, (x, ts, cnt, nu, used, loads0), (idx, m, layer, ex, nx))
        return (x2, ts, cnt, nu, used), (x, loads, hit)

    T = mine.shape[0]
    bases = (jnp.arange(T, dtype=jnp.int32) * S)
    _, (xs, loads, hits) = lax.scan(window, (x_init, ts0, cnt0, nu0, used0), (bases, mine, expert, nxt))
    return xs, loads, hits


def token_caches(
    kind: str,
    warm: bool,
    evict: int,
    slots: tuple,
    aggregation: str,
    latency: Float[Array, "U N L E"],
    fallback: Float[Array, "U L E"],
    su: Int[Array, "L"],
    cu: Int[Array, "N"],
    x0: Bool[Array, "N L E"],
    first: Int[Array, "D L E"],
    tokens: Int[Array, "T W L K"],
    token_user: Int[Array, "T W"],
    token_weight: Float[Array, "T W"],
    nxt: Int[Array, "T1 W L K"],
    slot_of_user: Int[Array, "U"],
):
    """Replay windows 1..T-1 of one timeline through per-token device caches (see the module).

    Args:
      kind: one of :data:`CACHES`; warm: start from ``x0``'s device rows (else empty); evict: the
        most evictions one miss may need; slots: the device nodes (static tuple, one cache each);
      aggregation: ``"max"`` | ``"sum"`` over a token's experts of a layer.
      latency, fallback: the network (unbatched); su, cu: sizes and capacities in grid units.
      x0: the deployment; its server rows serve the misses, its device rows start a warm cache.
      first, nxt: from :func:`next_use` (used by Belady only).
      tokens, token_user, token_weight: the timeline's tokens (all T windows; window 0 is not replayed).
      slot_of_user: int32 [U] the slot of every user's device.

    Returns:
      ``(placements bool [T-1, N, L, E]`` (every node's holdings at the start of windows 1..T-1),
      ``loads int32 [T-1, N, L, E]`` (copies loaded during the window), ``hit bool [T-1, W, L, K]``,
      ``token_latency [T-1, W]`` (Σ over layers of the max/sum over the token's experts of the
      latency it was served at)).
    """
    T, W, L, K = tokens.shape
    U, N, _, E = latency.shape
    slots_a = jnp.asarray(slots, jnp.int32)
    D = len(slots)
    tok = tokens[1:]
    S = W * L * K
    slot_tok = slot_of_user[token_user[1:]]  # [T-1, W]
    valid = token_weight[1:] > 0
    layer = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None, :, None], (W, L, K)).reshape(S)
    expert = tok.reshape(T - 1, S)
    nx = nxt.reshape(T - 1, S)

    def slot_run(d, x0_d, first_d, cap_d):
        mine = jnp.broadcast_to((valid & (slot_tok == d))[:, :, None, None], (T - 1, W, L, K)).reshape(T - 1, S)
        return _slot_replay(kind, warm, evict, x0_d, first_d, mine, layer, expert, nx, su, cap_d)

    xs_d, loads_d, hit_d = jax.vmap(slot_run)(jnp.arange(D, dtype=jnp.int32), x0[slots_a], first, cu[slots_a])
    hit = hit_d.any(0).reshape(T - 1, W, L, K)  # every access belongs to one slot
    placements = jnp.broadcast_to(x0, (T - 1, N, L, E)).at[:, slots_a].set(jnp.moveaxis(xs_d, 0, 1))
    loads = jnp.zeros((T - 1, N, L, E), jnp.int32).at[:, slots_a].set(jnp.moveaxis(loads_d, 0, 1))
    # what a miss costs: the servers' deployment (device rows removed) or the fallback
    servers = x0.at[slots_a].set(False)
    d_miss = jnp.minimum(fallback, jnp.where(servers[None], latency, jnp.inf).min(axis=1))  # [U, L, E]
    dev_of_user = slots_a[slot_of_user]  # [U]
    d_dev = jnp.minimum(jnp.take_along_axis(latency, dev_of_user[:, None, None, None], axis=1)[:, 0], d_miss)
    usr = token_user[1:][:, :, None, None]  # [T-1, W, 1, 1]
    lidx = jnp.arange(L)[None, None, :, None]
    lat = jnp.where(hit, d_dev[usr, lidx, tok], d_miss[usr, lidx, tok])  # [T-1, W, L, K]
    per_layer = lat.max(-1) if aggregation == "max" else lat.sum(-1)
    return placements, loads, hit, per_layer.sum(-1)
