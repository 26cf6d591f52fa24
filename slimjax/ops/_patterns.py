"""Merging identical routing patterns (J is unchanged; the pattern axis shrinks)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from slimjax._instance import Instance

__all__ = ["merge_patterns"]


def _sort_small(p: Array) -> Array:
    """Sort the last axis (K ≤ 16: an odd-even transposition network of min/max, far faster than a
    general sort of millions of tiny rows on CPU)."""
    K = p.shape[-1]
    if K > 16:
        return jnp.sort(p, axis=-1)
    cols = [p[..., k] for k in range(K)]
    for r in range(K):
        for i in range(r % 2, K - 1, 2):
            a, b = cols[i], cols[i + 1]
            cols[i], cols[i + 1] = jnp.minimum(a, b), jnp.maximum(a, b)
    return jnp.stack(cols, axis=-1)


@functools.partial(jax.jit, static_argnames=("E", "Mp", "hist_limit"))
def _merge_codes(patterns: Array, weight: Array, E: int, Mp: int, hist_limit: int = 2**26) -> tuple[Array, Array]:
    """:func:`merge_patterns` for ``E**K < 2**31`` in JAX: each sorted pattern becomes the code
    Σ_k p_k·E^(K−1−k) (ascending codes = lexicographic order of the sorted members); per
    (instance, user, layer) the codes that occur are kept in ascending order with their summed
    weights. Small code spaces use a histogram over all E^K codes, larger ones a sort. Same result
    as the NumPy path (unused slots: pattern 0, weight 0)."""
    *lead, M, K = patterns.shape
    p = _sort_small(patterns.reshape(-1, M, K))
    G = p.shape[0]
    mult = jnp.asarray(E ** np.arange(K - 1, -1, -1), jnp.int32)  # [K]
    code = (p * mult).sum(-1)  # [G, M]
    w = weight.reshape(-1, M)
    C = E**K
    if G * C <= hist_limit:  # histogram: O(G·(M + C)), no sort
        gm = jnp.broadcast_to(jnp.arange(G, dtype=jnp.int32)[:, None], (G, M))
        hist_w = jnp.zeros((G, C), w.dtype).at[gm, code].add(w)
        seen = jnp.zeros((G, C), bool).at[gm, code].set(True)
        slot = jnp.where(seen, jnp.cumsum(seen, axis=1, dtype=jnp.int32) - 1, Mp)  # Mp = dropped
        gc = jnp.broadcast_to(jnp.arange(G, dtype=jnp.int32)[:, None], (G, C))
        out_w = jnp.zeros((G, Mp), w.dtype).at[gc, slot].add(hist_w, mode="drop")
        codes = jnp.broadcast_to(jnp.arange(C, dtype=jnp.int32)[None], (G, C))
        out_code = jnp.zeros((G, Mp), jnp.int32).at[gc, slot].max(codes, mode="drop")
    else:
        code, w = lax.sort((code, w), dimension=1, num_keys=1)
        new = jnp.concatenate([jnp.ones((G, 1), bool), code[:, 1:] != code[:, :-1]], axis=1)
        slot = jnp.cumsum(new, axis=1, dtype=jnp.int32) - 1  # [G, M], < Mp by the multiset bound
        gm = jnp.broadcast_to(jnp.arange(G, dtype=jnp.int32)[:, None], (G, M))
        out_w = jnp.zeros((G, Mp), w.dtype).at[gm, slot].add(w)
        out_code = jnp.zeros((G, Mp), jnp.int32).at[gm, slot].max(code)
    out_pat = (out_code[..., None] // mult) % E  # [G, Mp, K]
    return out_pat.reshape(*lead, Mp, K).astype(patterns.dtype), out_w.reshape(*lead, Mp)


def merge_patterns(batch: Instance) -> Instance:
    """Merge identical patterns (as multisets) of every (instance, user, layer).

    Runs in JAX (on the device, jitted) when a pattern fits one int32 code (E^K < 2^31), else in
    host NumPy; both give the same patterns in the same order.

    Works on one instance or a batch; returns ``batch`` itself when merging cannot shrink M.

    J is invariant under reordering a pattern's members and merging equal patterns (their
    weights add). The pattern axis shrinks to M' = min(M, C(E + K − 1, K)), the number of
    multisets: a bound that depends on the shape only, so an instance gets the same merged
    patterns alone or in any batch. Routing traces with many tokens (M ≫ distinct patterns)
    evaluate far faster this way. Unused slots get pattern 0 and weight 0.
    """
    *_, E, M, K = batch.shape
    Mp = min(M, math.comb(E + K - 1, K))
    if Mp >= M:
        return batch
    if E**K < 2**31:  # a pattern fits one int32 code: sort and merge on the device
        out_pat, out_w = _merge_codes(jnp.asarray(batch.patterns), jnp.asarray(batch.weight), E, Mp)
    else:
        out_pat, out_w = _merge_numpy(np.asarray(batch.patterns), np.asarray(batch.weight), Mp)
    return Instance(
        latency=batch.latency, fallback=batch.fallback, size=batch.size, capacity=batch.capacity,
        patterns=out_pat, weight=out_w.astype(batch.weight.dtype), traffic=batch.traffic, base=batch.base,
        service=batch.service, rate=batch.rate, validate=False,
    )


def _merge_numpy(patterns: np.ndarray, weight: np.ndarray, Mp: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_patterns` on the host (any E, K): a lexsort of the sorted members."""
    *_, M, K = patterns.shape
    pat = np.sort(patterns, axis=-1).reshape(-1, M, K)  # [G, M, K]
    w = np.asarray(weight, np.float64).reshape(-1, M)
    G = pat.shape[0]
    rows = pat.reshape(G * M, K)
    group = np.repeat(np.arange(G), M)
    order = np.lexsort(tuple(rows[:, k] for k in range(K - 1, -1, -1)) + (group,))
    rows, group, ws = rows[order], group[order], w.reshape(-1)[order]
    new = np.ones(G * M, bool)
    new[1:] = (group[1:] != group[:-1]) | (rows[1:] != rows[:-1]).any(-1)
    run = np.cumsum(new) - 1  # global run id
    first_run = run[np.searchsorted(group, np.arange(G))]  # run id of each group's first row
    slot = run - first_run[group]  # run index within its group, < Mp by the multiset bound
    out_pat = np.zeros((G, Mp, K), np.int32)
    out_w = np.zeros((G, Mp))
    out_pat[group, slot] = rows
    np.add.at(out_w, (group, slot), ws)
    bshape = patterns.shape[:-2]
    return out_pat.reshape(bshape + (Mp, K)), out_w.reshape(bshape + (Mp,))
