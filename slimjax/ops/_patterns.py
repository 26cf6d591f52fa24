"""Merging identical routing patterns (J is unchanged; the pattern axis shrinks)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from slimjax._instance import Instance

__all__ = ["merge_patterns", "merged_size", "with_patterns", "merge_codes_fn"]


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


def merged_size(batch: Instance):
    """``(E, M', on_device)`` when merging can shrink the pattern axis M to M', else None.

    M' = min(M, C(E + K − 1, K)) (the number of multisets of K ids); ``on_device`` when a pattern
    fits one int32 code (E^K < 2^31) so the JAX path applies.
    """
    *_, E, M, K = batch.shape
    Mp = min(M, math.comb(E + K - 1, K))
    if Mp >= M:
        return None
    return E, Mp, E**K < 2**31


@functools.lru_cache(maxsize=None)
def merge_codes_fn():
    """``jit(f)(E, Mp, patterns, weight)`` with E, Mp static (for ahead-of-time compilation)."""
    return jax.jit(lambda E, Mp, p, w: _merge_codes(p, w, E, Mp), static_argnums=(0, 1))


def with_patterns(batch: Instance, patterns, weight) -> Instance:
    """``batch`` with new routing patterns and weights (every other field kept; not re-validated)."""
    return batch.replace(patterns=patterns, weight=jnp.asarray(weight).astype(batch.weight.dtype), validate=False)


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
    plan = merged_size(batch)
    if plan is None:
        return batch
    E, Mp, on_device = plan
    if on_device:
        out_pat, out_w = merge_codes_fn()(E, Mp, jnp.asarray(batch.patterns), jnp.asarray(batch.weight))
    else:
        out_pat, out_w = _merge_numpy(np.asarray(batch.patterns), np.asarray(batch.weight), Mp)
    return with_patterns(batch, out_pat, out_w)


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
