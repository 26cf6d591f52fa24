"""Solver names: the string form ``solve(inst, "successive", order="given")`` is sugar for the
object form ``solve(inst, Successive(order="given"))``.

=====================  ==========================================================================
name                   object
=====================  ==========================================================================
``successive``         ``Successive()`` — the paper's successive decomposition, exactly
``successive-fast``    ``Successive(maxconv=FAST_MAXCONV)`` — the same with the accelerated DP
``successive-best``    ``chain(Successive(order="best-of", union_first="auto", revisit="auto",
                       restarts="auto"), Polish(rounds=16))`` — our strongest configuration (default)
``greedy``             ``Greedy()`` — the paper's method for K = 1
``relaxed``            ``Relaxed()`` — optax on the multilinear extension, then rounding
``polish``             ``Polish()`` — local search (from nothing, or as a chain stage)
``random`` ...         ``Random()``, ``Popularity()``, ``LayerUniform()``, ``CoactivationBlind()``, ``EPLB()``
``brute-force``        ``BruteForce()`` — exact, tiny instances
``milp``               ``MILP()`` — exact on HiGHS (extra ``milp``)
=====================  ==========================================================================

``"A+B"`` chains named solvers (``"greedy+polish"`` = ``chain(Greedy(), Polish())``). Options given
with a name go to every stage that has them; an option no stage has is refused.
"""

from __future__ import annotations

import dataclasses

from slimjax.solvers._base import Solver, chain

__all__ = ["DEFAULT", "FAST_MAXCONV", "as_solver", "methods", "register"]

#: the solver of ``solve``/``solve_batch`` when none is given
DEFAULT = "successive-best"
#: the accelerated (max,+) backend of ``successive-fast``
FAST_MAXCONV = "fptas"

_NAMED: dict[str, Solver] = {}


def register(name: str, solver: Solver, *, replace: bool = False) -> None:
    """Give a solver object a name usable in ``solve(inst, name)``, the app and ``methods()``."""
    _builtins()  # the built-in names first, so that registering never hides them
    if not isinstance(solver, Solver):
        raise ValueError(f"solver: expected a solver object, got {solver!r}")
    if not isinstance(name, str) or not name or "+" in name:
        raise ValueError(f"name: must be a non-empty string without '+', got {name!r}")
    if name in _NAMED and not replace:
        raise ValueError(f"name: {name!r} is already registered (pass replace=True)")
    _NAMED[name] = solver


def _builtins() -> None:
    if _NAMED:
        return
    from slimjax.solvers._baselines import EPLB, CoactivationBlind, LayerUniform, Popularity, Random
    from slimjax.solvers._exact import MILP, BruteForce
    from slimjax.solvers._greedy import Greedy
    from slimjax.solvers._polish import Polish
    from slimjax.solvers._relaxed import Relaxed
    from slimjax.solvers._successive import Successive

    for name, obj in {
        "successive": Successive(),
        "successive-fast": Successive(maxconv=FAST_MAXCONV),
        "successive-best": chain(
            Successive(order="best-of", union_first="auto", revisit="auto", restarts="auto"), Polish(rounds=16)
        ),
        "greedy": Greedy(),
        "relaxed": Relaxed(),
        "polish": Polish(),
        "random": Random(),
        "popularity": Popularity(),
        "layer-uniform": LayerUniform(),
        "coactivation-blind": CoactivationBlind(),
        "eplb": EPLB(),
        "brute-force": BruteForce(),
        "milp": MILP(),
    }.items():
        _NAMED[name] = obj


def methods() -> dict[str, Solver]:
    """Every solver name with the object it stands for (its ``repr`` shows every option)."""
    _builtins()
    return dict(_NAMED)


def _named(name: str) -> Solver:
    _builtins()
    if name not in _NAMED:
        raise ValueError(
            f"solver: unknown name {name!r}; valid names are {sorted(_NAMED)} (or 'A+B' to chain them, or a "
            "solver object from slimjax.solvers)"
        )
    return _NAMED[name]


def as_solver(solver, *, load: bool = False, **options) -> Solver:
    """A solver object from a name (with its options) or an object (options then replace fields).

    With ``load=True`` the solver minimises J_load under the utilisation cap: ``brute-force`` and
    ``milp`` take it as their own option (exact), every other solver is wrapped in
    :class:`~slimjax.solvers.LoadAware` (which takes the options ``max_utilization``,
    ``load_iterations``, ``load_damping``, ``load_price``, ``load_polish``).
    """
    from slimjax.solvers._load_aware import LOAD_OPTIONS, LoadAware

    if not isinstance(load, bool):
        raise ValueError(f"load: must be a bool, got {load!r}")
    base = _as_solver(solver)
    own = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
    # a load option that is the solver's own field (the exact methods' max_utilization) stays an option
    mine = {k: options.pop(k) for k in LOAD_OPTIONS if k in options and k not in own}
    if mine and not load:
        raise ValueError(f"options: {sorted(mine)} apply only with load=True")
    obj = _as_solver(solver, **options)
    if not load:
        return obj
    if isinstance(obj, LoadAware):
        return obj.replace(**mine) if mine else obj
    if "load" in {f.name for f in dataclasses.fields(obj)}:  # exact methods: J_load natively
        extra = set(mine) - {"max_utilization"}
        if extra:
            raise ValueError(f"options: {sorted(extra)} do not apply to {obj.name!r} (exact under J_load)")
        return obj.replace(load=True, **mine)
    return LoadAware(inner=obj, **mine)


def _as_solver(solver, **options) -> Solver:
    if isinstance(solver, Solver):
        return solver.replace(**options) if options else solver
    if not isinstance(solver, str):
        raise ValueError(f"solver: expected a name from slimjax.methods() or a solver object, got {solver!r}")
    parts = solver.split("+")
    if len(parts) > 1:
        if len(set(parts)) != len(parts):
            raise ValueError(f"solver: {solver!r} names a stage twice; raise its rounds instead")
        obj: Solver = chain(*(_named(p) for p in parts))
    else:
        obj = _named(solver)
    if not options:
        return obj
    return obj.replace(**options)

