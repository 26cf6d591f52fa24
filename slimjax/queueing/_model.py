"""The load-aware latency model: utilisation of the nodes and the loaded objective J_load.

With the optional instance fields ``service`` [N, L, E] (compute time of one activation of
expert (l, e) on node n, the part of ``latency`` that queues) and ``rate`` [U] (tokens per second
of user u):

* assignment ``a[u, l, e]``: the node caching (l, e) with the smallest unloaded
  ``latency[u, n, l, e]`` (lowest index on ties), or the fallback (``a = N``) when no reachable
  node caches it or the fallback is strictly faster; it depends on the placement only;
* activation probability ``p[u, l, e] = Σ_m weight[u, l, m] · [e ∈ patterns[u, l, m]]``,
  each distinct member counted once;
* utilisation ``rho[n] = Σ_u rate[u] Σ_{(l, e) : a[u, l, e] = n} p[u, l, e] · service[n, l, e]``;
* loaded node time ``latency[u, n, l, e] + service[n, l, e] · rho[n] / (1 − rho[n])``
  (``inf`` when ``rho[n] ≥ 1``); the fallback does not queue;
* ``J_load`` is the objective J on the loaded expert times of the assignment; a placement with
  some ``rho[n] ≥ max_utilization`` is load-infeasible and its ``J_load`` is ``inf``.

Every function takes one instance (placement ``bool [N, L, E]``) or a batch (a leading axis on
both) and is pure JAX: jit, vmap and grad friendly. Without ``service``/``rate`` the utilisation
is zero and ``J_load`` is J. The ``*_from`` functions work on arrays of one instance, for solvers
that iterate on a utilisation estimate.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from slimjax import _kernels as K
from slimjax._instance import Instance, is_batched
from slimjax._kernels import loaded_expert_latency_from, loaded_node_latency, utilization_from, waiting_time
from slimjax._objective import Placement, check_max_utilization

__all__ = [
    "LoadReport",
    "activation_probability",
    "assignment",
    "load_report",
    "loaded_expert_latency",
    "loaded_expert_latency_from",
    "loaded_node_latency",
    "loaded_objective",
    "utilization",
    "utilization_from",
    "waiting_time",
]

Aggregation = Literal["max", "sum"]


class LoadReport(NamedTuple):
    """The load-aware evaluation of a placement (fields gain a leading axis for a batch).

    Attributes:
      objective: J_load, a scalar; ``inf`` when load-infeasible.
      unloaded: J, the objective without queueing (same assignment, ``rho = 0``).
      utilization: rho [N].
      feasible: bool scalar, ``max_n rho[n] < max_utilization``.
      bottleneck: int32 scalar, the node with the largest utilisation.
    """

    objective: Float[Array, ""]
    unloaded: Float[Array, ""]
    utilization: Float[Array, " N"]
    feasible: Bool[Array, ""]
    bottleneck: Int[Array, ""]


# -- checks and batching -----------------------------------------------------------------------


_check_aggregation = K.check_aggregation
_check_max_utilization = check_max_utilization


def _check_placement(inst: Instance, placement) -> None:
    want = tuple(inst.latency.shape[:-4]) + tuple(inst.latency.shape[-3:])
    got = tuple(jnp.shape(placement))
    if got != want:
        lead = "[batch, N, L, E]" if is_batched(inst) else "[N, L, E]"
        raise ValueError(f"placement: expected shape {lead} = {list(want)}, got {list(got)}")


def _check_rho(inst: Instance, rho) -> None:
    want = tuple(inst.latency.shape[:-4]) + (inst.latency.shape[-3],)
    got = tuple(jnp.shape(rho))
    if got != want:
        raise ValueError(f"rho: expected shape ([batch,] N) = {list(want)}, got {list(got)}")


@partial(jax.jit, static_argnums=(0,))
def _per_instance(fn, inst: Instance, *arrays, shared=()):
    """``fn(inst, *arrays, *shared)`` on one instance, vmapped over the leading axis of ``inst``
    and ``arrays`` for a batch (``shared`` is not batched). Compiled once per function and shape."""
    if is_batched(inst):
        return jax.vmap(lambda i, *a: fn(i, *a, *shared))(inst, *arrays)
    return fn(inst, *arrays, *shared)


# -- the formulas on arrays of one instance ---------------------------------------------------


def activation_probability(inst: Instance) -> Float[Array, "U L E"]:
    """``p[u, l, e] = Σ_m weight[u, l, m] · [e ∈ pattern m]`` (distinct members), [U, L, E].

    A repeated id in a pattern counts once. Batched: [batch, U, L, E].
    """
    return _per_instance(_activation_one, inst)


def _activation_one(inst: Instance) -> Float[Array, "U L E"]:
    return K.activation(inst.patterns, inst.weight, inst.latency.shape[-1])


def _assignment_one(inst: Instance, placement: Placement) -> Int[Array, "U L E"]:
    return K.assignment_from(inst.latency, inst.fallback, placement)


def assignment(inst: Instance, placement: Placement) -> Int[Array, "*batch U L E"]:
    """Which node serves user u's expert (l, e): int32 [U, L, E] in ``[0, N]``, ``N`` = fallback.

    The caching node with the smallest unloaded latency (lowest index on ties); the fallback when
    no reachable node caches the expert or the fallback is strictly faster. Batched:
    [batch, U, L, E].
    """
    _check_placement(inst, placement)
    return _per_instance(_assignment_one, inst, jnp.asarray(placement))


_share = K.assignment_share


# -- on instances ---------------------------------------------------------------------------


def _load_fields(inst: Instance) -> tuple[Array, Array]:
    """``service`` and ``rate``; zeros (no queueing) when the instance has no load model."""
    if inst.has_load:
        return inst.service, inst.rate
    U, N, L, E = inst.latency.shape
    return jnp.zeros((N, L, E), inst.latency.dtype), jnp.zeros((U,), inst.latency.dtype)


def _utilization_one(inst: Instance, placement) -> Float[Array, " N"]:
    service, rate = _load_fields(inst)
    N = inst.latency.shape[1]
    share = _share(_assignment_one(inst, placement), N, inst.latency.dtype)
    return utilization_from(_activation_one(inst), rate, service, share)


def utilization(inst: Instance, placement: Placement) -> Float[Array, "*batch N"]:
    """Utilisation rho [N] of every node under ``placement`` ([batch, N] for a batch).

    ``rho[n] = Σ_u rate[u] Σ_{(l, e) assigned to n} p[u, l, e] · service[n, l, e]``; zeros when
    the instance has no ``service``/``rate``.

    Examples:
      >>> import numpy as np, slimjax
      >>> inst = slimjax.Instance(latency=np.full((1, 1, 1, 2), 2.0), fallback=np.full((1, 1, 2), 9.0),
      ...     size=np.ones((1, 2)), capacity=np.array([2.0]), patterns=np.array([[[[0], [1]]]]),
      ...     weight=np.array([[[0.75, 0.25]]]), service=np.full((1, 1, 2), 0.5), rate=np.array([1.0]))
      >>> float(slimjax.queueing.utilization(inst, np.ones((1, 1, 2), bool))[0])
      0.5
    """
    _check_placement(inst, placement)
    return _per_instance(_utilization_one, inst, jnp.asarray(placement))


def _loaded_d_one(inst: Instance, placement, rho) -> Float[Array, "U L E"]:
    service, _ = _load_fields(inst)
    return loaded_expert_latency_from(inst.latency, inst.fallback, service, _assignment_one(inst, placement), rho)


def loaded_expert_latency(
    inst: Instance, placement: Placement, rho: Float[ArrayLike, "*batch N"] | None = None
) -> Float[Array, "*batch U L E"]:
    """Loaded expert latency d_load [U, L, E] of the (unloaded) assignment of ``placement``.

    Args:
      inst: an instance or a batch.
      placement: bool [N, L, E] ([batch, N, L, E]).
      rho: the utilisation to use, [N] ([batch, N]); default :func:`utilization` of
        ``placement``. A solver iterating on an estimate passes its own.

    Returns:
      float [U, L, E] ([batch, U, L, E]); ``inf`` on nodes with ``rho ≥ 1``.
    """
    _check_placement(inst, placement)
    x = jnp.asarray(placement)
    if rho is None:
        rho = _per_instance(_utilization_one, inst, x)
    else:
        _check_rho(inst, rho)
    return _per_instance(_loaded_d_one, inst, x, jnp.asarray(rho, inst.latency.dtype))


def _report_one(inst: Instance, placement, max_utilization, aggregation: str) -> LoadReport:
    service, rate = _load_fields(inst)
    t = K.load_terms(inst.latency, inst.fallback, service, rate, inst.patterns, inst.weight, inst.traffic,
                     placement, max_utilization, aggregation)
    return LoadReport(
        objective=t.objective,
        unloaded=t.unloaded,
        utilization=t.utilization,
        feasible=t.feasible,
        bottleneck=t.utilization.argmax().astype(jnp.int32),
    )


# One function object per aggregation, so that the compiled report is cached across calls.
_REPORT = {agg: partial(_report_one, aggregation=agg) for agg in K.AGGREGATIONS}


def load_report(
    inst: Instance,
    placement: Placement,
    *,
    max_utilization: float | Array = 0.95,
    aggregation: Aggregation = "max",
) -> LoadReport:
    """J_load with its status: objective, unloaded J, utilisation, feasibility and bottleneck.

    Args:
      inst: an instance or a batch.
      placement: bool [N, L, E] ([batch, N, L, E]).
      max_utilization: a placement with some ``rho[n] ≥ max_utilization`` is load-infeasible
        (its objective is ``inf`` and ``feasible`` is False); in (0, 1].
      aggregation: "max" (experts of a layer in parallel) or "sum" (static).

    Returns:
      a :class:`LoadReport` (a leading batch axis on every field for a batch).
    """
    _check_aggregation(aggregation)
    _check_max_utilization(max_utilization)
    _check_placement(inst, placement)
    m = jnp.asarray(max_utilization, inst.latency.dtype)
    return _per_instance(_REPORT[aggregation], inst, jnp.asarray(placement), shared=(m,))


def loaded_objective(
    inst: Instance,
    placement: Placement,
    *,
    max_utilization: float | Array = 0.95,
    aggregation: Aggregation = "max",
) -> Float[Array, "*batch"]:
    """J_load: the expected per-token latency with M/M/1 queueing at the nodes (scalar; [batch]).

    ``J_load = Σ_u traffic[u] Σ_l Σ_m weight[u, l, m] · max_k d_load[u, l, patterns[u, l, m, k]]``
    with ``d_load`` from :func:`loaded_expert_latency`; ``inf`` when some node has
    ``rho[n] ≥ max_utilization`` (use :func:`load_report` for the status and the utilisation).
    Equals J when the instance has no load model.
    """
    return load_report(inst, placement, max_utilization=max_utilization, aggregation=aggregation).objective
