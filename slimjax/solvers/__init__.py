"""Solvers. Importing this package registers every method in :mod:`slimjax.solvers.registry`."""

from slimjax.solvers._registry import Method, Options, Solution, get_method, methods, register, solve, solve_batch  # Each module registers its methods on import.
from slimjax.solvers import _baselines, _exact, _greedy, _polish, _relaxed, _successive  # noqa: F401,E402

__all__ = ["Method", "Options", "Solution", "get_method", "methods", "register", "solve", "solve_batch"]
