"""Solvers: immutable solver objects, their composition and the ``solve`` entry points.

    >>> from slimjax.solvers import Successive, Polish, chain
    >>> best = chain(Successive(order="best-of"), Polish(rounds=64))

Every object documents its options (``help(Successive)``); :func:`slimjax.methods` lists the
named solvers. See :mod:`slimjax.solvers._base` for the solver protocol (to write your own).
"""

from slimjax.solvers._base import Chain as Chain
from slimjax.solvers._base import Prepared as Prepared
from slimjax.solvers._base import Solution as Solution
from slimjax.solvers._base import Solver as Solver
from slimjax.solvers._base import Status as Status
from slimjax.solvers._base import chain as chain
from slimjax.solvers._base import document_options as document_options
from slimjax.solvers._base import option as option
from slimjax.solvers._baselines import EPLB as EPLB
from slimjax.solvers._baselines import CoactivationBlind as CoactivationBlind
from slimjax.solvers._baselines import LayerUniform as LayerUniform
from slimjax.solvers._baselines import Popularity as Popularity
from slimjax.solvers._baselines import Random as Random
from slimjax.solvers._exact import MILP as MILP
from slimjax.solvers._exact import BruteForce as BruteForce
from slimjax.solvers._greedy import Greedy as Greedy
from slimjax.solvers._load_aware import LoadAware as LoadAware
from slimjax.solvers._methods import as_solver as as_solver
from slimjax.solvers._methods import methods as methods
from slimjax.solvers._methods import register as register
from slimjax.solvers._polish import Polish as Polish
from slimjax.solvers._relaxed import Relaxed as Relaxed
from slimjax.solvers._solve import Feasibility as Feasibility
from slimjax.solvers._solve import feasible as feasible
from slimjax.solvers._solve import solve as solve
from slimjax.solvers._solve import solve_batch as solve_batch
from slimjax.solvers._successive import Successive as Successive

__all__ = [
    "EPLB",
    "MILP",
    "BruteForce",
    "Chain",
    "CoactivationBlind",
    "Feasibility",
    "Greedy",
    "LayerUniform",
    "LoadAware",
    "Polish",
    "Popularity",
    "Prepared",
    "Random",
    "Relaxed",
    "Solution",
    "Solver",
    "Status",
    "Successive",
    "as_solver",
    "chain",
    "document_options",
    "feasible",
    "methods",
    "option",
    "register",
    "solve",
    "solve_batch",
]
