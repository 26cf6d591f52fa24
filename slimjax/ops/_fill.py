"""Priority fill: take items by decreasing priority while they fit (one node's knapsack, greedily)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

__all__ = ["priority_fill"]

_NEG = -jnp.inf


def priority_fill(
    priority: Float[Array, "L E"],
    size: Array,
    capacity: Array,
    taken: Bool[Array, "L E"] | None = None,
) -> Bool[Array, "L E"]:
    """Items (l, e) by decreasing ``priority``, each taken when it still fits; a ``lax.scan``
    over the L·E items (ties: the lower flat index first).

    Args:
      priority: float [L, E]; ``-inf`` is never taken.
      size: per-layer sizes [L] or per-item sizes [L, E] (integer grid units or real units).
      capacity: the node's capacity (same unit as ``size``), a scalar.
      taken: bool [L, E] already placed: kept, and their storage counted first.

    Returns:
      bool [L, E], a superset of ``taken`` whose storage fits ``capacity`` when ``taken``'s does.
    """
    L, E = priority.shape
    p = priority.reshape(-1)
    s = jnp.broadcast_to(size[:, None] if jnp.ndim(size) == 1 else size, (L, E)).reshape(-1)
    x0 = jnp.zeros(L * E, bool) if taken is None else taken.reshape(-1)
    used0 = jnp.where(x0, s, 0).sum()
    order = jnp.argsort(-p, stable=True)

    def step(used, i):
        take = ~x0[i] & (p[i] > _NEG) & (used + s[i] <= capacity)
        return used + jnp.where(take, s[i], 0), take

    _, took = jax.lax.scan(step, used0, order)
    out = jnp.zeros(L * E, bool).at[order].set(took) | x0
    return out.reshape(L, E)
