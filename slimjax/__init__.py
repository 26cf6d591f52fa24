"""slimjax: batched solvers and experiments for expert caching in edge networks for MoE inference.

Public API (DESIGN §3)::

    slimjax.Instance, slimjax.stack, slimjax.unstack
    slimjax.latency, slimjax.total_latency, slimjax.expert_latency, slimjax.storage_used
    slimjax.replay, slimjax.replay_stats
    slimjax.solve, slimjax.solve_batch, slimjax.methods, slimjax.Solution
    slimjax.generate (instance generators), slimjax.traces (real routing traces)
"""

from slimjax.ops._grid import Grid, capacity_grid

from slimjax._instance import Instance, stack, unstack
from slimjax._objective import expert_latency, latency, layer_latency, pattern_latency, storage_used, total_latency
from slimjax._replay import replay, replay_stats
from slimjax.solvers import Solution, methods, solve, solve_batch
from slimjax import generate  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Grid",
    "Instance",
    "Solution",
    "capacity_grid",
    "expert_latency",
    "generate",
    "latency",
    "layer_latency",
    "methods",
    "pattern_latency",
    "replay",
    "replay_stats",
    "solve",
    "solve_batch",
    "stack",
    "storage_used",
    "total_latency",
    "unstack",
]


def lower_bound(inst, **options):
    """Certified lower bound on J from the LP relaxation of the MILP (DESIGN §4.8)."""
    from slimjax.solvers._exact import lower_bound as _lb
    return _lb(inst, **options)
