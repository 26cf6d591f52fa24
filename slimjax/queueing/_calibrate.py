"""Setting the token rates of an instance to a load level.

``reference_placement`` is the placement a plain cache would hold (per-node LFU), and
``rate_for_load`` scales the token rates, proportional to ``traffic``, so that the mean
utilisation of some nodes under a placement is a target level. Utilisation is linear in the
rates, so the scaling is exact. Both are pure JAX on one instance (vmap them for a batch), which
lets the generators run them inside their compiled sampler.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from slimjax._instance import Instance
from slimjax._objective import Placement
from slimjax.queueing._model import _activation_one, _assignment_one, _share, utilization_from
from slimjax.ops import priority_fill

__all__ = ["rate_for_load", "reference_placement"]


@jax.jit
def reference_placement(inst: Instance) -> Bool[Array, "N L E"]:
    """Per-node LFU: node n caches experts by decreasing ``Σ_{u reaches n} traffic[u] · p[u, l, e]``.

    Each node is filled independently, the most frequently activated expert of the users that
    reach it (finite latency) first, each one taken while it still fits the node's capacity
    (ties: the lower flat index). A node no user reaches caches nothing. One instance, bool
    [N, L, E].
    """
    p = _activation_one(inst)  # [U, L, E]
    reach = jnp.isfinite(inst.latency)  # [U, N, L, E]
    freq = jnp.einsum("u,unle,ule->nle", inst.traffic, reach.astype(p.dtype), p)
    prio = jnp.where(reach.any(0), freq, -jnp.inf)
    return jax.vmap(lambda pr, c: priority_fill(pr, inst.size, c))(prio, inst.capacity)


def rate_for_load(
    inst: Instance,
    level: float | Array,
    service: Float[Array, "N L E"],
    placement: Placement | None = None,
    nodes: Bool[ArrayLike, " N"] | None = None,
    statistic: str = "mean",
) -> Float[Array, " U"]:
    """Token rates ``rate = Λ · traffic`` whose mean (or max) utilisation over ``nodes`` is ``level``.

    The mean (``statistic="max"``: the max) is over the nodes in ``nodes`` (default: all) that
    carry load under ``placement`` (default: :func:`reference_placement`); when none of them
    does, over every node that carries load; when no node carries load at all (the placement
    caches nothing that a user would fetch from a node), the rates are 0.

    Args:
      inst: one instance (its ``rate`` and ``service`` fields are ignored).
      level: target utilisation, >= 0.
      service: float [N, L, E], the compute times used for the utilisation.
      placement: bool [N, L, E] or None.
      nodes: bool [N] or None.
      statistic: "mean" or "max" (static).

    Returns:
      float [U], ``Λ · traffic``.
    """
    if statistic not in ("mean", "max"):
        raise ValueError(f"statistic: must be 'mean' or 'max', got {statistic!r}")
    return _rate_for_load(inst, level, service, placement, nodes, statistic)


@partial(jax.jit, static_argnames=("statistic",))
def _rate_for_load(inst, level, service, placement, nodes, statistic: str) -> Float[Array, " U"]:
    """:func:`rate_for_load` after its argument check, compiled per shape and statistic."""
    N = inst.latency.shape[1]
    x = reference_placement(inst) if placement is None else jnp.asarray(placement, bool)
    share = _share(_assignment_one(inst, x), N, inst.latency.dtype)
    rho1 = utilization_from(_activation_one(inst), inst.traffic, service, share)  # rho at Λ = 1
    busy = rho1 > 0
    sel = busy if nodes is None else busy & jnp.asarray(nodes, bool)
    sel = jnp.where(sel.any(), sel, busy)
    count = sel.sum()
    if statistic == "mean":
        stat1 = jnp.where(sel, rho1, 0.0).sum() / jnp.maximum(count, 1)
    else:
        stat1 = jnp.where(sel, rho1, 0.0).max()
    lam = jnp.where(count > 0, level / jnp.where(count > 0, stat1, 1.0), 0.0)
    return (lam * inst.traffic).astype(inst.latency.dtype)
