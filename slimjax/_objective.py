"""The exact expected per-token latency J(x), pure JAX.

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
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from slimjax._instance import Instance, is_batched
from slimjax._kernels import (
    AGGREGATIONS,
    check_aggregation,
    expert_latency_from,
    j_from_d,
    load_terms,
    pattern_latency_from,
    repeated_member,
)

__all__ = [
    "objective",
    "check_placement",
    "total_latency",
    "expert_latency",
    "pattern_latency",
    "layer_latency",
    "storage_used",
    "multilinear",
    "AGGREGATIONS",
]

Aggregation = Literal["max", "sum"]
#: a placement as the public functions take it (NumPy or JAX): bool, or integers 0/1; [N, L, E] for
#: one instance, [batch, N, L, E] for a batch
Placement = Bool[ArrayLike, "*batch N L E"] | Int[ArrayLike, "*batch N L E"]
_check_aggregation = check_aggregation


def _batched(fn):
    """Let ``fn(inst, placement, ...)`` accept a batch by vmapping over the leading axis."""

    def wrapper(inst: Instance, placement, *args, **kwargs):
        if not isinstance(inst, Instance):
            raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")
        placement = check_placement(inst, placement)
        if is_batched(inst):
            return jax.vmap(lambda i, p: fn(i, p, *args, **kwargs))(inst, placement)
        return fn(inst, placement, *args, **kwargs)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    wrapper.__wrapped__ = fn
    return wrapper


@_batched
def expert_latency(inst: Instance, placement: Bool[Array, "N L E"]) -> Float[Array, "U L E"]:
    """Per-user expert latency d [U, L, E] (batched: [batch, U, L, E])."""
    return expert_latency_from(inst.latency, inst.fallback, placement)


@partial(_batched)
def pattern_latency(
    inst: Instance, placement: Bool[Array, "N L E"], aggregation: Aggregation = "max"
) -> Float[Array, "U L M"]:
    """Latency of every routing pattern [U, L, M] under ``placement``."""
    d = expert_latency.__wrapped__(inst, placement)
    return pattern_latency_from(d, inst.patterns, aggregation)


def objective_from_d(inst: Instance, d: Float[Array, "U L E"], aggregation: Aggregation = "max") -> Float[Array, ""]:
    """J given the expert latencies d of one instance."""
    return j_from_d(d, inst.patterns, inst.weight, inst.traffic, aggregation)


@_batched
def layer_latency(inst: Instance, placement: Bool[Array, "N L E"], aggregation: Aggregation = "max") -> Float[Array, "L"]:
    """Traffic-weighted expected latency of each layer [L]; sums to J."""
    pl = pattern_latency.__wrapped__(inst, placement, aggregation)
    return jnp.einsum("u,ulm,ulm->l", inst.traffic, inst.weight, pl)


@_batched
def _objective(inst: Instance, placement: Bool[Array, "N L E"], aggregation: Aggregation = "max") -> Float[Array, ""]:
    d = expert_latency.__wrapped__(inst, placement)
    return objective_from_d(inst, d, aggregation)


def objective(
    inst: Instance,
    placement: Placement,
    aggregation: Aggregation = "max",
    *,
    load: bool = False,
    max_utilization: float = 0.95,
) -> Float[Array, "*batch"]:
    """The objective J(x): expected per-token latency of the MoE part (scalar; batched: [batch]).

    Args:
      inst: an :class:`~slimjax.Instance` or a batch of them.
      placement: bool (or 0/1) [N, L, E], or [batch, N, L, E] for a batch.
      aggregation: "max" (experts run in parallel) or "sum" (one after another).
      load: J_load instead of J: node latencies with the M/M/1 waiting time of their
        utilisation (needs the instance's ``service`` and ``rate`` fields; see
        :func:`slimjax.queueing.loaded_objective`); ``inf`` when a node reaches ``max_utilization``.
      max_utilization: with ``load=True``, the utilisation from which a placement is load-infeasible.

    Examples:
      >>> import jax, jax.numpy as jnp, slimjax
      >>> batch = slimjax.generate.instances(jax.random.key(0), 4, model="mixtral_8x7b")
      >>> J = slimjax.objective(batch, jnp.zeros((4,) + batch.latency.shape[-3:], bool))
      >>> J.shape
      (4,)
    """
    if load:
        if not isinstance(inst, Instance) or not inst.has_load:
            raise ValueError("load: load=True needs an instance with a load model (fields service and rate); "
                             "generate one with network={'load': 0.3} or pass service=... and rate=...")
        _check_aggregation(aggregation)
        check_max_utilization(max_utilization)
        x = check_placement(inst, placement)
        return _loaded_objective(inst, x, jnp.asarray(max_utilization, inst.latency.dtype), aggregation)
    return _objective(inst, placement, aggregation)


def check_max_utilization(max_utilization) -> None:
    """Raise a ``ValueError`` naming ``max_utilization`` unless it is a scalar in (0, 1]."""
    if isinstance(max_utilization, jax.core.Tracer):
        return
    m = np.asarray(max_utilization)  # host value: no staging inside jit
    if m.ndim != 0:
        raise ValueError(f"max_utilization: must be a scalar, got shape {m.shape}")
    if not (0.0 < float(m) <= 1.0):
        raise ValueError(f"max_utilization: must be in (0, 1], got {float(m)!r}")


@partial(jax.jit, static_argnames=("aggregation",))
def _loaded_objective(inst: Instance, x: Array, m: Array, aggregation: Aggregation) -> Array:
    """J_load of one instance or a batch (the kernels' :func:`~slimjax._kernels.load_terms`)."""

    def one(i: Instance, xx: Array) -> Array:
        return load_terms(i.latency, i.fallback, i.service, i.rate, i.patterns, i.weight, i.traffic, xx, m,
                          aggregation).objective

    return jax.vmap(one)(inst, x) if is_batched(inst) else one(inst, x)


def total_latency(inst: Instance, placement, aggregation: Aggregation = "max"):
    """J plus the traffic-weighted non-expert ``base`` latency (what a user sees per token)."""
    return objective(inst, placement, aggregation) + (inst.traffic * inst.base).sum(-1)


@_batched
def storage_used(inst: Instance, placement: Bool[Array, "N L E"]) -> Float[Array, "N"]:
    """Storage used on each node [N] in the unit of ``size``."""
    return jnp.einsum("nle,le->n", jnp.asarray(placement).astype(inst.size.dtype), inst.size)


def check_placement(inst: Instance, placement) -> Array:
    """``placement`` as a bool array after checking its shape and dtype (host-side when concrete).

    Accepts bool, or integers that are all 0 or 1; refuses other dtypes (fractional cache
    probabilities go to :func:`multilinear`). Shape [N, L, E], or [batch, N, L, E] for a batch.

    Raises:
      ValueError: naming ``placement``, the expected shape or the dtype rule.
    """
    want = tuple(inst.latency.shape[:-4]) + tuple(inst.latency.shape[-3:])
    shp = tuple(jnp.shape(placement))
    if shp != want:
        lead = "[batch, N, L, E]" if inst.latency.ndim > 4 else "[N, L, E]"
        raise ValueError(f"placement: expected shape {lead} = {list(want)}, got {list(shp)}")
    dtype = np.dtype(placement.dtype if hasattr(placement, "dtype") else np.asarray(placement).dtype)
    if dtype == np.bool_:
        return jnp.asarray(placement)
    if np.issubdtype(dtype, np.integer):
        if not isinstance(placement, jax.core.Tracer):
            vals = np.asarray(placement)
            if ((vals != 0) & (vals != 1)).any():
                raise ValueError(f"placement: integer placements must hold only 0 and 1, got {vals[(vals != 0) & (vals != 1)][0]}")
        return jnp.asarray(placement).astype(bool)
    raise ValueError(
        f"placement: must be bool (or 0/1 integers), got dtype {dtype}; for cache probabilities use slimjax.multilinear"
    )


# -- the multilinear extension ---------------------------------------------------------------
#
# For independent Bernoulli placements x ~ p, the latency of expert (l, e) for user u is the min
# over the nodes that cache it and the fallback. With the node values clipped to the fallback
# (``inf`` = unreachable and nodes slower than the fallback never matter) and the fallback added
# as one more "node" that always holds the expert, sorting the N + 1 values ascending gives the
# CDF at the j-th value as 1 − Π_{i ≤ j}(1 − p_i). A pattern's latency is the max over its
# distinct members, independent experts, so its CDF is the product of the members' CDFs at the
# merged sorted breakpoints t_j, and  E[max] = Σ_j t_j (G(t_j) − G(t_{j−1})).  This "jump" form
# equals ``latency`` bit for bit at every 0/1 point (one term is t_J · 1, the others are 0).
# The breakpoints and their ranks do not depend on p: :func:`multilinear_plan` computes them
# once and :func:`multilinear_eval` is the cheap, differentiable part (a solver reuses a plan).


def multilinear_plan(inst: Instance, aggregation: Aggregation = "max") -> dict:
    """The p-independent part of the multilinear extension of one (unbatched) instance.

    Returns a dict of arrays: ``perm`` int32 [U, L, E, N+1] (ascending order of the clipped node
    values, the fallback last among ties), ``s`` [U, L, E, N+1] the sorted values; for "max" also
    ``t`` [U, L, M, B] the sorted breakpoints of every pattern (B = K·(N+1)), ``rank`` int32
    [U, L, M, K, B] how many of member k's values are ≤ t_j, and ``dup`` bool [U, L, M, K]
    (member k repeats an earlier member).
    """
    _check_aggregation(aggregation)
    U, N, L, _ = inst.latency.shape
    fb = inst.fallback  # [U, L, E]
    v = jnp.minimum(inst.latency, fb[:, None])  # [U, N, L, E], inf -> fallback
    v = jnp.concatenate([jnp.moveaxis(v, 1, -1), fb[..., None]], axis=-1)  # [U, L, E, N+1]
    perm = jnp.argsort(v, axis=-1, stable=True).astype(jnp.int32)
    s = jnp.take_along_axis(v, perm, axis=-1)
    plan = {"perm": perm, "s": s}
    if aggregation == "max":
        pat = inst.patterns  # [U, L, M, K]
        M, K = pat.shape[-2:]
        s_mem = jax.vmap(jax.vmap(lambda s_le, p_lm: s_le[p_lm]))(s, pat)  # [U, L, M, K, N+1]
        t = jnp.sort(s_mem.reshape(U, L, M, K * (N + 1)), axis=-1)  # [U, L, M, B]
        rank = (s_mem[..., None, :] <= t[..., None, :, None]).sum(-1).astype(jnp.int32)  # [U,L,M,K,B]
        dup = repeated_member(pat)  # [U, L, M, K]
        plan.update(t=t, rank=rank, dup=dup)
    return plan


def _multilinear_patterns(
    inst: Instance, plan: dict, p: Float[Array, "N L E"], aggregation: Aggregation = "max"
) -> Float[Array, "U L M"]:
    """Expected latency of every pattern [U, L, M] of one instance from its plan."""
    U, L, E, N1 = plan["s"].shape
    p = jnp.asarray(p, dtype=plan["s"].dtype)
    one = jnp.ones(p.shape[1:] + (1,), p.dtype)
    q = jnp.concatenate([jnp.moveaxis(p, 0, -1), one], axis=-1)  # [L, E, N+1], the fallback always holds
    q = jnp.take_along_axis(jnp.broadcast_to(q, (U, L, E, N1)), plan["perm"], axis=-1)
    cdf = 1.0 - jnp.cumprod(1.0 - q, axis=-1)  # [U, L, E, N+1] P(latency <= s_i)
    cdf_prev = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf[..., :-1]], axis=-1)
    if aggregation == "sum":
        mean_d = (plan["s"] * (cdf - cdf_prev)).sum(-1)  # [U, L, E] = E[d]
        pl = pattern_latency_from(mean_d, inst.patterns, "sum")
    else:
        cdf0 = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf], axis=-1)  # [U, L, E, N+2], rank 0 -> 0
        pat = inst.patterns
        c_mem = jax.vmap(jax.vmap(lambda c_le, p_lm: c_le[p_lm]))(cdf0, pat)  # [U, L, M, K, N+2]
        F = jnp.take_along_axis(c_mem, plan["rank"], axis=-1)  # [U, L, M, K, B]
        F = jnp.where(plan["dup"][..., None], 1.0, F)
        G = F.prod(axis=-2)  # [U, L, M, B] CDF of the pattern's max at t_j
        G_prev = jnp.concatenate([jnp.zeros_like(G[..., :1]), G[..., :-1]], axis=-1)
        pl = (plan["t"] * (G - G_prev)).sum(-1)  # [U, L, M]
    return pl


def _weighted_total(inst: Instance, pl: Float[Array, "U L M"]) -> Float[Array, ""]:
    """Σ_u traffic Σ_{l,m} weight · pl, the same operations as :func:`objective_from_d`."""
    per_user = (inst.weight * pl).sum(axis=(-1, -2))
    return (inst.traffic * per_user).sum()


def multilinear_eval(
    inst: Instance, plan: dict, p: Float[Array, "N L E"], aggregation: Aggregation = "max"
) -> Float[Array, ""]:
    """E_{x~Bernoulli(p)} J(x) of one instance from its :func:`multilinear_plan`."""
    return _weighted_total(inst, _multilinear_patterns(inst, plan, p, aggregation))


@partial(jax.jit, static_argnames=("aggregation",))
def _multilinear_jit(inst: Instance, p, aggregation: Aggregation):
    """Pattern expectations [([batch,] U, L, M)]; the weighted total is taken outside the jit with
    exactly the operations of :func:`latency`, so the two agree bit for bit at 0/1 points."""
    one = lambda i, q: _multilinear_patterns(i, multilinear_plan(i, aggregation), q, aggregation)
    return jax.vmap(one)(inst, p) if is_batched(inst) else one(inst, p)


def multilinear(
    inst: Instance, p: Float[ArrayLike, "*batch N L E"], aggregation: Aggregation = "max"
) -> Float[Array, "*batch"]:
    """The multilinear extension of J: E_{x~Bernoulli(p)} J(x), exact and differentiable.

    Every x[n, l, e] is cached independently with probability p[n, l, e]. Equals
    :func:`latency` at every 0/1 point (bit for bit in float64) and is linear in each coordinate.

    Args:
      inst: an instance or a batch.
      p: probabilities in [0, 1], [N, L, E] ([batch, N, L, E] for a batch).
      aggregation: "max" or "sum" (static).

    Returns:
      a scalar ([batch] for a batch).
    """
    _check_aggregation(aggregation)
    want = tuple(inst.latency.shape[:-4]) + tuple(inst.latency.shape[-3:])
    if tuple(jnp.shape(p)) != want:
        raise ValueError(f"placement: p must have shape {list(want)} ([batch,] N, L, E), got {tuple(jnp.shape(p))}")
    pl = _multilinear_jit(inst, p, aggregation)
    if is_batched(inst):
        return jax.vmap(_weighted_total)(inst, pl)
    return _weighted_total(inst, pl)
