"""A stable argsort built from single-operand integer sorts.

XLA's CPU backend sorts one integer array through a fast path, but a sort with a value operand
(``jnp.argsort`` sorts (key, iota) pairs) or with float keys (``lax.sort``'s total-order comparator)
runs a generic comparator loop, 4-6x slower (8 problems x 4160 keys: 7.3 ms vs 2.7 ms). Here the
keys first map to integers of the same width in the order ``lax.sort`` uses for floats (-0.0 equal
to 0.0, NaN last), then:

- 32-bit keys of rows up to 2^15 long: a least-significant-digit radix sort with two 16-bit
  digits. Pass 1 sorts ``low16 * S + i`` (low digit, then position); pass 2 sorts
  ``high16 * S + j`` where ``j`` is the position in pass 1's order. Integers in one sort are
  distinct, so each pass is a stable sort by its digit, and the two give (key, position) order.
  It replaces the search of the route below (8 x 4160 float32 keys: 2.37-2.49 ms vs 2.90-3.05 ms, two runs).
- otherwise (64-bit keys, longer rows): one integer sort of the values and a binary search give
  each key its rank ``r`` among the distinct keys, and one sort of ``r * S + i`` orders by
  (key, position).

The permutation is exactly ``jnp.argsort(key, axis=-1, stable=True)`` (tested on ties, signed
zeros, infinities and NaN, by both routes). Rows longer than the packing allows fall back to
``jnp.argsort``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Int, Shaped

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


def _radix16(q: Array) -> Array:
    """Stable argsort of int32 ``q`` [..., S] (S ≤ 2^15) by two 16-bit digit passes (see module)."""
    S = q.shape[-1]
    pos = jnp.arange(S, dtype=jnp.int32)
    u = lax.bitcast_convert_type(q, jnp.uint32) ^ jnp.uint32(0x80000000)  # signed order as unsigned
    low = (u & jnp.uint32(0xFFFF)).astype(jnp.int32)
    high = (u >> 16).astype(jnp.int32)
    p1 = jnp.sort(low * S + pos, axis=-1) % S  # by (low digit, position)
    high1 = jnp.take_along_axis(high, p1, axis=-1)  # the high digit in pass 1's order
    p2 = jnp.sort(high1 * S + pos, axis=-1) % S  # stable by the high digit
    return jnp.take_along_axis(p1, p2, axis=-1)


def _by_rank(q: Array) -> Array:
    """Stable argsort of integer ``q`` [..., S] (S² < 2^31) through its rank among distinct keys."""
    S = q.shape[-1]
    sq = jnp.sort(q, axis=-1)
    # (the unrolled binary search: ~2x faster on CPU than the while loop of the default method)
    rank = jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="left", method="scan_unrolled"))(
        sq.reshape(-1, S), q.reshape(-1, S))
    packed = rank.astype(jnp.int32).reshape(q.shape) * S + jnp.arange(S, dtype=jnp.int32)
    return jnp.sort(packed, axis=-1) % S


def stable_argsort(key: Shaped[ArrayLike, "*batch S"], *, method: str = "auto") -> Int[Array, "*batch S"]:
    """``jnp.argsort(key, axis=-1, stable=True)`` as int32, through integer sorts (see module).

    ``method``: ``"auto"`` (radix for 32-bit keys of rows ≤ 2^15, else rank), ``"radix"`` or
    ``"rank"`` (the two routes, for tests; both give the same permutation). Keys that are not
    floats or signed integers (bool, unsigned) and rows of one key use ``jnp.argsort`` whatever
    the method."""
    if method not in ("auto", "radix", "rank"):
        raise ValueError(f"method must be 'auto', 'radix' or 'rank', got {method!r}")
    key = jnp.asarray(key)
    S = key.shape[-1]
    fast = jnp.issubdtype(key.dtype, jnp.floating) or jnp.issubdtype(key.dtype, jnp.signedinteger)
    if not fast or S <= 1 or S * S > jnp.iinfo(jnp.int32).max:
        return jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)
    q = _sortable_int(key)
    radix_ok = q.dtype == jnp.int32 and S <= 2**15
    if method == "radix" and not radix_ok:
        raise ValueError(f"method='radix' needs 32-bit keys and rows of at most 2^15, got {key.dtype} rows of {S}")
    if radix_ok and method != "rank":
        return _radix16(q)
    return _by_rank(q)
