"""A stable argsort built from two single-operand integer sorts.

XLA's CPU backend sorts one integer array through a fast path, but a sort with a value operand
(``jnp.argsort`` sorts (key, iota) pairs) or with float keys (``lax.sort``'s total-order comparator)
runs a generic comparator loop, 4-6x slower (8 problems x 4160 keys: 7.3 ms vs 2.7 ms). Here:

1. the keys map to integers of the same width in the order ``lax.sort`` uses for floats
   (-0.0 equal to 0.0, NaN last);
2. one integer sort of those values, and a binary search, give each key its rank ``r`` among the
   distinct keys;
3. one integer sort of ``r * S + i`` orders by (key, position), and ``% S`` recovers the positions.

The permutation is exactly ``jnp.argsort(key, axis=-1, stable=True)`` (tested on ties, signed
zeros, infinities and NaN). Rows longer than the packing allows fall back to ``jnp.argsort``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Int, Shaped

__all__ = ["stable_argsort"]


def _sortable_int(key: Array) -> Array:
    """Integers in the order ``lax.sort`` gives the keys (int32, or int64 for 64-bit keys)."""
    if jnp.issubdtype(key.dtype, jnp.signedinteger):
        return key if key.dtype.itemsize >= 4 else key.astype(jnp.int32)
    if key.dtype.itemsize < 4:
        key = key.astype(jnp.float32)  # exact, order preserving
    key = jnp.where(key == 0, jnp.zeros_like(key), key)  # -0.0 sorts with 0.0
    key = jnp.where(jnp.isnan(key), jnp.full_like(key, jnp.nan), key)  # one NaN, positive: last
    it = jnp.int32 if key.dtype.itemsize == 4 else jnp.int64
    b = lax.bitcast_convert_type(key, it)
    return jnp.where(b < 0, b ^ jnp.array(jnp.iinfo(it).max, it), b)


def stable_argsort(key: Shaped[Array, "*batch S"]) -> Int[Array, "*batch S"]:
    """``jnp.argsort(key, axis=-1, stable=True)`` as int32, through integer sorts (see module)."""
    key = jnp.asarray(key)
    S = key.shape[-1]
    fast = jnp.issubdtype(key.dtype, jnp.floating) or jnp.issubdtype(key.dtype, jnp.signedinteger)
    if not fast or S <= 1 or S * S > jnp.iinfo(jnp.int32).max:
        return jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)
    q = _sortable_int(key)
    sq = jnp.sort(q, axis=-1)
    # (the unrolled binary search: ~2x faster on CPU than the while loop of the default method)
    rank = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left", method="scan_unrolled"))(
        sq.reshape(-1, S), q.reshape(-1, S))
    packed = rank.astype(jnp.int32).reshape(key.shape) * S + jnp.arange(S, dtype=jnp.int32)
    return jnp.sort(packed, axis=-1) % S
