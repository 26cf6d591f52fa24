"""Euclidean projection onto the relaxed storage polytope (the relaxed baseline), pure JAX.

Per node n the feasible set is ``{0 ≤ p ≤ 1, Σ_{l,e} size[l, e] · p[n, l, e] ≤ capacity[n]}``.
By the KKT conditions its projection is ``clip(y − τ·size, 0, 1)`` with τ = 0 when the clipped
point already fits, else the τ > 0 at which the storage is exactly full. The used storage is
non-increasing in τ, so τ is found by bisection with a fixed number of iterations; the upper
(feasible) end of the bracket is returned, so the result always fits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["project_storage"]


def project_storage(
    y: Float[ArrayLike, "*batch N L E"],
    size: Float[ArrayLike, "*batch L E"],
    capacity: Float[ArrayLike, "*batch N"],
    iters: int = 60,
) -> Float[Array, "*batch N L E"]:
    """Project ``y`` onto ``{0 ≤ p ≤ 1, Σ size·p ≤ capacity}`` node by node.

    Args:
      y: points [N, L, E] (batched: any leading axes on y, size and capacity alike,
        e.g. [B, N, L, E], [B, L, E], [B, N]).
      size: item sizes [L, E], > 0.
      capacity: node capacities [N], ≥ 0.
      iters: bisection steps (static); the bracket shrinks by 2^-iters.

    Returns:
      p [N, L, E], feasible: Σ size·p ≤ capacity on every node (exactly, up to rounding of the sum).
    """
    y = jnp.asarray(y)
    if y.ndim > 3:
        return jax.vmap(lambda a, b, c: project_storage(a, b, c, iters))(y, jnp.asarray(size), jnp.asarray(capacity))
    if y.ndim != 3:
        raise ValueError(f"y: expected shape [N, L, E], got {y.shape}")
    size = jnp.asarray(size, y.dtype)
    capacity = jnp.asarray(capacity, y.dtype)
    if size.shape != y.shape[1:]:
        raise ValueError(f"size: expected shape {y.shape[1:]} (= y's [L, E]), got {size.shape}")
    if capacity.shape != y.shape[:1]:
        raise ValueError(f"capacity: expected shape {y.shape[:1]} (= y's [N]), got {capacity.shape}")

    def used(tau):  # tau [N] -> storage [N]
        return (size * jnp.clip(y - tau[:, None, None] * size, 0.0, 1.0)).sum(axis=(1, 2))

    cap = jnp.maximum(capacity, 0.0)
    # At tau_hi every coordinate is clipped to 0 (y - tau*size <= 0).
    tau_hi = jnp.maximum(jnp.max(y / size, axis=(1, 2)), 0.0)
    tau_lo = jnp.zeros_like(tau_hi)

    def step(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        fits = used(mid) <= cap
        return jnp.where(fits, lo, mid), jnp.where(fits, mid, hi)

    _, hi = jax.lax.fori_loop(0, iters, step, (tau_lo, tau_hi))
    tau = jnp.where(used(tau_lo) <= cap, 0.0, hi)
    return jnp.clip(y - tau[:, None, None] * size, 0.0, 1.0)
