"""Load-aware latency for edge nodes shared by many users: utilisation, the M/M/1 objective
J_load, rates for a load level, and a discrete-event simulator (SimPy) to check them.

An instance carries the load model in its optional fields ``service`` [N, L, E] and ``rate`` [U]
(see ``docs/load.md`` for the formulas)::

    rho = slimjax.load.utilization(inst, x)          # [N] ([batch, N])
    j = slimjax.load.loaded_objective(inst, x)       # J_load, inf when load-infeasible
    rep = slimjax.load.load_report(inst, x)          # J_load, J, rho, feasible, bottleneck
    sim = slimjax.load.simulate(inst, x, tokens=2000, seed=0)   # needs SimPy
"""

from slimjax.load._calibrate import rate_for_load as rate_for_load
from slimjax.load._calibrate import reference_placement as reference_placement
from slimjax.load._model import LoadReport as LoadReport
from slimjax.load._model import activation_probability as activation_probability
from slimjax.load._model import assignment as assignment
from slimjax.load._model import load_report as load_report
from slimjax.load._model import loaded_expert_latency as loaded_expert_latency
from slimjax.load._model import loaded_expert_latency_from as loaded_expert_latency_from
from slimjax.load._model import loaded_node_latency as loaded_node_latency
from slimjax.load._model import loaded_objective as loaded_objective
from slimjax.load._model import utilization as utilization
from slimjax.load._model import utilization_from as utilization_from
from slimjax.load._model import waiting_time as waiting_time
from slimjax.load._simulate import SERVICE_KINDS as SERVICE_KINDS
from slimjax.load._simulate import SimulationResult as SimulationResult
from slimjax.load._simulate import simulate as simulate

__all__ = [
    "SERVICE_KINDS",
    "LoadReport",
    "SimulationResult",
    "activation_probability",
    "assignment",
    "load_report",
    "loaded_expert_latency",
    "loaded_expert_latency_from",
    "loaded_node_latency",
    "loaded_objective",
    "rate_for_load",
    "reference_placement",
    "simulate",
    "utilization",
    "utilization_from",
    "waiting_time",
]
