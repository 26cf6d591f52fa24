"""Node orders: the one definition of "fastest first" (and the other orders) that every solver uses."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

__all__ = ["ORDERS", "node_speed", "node_orders"]

#: Named node orders (:func:`node_orders`).
ORDERS = ("fastest-first", "largest-first", "given", "slowest-first", "smallest-first")


def node_speed(latency: Float[Array, "U N L E"], traffic: Float[Array, "U"]) -> Float[Array, "N"]:
    """Traffic-weighted mean latency of each node [N] over the users that reach it.

    A user reaches a node when at least one of its entries is finite; the mean is over the
    finite entries. Nodes no user with traffic reaches get ``inf`` (they sort last).
    """
    fin = jnp.isfinite(latency)
    cnt = fin.sum(axis=(2, 3))
    reach = cnt > 0  # [U, N]
    mean = jnp.where(fin, latency, 0).sum(axis=(2, 3)) / jnp.maximum(cnt, 1)
    w = traffic[:, None] * reach
    wsum = w.sum(0)
    return jnp.where(wsum > 0, (w * mean).sum(0) / jnp.where(wsum > 0, wsum, 1), jnp.inf)


def node_orders(
    latency: Float[Array, "U N L E"], traffic: Float[Array, "U"], capacity: ArrayLike
) -> dict[str, Int[Array, "N"]]:
    """Every order of :data:`ORDERS` as ``{name: int32 [N]}`` (stable: ties keep index order).

    fastest-first sorts by :func:`node_speed`; largest-first by capacity (ties fastest first);
    slowest-first and smallest-first reverse them (unreachable nodes still last).
    """
    N = latency.shape[1]
    key = node_speed(latency, traffic)
    cap = jnp.asarray(capacity)
    slow_key = jnp.where(jnp.isfinite(key), -key, jnp.inf)
    return {
        "fastest-first": jnp.argsort(key, stable=True).astype(jnp.int32),
        "largest-first": jnp.lexsort((key, -cap)).astype(jnp.int32),
        "given": jnp.arange(N, dtype=jnp.int32),
        "slowest-first": jnp.argsort(slow_key, stable=True).astype(jnp.int32),
        "smallest-first": jnp.lexsort((key, cap)).astype(jnp.int32),
    }
