"""slimjax: batched solvers and experiments for expert caching in edge networks for MoE inference.

The public API::

    slimjax.Instance, slimjax.stack, slimjax.unstack                 the problem data
    slimjax.objective, slimjax.total_latency, slimjax.expert_latency, slimjax.layer_latency,
    slimjax.pattern_latency, slimjax.storage_used, slimjax.multilinear, slimjax.feasible
    slimjax.replay, slimjax.replay_stats                             per-token latencies
    slimjax.solve, slimjax.solve_batch, slimjax.methods, slimjax.Solution, slimjax.Status
    slimjax.lower_bound, slimjax.certify                             certified bounds and optimality gaps
    slimjax.explain, slimjax.Explanation                             why a placement is good
    slimjax.save, slimjax.load, slimjax.placement_frame              files and tables of results
    slimjax.solvers (solver objects, chain), slimjax.ops (building blocks),
    slimjax.generate (instance generators), slimjax.traces (real routing traces),
    slimjax.bounds (lower-bound methods, Bound, Certificate),
    slimjax.dynamic (re-placing experts over time as routing drifts),
    slimjax.queueing (the load model: utilisation, loaded latency, a discrete-event simulator)

Submodules are imported on first use, so ``import slimjax`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from slimjax._explain import Explanation, explain
from slimjax._instance import Instance, stack, unstack
from slimjax._io import export_placement, load, placement_frame, save
from slimjax._objective import (
    expert_latency,
    layer_latency,
    multilinear,
    objective,
    pattern_latency,
    storage_used,
    total_latency,
)
from slimjax._replay import replay, replay_stats

if TYPE_CHECKING:  # imported on first use (see __getattr__); named here for type checkers and docs
    from slimjax.solvers import Solution, Status, chain, feasible, methods, solve, solve_batch

from slimjax._version import __version__  # noqa: E402  (one definition)

__all__ = [
    "Explanation",
    "Instance",
    "Solution",
    "Status",
    "bounds",
    "certify",
    "chain",
    "dynamic",
    "expert_latency",
    "explain",
    "export_placement",
    "feasible",
    "generate",
    "layer_latency",
    "load",
    "lower_bound",
    "methods",
    "multilinear",
    "objective",
    "ops",
    "pattern_latency",
    "queueing",
    "placement_frame",
    "replay",
    "replay_stats",
    "save",
    "solve",
    "solve_batch",
    "solvers",
    "stack",
    "storage_used",
    "total_latency",
    "traces",
    "unstack",
    "utilization",
]

_SUBMODULES = ("generate", "traces", "ops", "solvers", "plots", "app", "queueing", "bounds", "dynamic")
#: names re-exported from ``slimjax.solvers`` (imported on first use)
_FROM_SOLVERS = ("Solution", "Status", "chain", "feasible", "methods", "solve", "solve_batch")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"slimjax.{name}")
    if name in _FROM_SOLVERS:
        value = getattr(importlib.import_module("slimjax.solvers"), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if name == "utilization":
        from slimjax.queueing import utilization

        return utilization
    raise AttributeError(f"module 'slimjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def lower_bound(batch: Instance, method: Any = "auto", **options):
    """Certified lower bounds on the optimal J, one per instance of a batch.

    The same function as :func:`slimjax.bounds.lower_bound` (imported on first call, so that
    ``import slimjax`` stays light); every option is described there.

    Args:
      batch: an Instance or a batch of B instances.
      method: a bound method object of :mod:`slimjax.bounds` (``Levels()``, ``ThresholdLP(rtol=1e-6)``,
        ...) or its name: ``"auto"`` (default: the best of the JAX bounds that apply), ``"levels"``,
        ``"threshold"``, ``"lp"`` (the MILP's LP relaxation by PDHG in JAX), ``"highs"`` (that LP
        on HiGHS, one instance at a time; needs the ``milp`` extra), ``"threshold-highs"`` or
        ``"trivial"`` (see :data:`slimjax.bounds.METHODS`).
      **options: keyword options of :func:`slimjax.bounds.lower_bound` (``time_limit``,
        ``upper``, ``target_gap``, ``aggregation``, ...).

    Returns:
      a :class:`slimjax.bounds.Bound`: ``value`` float64 [B] (each ≤ the optimal J of its
      instance, whatever the status), ``status`` int8 [B] (:class:`slimjax.bounds.BoundStatus`;
      ``status_names`` the words), ``iterations`` int [B], ``seconds`` (the
      batch, compilation apart in ``compile_seconds``). Per-instance fields are 0-d for one
      instance.

    Raises:
      ValueError: an unknown method or option.
      ImportError: ``"highs"`` or ``"threshold-highs"`` without the ``milp`` extra.

    Examples:
      >>> import jax, slimjax
      >>> batch = slimjax.generate.instances(jax.random.key(0), 4, model="mixtral_8x7b")
      >>> lb = slimjax.lower_bound(batch)
      >>> lb.value.shape, lb.status.shape
      ((4,), (4,))
    """
    from slimjax.bounds import lower_bound as _lb

    return _lb(batch, method, **options)


def certify(batch: Instance, solution, method: Any = "auto", **options):
    """Certified optimality gaps ``J / bound − 1`` of placements, one per instance.

    The same function as :func:`slimjax.bounds.certify` (imported on first call).

    Args:
      batch: an Instance or a batch of B instances.
      solution: a :class:`Solution` of ``batch`` (its ``placement``), a placement bool
        [B, N, L, E] ([N, L, E] for one instance), or objective values float [B].
      method: the bound method, an object or its name (:func:`lower_bound`).
      **options: keyword options of :func:`slimjax.bounds.certify` (``bound=`` a precomputed
        bound, ``target_gap``, ``time_limit``, ...).

    Returns:
      a :class:`slimjax.bounds.Certificate`: ``gap`` float64 [B] (≥ the true gap to the
      optimum), ``objective`` float64 [B] (J in float64), ``lower`` float64 [B] and ``status``
      int8 [B] (the bound's :class:`slimjax.bounds.BoundStatus`), ``seconds`` (time of the bound), and the full ``bound``.

    Raises:
      ValueError: a placement of the wrong shape or over a node's storage.

    Examples:
      >>> import jax, slimjax
      >>> batch = slimjax.generate.instances(jax.random.key(0), 4, model="mixtral_8x7b")
      >>> cert = slimjax.certify(batch, slimjax.solve_batch(batch, "successive-best"))
      >>> bool((cert.gap >= 0).all()), cert.gap.shape
      (True, (4,))
    """
    from slimjax.bounds import certify as _certify

    return _certify(batch, solution, method, **options)
