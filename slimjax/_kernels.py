"""The pure array kernels of the latency model, on the arrays of one instance (no batch axis).

This is the leaf of the package: it imports nothing from slimjax. ``slimjax._objective`` (J),
``slimjax.queueing`` (the load model), the solvers and the bounds build on these functions, so
each formula has one definition:

    d[u, l, e]   = min(fallback[u, l, e], min_{n : x[n, l, e]} latency[u, n, l, e])
    pl[u, l, m]  = max_k d[u, l, patterns[u, l, m, k]]            ("sum": Σ_k)
    J            = Σ_u traffic[u] Σ_{l, m} weight[u, l, m] · pl[u, l, m]
    p[u, l, e]   = Σ_m weight[u, l, m] · [e ∈ pattern m]          (each distinct member once)
    a[u, l, e]   = the caching node with the smallest latency, or N (the fallback)
    rho[n]       = Σ_u rate[u] Σ_{(l, e) : a = n} p[u, l, e] · service[n, l, e]
    d_load       = latency[u, a, l, e] + service[a, l, e] · rho[a] / (1 − rho[a])   (fallback: no queue)

Every function is pure JAX (jit, vmap and grad friendly); vmap them for a batch. The formulas and
their conventions (lowest node index on ties, the fallback wins only when strictly faster) are
documented on the handbook pages *The problem* and *Load*.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

__all__ = [
    "AGGREGATIONS",
    "LoadTerms",
    "activation",
    "assignment_from",
    "assignment_share",
    "check_aggregation",
    "expert_latency_from",
    "j_from_d",
    "load_terms",
    "loaded_expert_latency_from",
    "loaded_node_latency",
    "pattern_latency_from",
    "repeated_member",
    "utilization_from",
    "waiting_time",
]

Aggregation = Literal["max", "sum"]
AGGREGATIONS = ("max", "sum")


def check_aggregation(aggregation: str) -> None:
    """Raise a ``ValueError`` naming ``aggregation`` unless it is "max" or "sum"."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")


def repeated_member(patterns: Int[ArrayLike, "*shape K"]) -> Bool[ArrayLike, "*shape K"]:
    """``dup[..., k]``: member k of a pattern repeats an earlier member (k' < k) of the same pattern.

    The one definition of "a repeated id counts once" (activation probabilities, the oracles'
    gains, the bounds' LP rows). NumPy in, NumPy out (host code); otherwise a JAX array.
    """
    xp = np if isinstance(patterns, np.ndarray) else jnp
    K = patterns.shape[-1]
    earlier = xp.tril(xp.ones((K, K), bool), -1)  # earlier[k, k'] = k' < k
    return ((patterns[..., :, None] == patterns[..., None, :]) & earlier).any(-1)


def expert_latency_from(
    node_latency: Float[Array, "U N L E"], fallback: Float[Array, "U L E"], placement: Array
) -> Float[Array, "U L E"]:
    """d = min(fallback, min over caching nodes of latency). ``placement`` may be bool or 0/1."""
    x = jnp.asarray(placement).astype(bool)
    masked = jnp.where(x[None], node_latency, jnp.inf)
    return jnp.minimum(fallback, masked.min(axis=1))


def pattern_latency_from(
    d: Float[Array, "U L E"], patterns: Int[Array, "U L M K"], aggregation: Aggregation = "max"
) -> Float[Array, "U L M"]:
    """Latency of each routing pattern: max (or sum) over its K members of d."""
    check_aggregation(aggregation)
    member = jnp.take_along_axis(d[:, :, None, :], patterns, axis=-1)  # [U, L, M, K]
    return member.max(-1) if aggregation == "max" else member.sum(-1)


def j_from_d(
    d: Float[Array, "U L E"],
    patterns: Int[Array, "U L M K"],
    weight: Float[Array, "U L M"],
    traffic: Float[Array, " U"],
    aggregation: Aggregation = "max",
) -> Float[Array, ""]:
    """J from the expert latencies d: ``Σ_u traffic Σ_{l,m} weight · pattern latency``."""
    pl = pattern_latency_from(d, patterns, aggregation)
    per_user = (weight * pl).sum(axis=(-1, -2))
    return (traffic * per_user).sum()


def activation(patterns: Int[Array, "U L M K"], weight: Float[Array, "U L M"], experts: int) -> Float[Array, "U L E"]:
    """``p[u, l, e] = Σ_m weight[u, l, m] · [e ∈ pattern m]``, each distinct member counted once."""
    U, L = patterns.shape[:2]
    dup = repeated_member(patterns)
    w = jnp.where(dup, 0.0, weight[..., None]).astype(weight.dtype)  # [U, L, M, K]
    uu = jnp.arange(U)[:, None, None, None]
    ll = jnp.arange(L)[None, :, None, None]
    return jnp.zeros((U, L, experts), weight.dtype).at[uu, ll, patterns].add(w)


def assignment_from(
    latency: Float[Array, "U N L E"], fallback: Float[Array, "U L E"], placement: Array
) -> Int[Array, "U L E"]:
    """The node serving (u, l, e): the caching node with the smallest latency (lowest index on
    ties), or ``N`` (the fallback) when none is reachable or the fallback is strictly faster."""
    N = latency.shape[1]
    x = jnp.asarray(placement).astype(bool)
    masked = jnp.where(x[None], latency, jnp.inf)  # [U, N, L, E]
    best = masked.argmin(axis=1).astype(jnp.int32)
    return jnp.where(masked.min(axis=1) <= fallback, best, jnp.int32(N))


def assignment_share(assign: Int[Array, "U L E"], N: int, dtype: object) -> Float[Array, "U N L E"]:
    """One-hot of an assignment over the N nodes (the fallback column dropped)."""
    return jnp.moveaxis(jax.nn.one_hot(assign, N + 1, dtype=dtype)[..., :N], -1, 1)


def utilization_from(
    p: Float[ArrayLike, "U L E"],
    rate: Float[ArrayLike, " U"],
    service: Float[ArrayLike, "N L E"],
    share: Float[ArrayLike, "U N L E"],
) -> Float[Array, " N"]:
    """``rho[n] = Σ_u rate[u] Σ_{l,e} share[u, n, l, e] · p[u, l, e] · service[n, l, e]``.

    ``share`` is the part of user u's activations of (l, e) sent to node n: the one-hot
    assignment for the model, or any fractional split (utilisation is linear in it, which a
    solver can use as a per-node resource).
    """
    return jnp.einsum("u,unle,ule,nle->n", rate, share, p, service)


def waiting_time(service: Float[Array, "N L E"], rho: Float[Array, " N"]) -> Float[Array, "N L E"]:
    """The M/M/1 (processor-sharing) mean waiting time ``service · rho / (1 − rho)``, [N, L, E].

    ``inf`` where ``rho[n] ≥ 1`` (an unstable queue); finite and differentiable below.
    """
    rho = jnp.asarray(rho)[:, None, None]
    stable = rho < 1
    r = jnp.where(stable, rho, 0.0)
    return jnp.where(stable, service * (r / (1.0 - r)), jnp.inf)


def loaded_node_latency(
    latency: Float[Array, "U N L E"], service: Float[Array, "N L E"], rho: Float[Array, " N"]
) -> Float[Array, "U N L E"]:
    """Loaded time of every (user, node, expert): ``latency + service · rho / (1 − rho)``.

    ``inf`` stays ``inf`` (unreachable) and nodes with ``rho ≥ 1`` are ``inf``.
    """
    return latency + waiting_time(service, rho)[None]


def loaded_expert_latency_from(
    latency: Float[Array, "U N L E"],
    fallback: Float[Array, "U L E"],
    service: Float[Array, "N L E"],
    assign: Int[Array, "U L E"],
    rho: Float[Array, " N"],
) -> Float[Array, "U L E"]:
    """Loaded expert latency of a given assignment and utilisation, [U, L, E].

    ``fallback`` where ``assign == N``, else ``latency[u, a, l, e] + waiting_time[a, l, e]``.
    """
    N = latency.shape[1]
    a = jnp.minimum(assign, N - 1)[:, None]  # [U, 1, L, E]; the fallback column is masked below
    lat_a = jnp.take_along_axis(latency, a, axis=1)[:, 0]  # [U, L, E]
    wait = waiting_time(service, rho)  # [N, L, E]
    wait_a = jnp.take_along_axis(jnp.broadcast_to(wait[None], latency.shape), a, axis=1)[:, 0]
    return jnp.where(assign == N, fallback, lat_a + wait_a)


class LoadTerms(NamedTuple):
    """What :func:`load_terms` returns for one instance and placement."""

    objective: Float[Array, ""]  #: J_load; ``inf`` when some rho[n] >= max_utilization
    unloaded: Float[Array, ""]  #: J of the same assignment without queueing
    utilization: Float[Array, " N"]  #: rho [N]
    feasible: Bool[Array, ""]  #: max_n rho[n] < max_utilization


def load_terms(
    latency: Float[Array, "U N L E"],
    fallback: Float[Array, "U L E"],
    service: Float[Array, "N L E"],
    rate: Float[Array, " U"],
    patterns: Int[Array, "U L M K"],
    weight: Float[Array, "U L M"],
    traffic: Float[Array, " U"],
    placement: Array,
    max_utilization: Float[ArrayLike, ""],
    aggregation: Aggregation = "max",
) -> LoadTerms:
    """J_load, J, rho and feasibility of one placement (the load model of the handbook's *Load*).

    J_load is evaluated on a utilisation that is finite everywhere and then replaced by ``inf``
    when infeasible: no NaN (0 · inf) from zero-weight patterns and no NaN gradients.
    """
    N, _, E = service.shape
    assign = assignment_from(latency, fallback, placement)
    p = activation(patterns, weight, E)
    rho = utilization_from(p, rate, service, assignment_share(assign, N, latency.dtype))
    feasible = (rho < max_utilization).all()
    rho_safe = jnp.where(feasible, rho, 0.0)
    d = loaded_expert_latency_from(latency, fallback, service, assign, rho_safe)
    d0 = loaded_expert_latency_from(latency, fallback, service, assign, jnp.zeros_like(rho))
    return LoadTerms(
        objective=jnp.where(feasible, j_from_d(d, patterns, weight, traffic, aggregation), jnp.inf),
        unloaded=j_from_d(d0, patterns, weight, traffic, aggregation),
        utilization=rho,
        feasible=feasible,
    )
