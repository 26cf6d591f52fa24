"""Load-aware latency for edge nodes shared by many users: utilisation, the M/M/1 objective
J_load, rates for a load level, and a discrete-event simulator (SimPy) to check them.

An instance carries the load model in its optional fields ``service`` [N, L, E] and ``rate`` [U]
(see ``docs/load.md`` for the formulas)::

    rho = slimjax.queueing.utilization(inst, x)          # [N] ([batch, N])
    j = slimjax.queueing.loaded_objective(inst, x)       # J_load, inf when load-infeasible
    rep = slimjax.queueing.load_report(inst, x)          # J_load, J, rho, feasible, bottleneck
    sim = slimjax.queueing.simulate(inst, x, tokens=2000, seed=0)   # needs SimPy
"""

from slimjax.queueing._calibrate import rate_for_load as rate_for_load
from slimjax.queueing._calibrate import reference_placement as reference_placement
from slimjax.queueing._model import LoadReport as LoadReport
from slimjax.queueing._model import activation_probability as activation_probability
from slimjax.queueing._model import assignment as assignment
from slimjax.queueing._model import load_report as load_report
from slimjax.queueing._model import loaded_expert_latency as loaded_expert_latency
from slimjax.queueing._model import loaded_expert_latency_from as loaded_expert_latency_from
from slimjax.queueing._model import loaded_node_latency as loaded_node_latency
from slimjax.queueing._model import loaded_objective as loaded_objective
from slimjax.queueing._model import utilization as utilization
from slimjax.queueing._model import utilization_from as utilization_from
from slimjax.queueing._model import waiting_time as waiting_time
from slimjax.queueing._simulate import SERVICE_KINDS as SERVICE_KINDS
from slimjax.queueing._simulate import SimulationResult as SimulationResult
from slimjax.queueing._simulate import simulate as simulate

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
