"""slimjax: batched solvers and experiments for expert caching in edge networks for MoE inference.

The public API::

    slimjax.Instance, slimjax.stack, slimjax.unstack                 the problem data
    slimjax.objective, slimjax.total_latency, slimjax.expert_latency, slimjax.layer_latency,
    slimjax.pattern_latency, slimjax.storage_used, slimjax.multilinear, slimjax.feasible
    slimjax.replay, slimjax.replay_stats                             per-token latencies
    slimjax.solve, slimjax.solve_batch, slimjax.methods, slimjax.Solution, slimjax.Status
    slimjax.lower_bound                                              certified lower bounds on J
    slimjax.explain, slimjax.Explanation                             why a placement is good
    slimjax.save, slimjax.load(path), slimjax.placement_frame        files and tables of results
    slimjax.solvers (solver objects, chain), slimjax.ops (building blocks),
    slimjax.generate (instance generators), slimjax.traces (real routing traces)

Submodules are imported on first use, so ``import slimjax`` stays light.
"""

from __future__ import annotations

import importlib
import types

from slimjax._explain import Explanation, explain
from slimjax._instance import Instance, stack, unstack
from slimjax._io import placement_frame, save
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
from slimjax.solvers import Solution, Status, chain, feasible, methods, solve, solve_batch

__version__ = "1.0.0"

__all__ = [
    "Explanation",
    "Instance",
    "Solution",
    "Status",
    "chain",
    "expert_latency",
    "explain",
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

_SUBMODULES = ("generate", "traces", "ops", "solvers", "plots", "app")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"slimjax.{name}")
    if name == "utilization":
        from slimjax.load import utilization

        return utilization
    raise AttributeError(f"module 'slimjax' has no attribute {name!r}")


def lower_bound(inst, **options):
    """Certified lower bound on J from the LP relaxation of the MILP (needs the ``milp`` extra)."""
    from slimjax.solvers._exact import lower_bound as _lb

    return _lb(inst, **options)


class _LoadModule(types.ModuleType):
    """``slimjax.load`` is the load-model submodule, and calling it reads a saved file.

    ``slimjax.load(path)`` is :func:`slimjax._io.load` (what :func:`slimjax.save` wrote: an
    Instance or a Solution); ``slimjax.load.utilization`` and the rest are the load model.
    """

    def __call__(self, path, *, validate: bool = True):
        from slimjax._io import load as _load_file

        return _load_file(path, validate=validate)


# imported here (not lazily) so that ``slimjax.load`` is callable whichever import comes first
from slimjax import load as _load_module

_load_module.__class__ = _LoadModule
del _load_module
