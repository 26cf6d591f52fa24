"""The exact expected per-token latency J(x) (DESIGN §2, §4.1), pure JAX.

    d[u, l, e] = min(fallback[u, l, e], min_{n : x[n, l, e]} latency[u, n, l, e])
    J(x)      = Σ_u traffic[u] Σ_l Σ_m weight[u, l, m] · max_k d[u, l, patterns[u, l, m, k]]

Every function takes one instance with a placement ``bool [N, L, E]`` or a batch (leading axis
on both) and is jit/vmap/grad friendly; ``aggregation`` is static ("max" or "sum").
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from slimjax.instance import Instance, is_batched

__all__ = [
    "latency",
    "total_latency",
    "expert_latency",
    "pattern_latency",
    "layer_latency",
    "storage_used",
    "AGGREGATIONS",
]

Aggregation = Literal["max", "sum"]
AGGREGATIONS = ("max", "sum")


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")


def _batched(fn):
    """Let ``fn(inst, placement, ...)`` accept a batch by vmapping over the leading axis."""

    def wrapper(inst: Instance, placement, *args, **kwargs):
        if is_batched(inst):
            placement = jnp.asarray(placement)
            if placement.ndim != 4:
                raise ValueError(f"placement: a batch needs shape [batch, N, L, E], got {placement.shape}")
            return jax.vmap(lambda i, p: fn(i, p, *args, **kwargs))(inst, placement)
        return fn(inst, placement, *args, **kwargs)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    wrapper.__wrapped__ = fn
    return wrapper


def expert_latency_from(
    node_latency: Float[Array, "U N L E"], fallback: Float[Array, "U L E"], placement: Array
) -> Float[Array, "U L E"]:
    """d = min(fallback, min over caching nodes of latency). ``placement`` may be bool or 0/1."""
    x = jnp.asarray(placement).astype(bool)
    masked = jnp.where(x[None], node_latency, jnp.inf)
    return jnp.minimum(fallback, masked.min(axis=1))


@_batched
def expert_latency(inst: Instance, placement: Bool[Array, "N L E"]) -> Float[Array, "U L E"]:
    """Per-user expert latency d [U, L, E] (batched: [batch, U, L, E])."""
    _check_placement(inst, placement)
    return expert_latency_from(inst.latency, inst.fallback, placement)


def pattern_latency_from(
    d: Float[Array, "U L E"], patterns: Int[Array, "U L M K"], aggregation: Aggregation = "max"
) -> Float[Array, "U L M"]:
    """Latency of each routing pattern: max (or sum) over its K members of d."""
    _check_aggregation(aggregation)
    member = jnp.take_along_axis(d[:, :, None, :], patterns, axis=-1)  # [U, L, M, K]
    return member.max(-1) if aggregation == "max" else member.sum(-1)


@partial(_batched)
def pattern_latency(
    inst: Instance, placement: Bool[Array, "N L E"], aggregation: Aggregation = "max"
) -> Float[Array, "U L M"]:
    """Latency of every routing pattern [U, L, M] under ``placement``."""
    d = expert_latency.__wrapped__(inst, placement)
    return pattern_latency_from(d, inst.patterns, aggregation)


def objective_from_d(inst: Instance, d: Float[Array, "U L E"], aggregation: Aggregation = "max") -> Float[Array, ""]:
    """J given the expert latencies d of one instance."""
    pl = pattern_latency_from(d, inst.patterns, aggregation)
    per_user = (inst.weight * pl).sum(axis=(-1, -2))
    return (inst.traffic * per_user).sum()


@_batched
def layer_latency(inst: Instance, placement: Bool[Array, "N L E"], aggregation: Aggregation = "max") -> Float[Array, "L"]:
    """Traffic-weighted expected latency of each layer [L]; sums to J."""
    pl = pattern_latency.__wrapped__(inst, placement, aggregation)
    return jnp.einsum("u,ulm,ulm->l", inst.traffic, inst.weight, pl)


@_batched
def latency(inst: Instance, placement: Bool[Array, "N L E"], aggregation: Aggregation = "max") -> Float[Array, ""]:
    """Expected per-token latency J(x) of the MoE part (scalar; batched: [batch]).

    Args:
      inst: an :class:`~slimjax.Instance` or a batch of them.
      placement: bool (or 0/1) [N, L, E], or [batch, N, L, E] for a batch.
      aggregation: "max" (experts run in parallel) or "sum" (one after another).

    Examples:
      >>> import jax.numpy as jnp, slimjax
      >>> inst = slimjax.generate.instances(jax.random.key(0), 4)   # doctest: +SKIP
      >>> slimjax.latency(inst, jnp.zeros((4,) + inst.latency.shape[-3:], bool))  # doctest: +SKIP
    """
    d = expert_latency.__wrapped__(inst, placement)
    return objective_from_d(inst, d, aggregation)


def total_latency(inst: Instance, placement, aggregation: Aggregation = "max"):
    """J plus the traffic-weighted non-expert ``base`` latency (what a user sees per token)."""
    return latency(inst, placement, aggregation) + (inst.traffic * inst.base).sum(-1)


@_batched
def storage_used(inst: Instance, placement: Bool[Array, "N L E"]) -> Float[Array, "N"]:
    """Storage used on each node [N] in the unit of ``size``."""
    return jnp.einsum("nle,le->n", jnp.asarray(placement).astype(inst.size.dtype), inst.size)


def _check_placement(inst: Instance, placement) -> None:
    shp = tuple(jnp.shape(placement))
    want = tuple(inst.latency.shape[-3:])
    if shp != want:
        raise ValueError(f"placement: expected shape [N, L, E] = {want}, got {shp}")
