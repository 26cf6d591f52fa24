"""The bound methods as objects, and the per-instance status of a bound.

A bound method is an immutable, hashable dataclass of the options that apply to it
(``Levels(max_levels=16)``, ``ThresholdLP(rtol=1e-6)``), validated when it is built
(``ValueError`` naming the field) and documented in each field's ``metadata["doc"]``.
:func:`slimjax.bounds.lower_bound` takes one; a name (``"levels"``) with keyword options is sugar
for the object (:func:`as_method`). Options that belong to the call, not to a method
(``aggregation``, ``upper``, ``target_gap``, ``merge``, ``memory_budget_mb``), stay arguments of
``lower_bound``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
from typing import Any, ClassVar

import numpy as np

from slimjax.solvers import document_options, option

__all__ = ["BoundStatus", "BoundMethod", "Levels", "ThresholdLP", "AssignmentLP", "ThresholdHighs", "HighsLP", "Auto",
           "Trivial", "METHODS", "as_method", "LEGACY_OPTIONS"]


class BoundStatus(enum.IntEnum):
    """Per-instance outcome of a bound (``Bound.status`` holds these as int8). Whatever the
    status, the value is a valid lower bound."""

    OPTIMAL = 0  #: the LP is solved (PDHG: within ``rtol`` of a feasible LP point; HiGHS: optimal)
    CONVERGED = 1  #: PDHG: the bound stalled over ``patience`` checks with KKT error <= ``rtol``
    TARGET = 2  #: the bound reached ``upper / (1 + target_gap)``
    DOMINATED = 3  #: ``Auto``: a feasible threshold-LP point is below the ``levels`` bound (kept)
    SOLVED = 4  #: ``Levels``: the exact (non-iterative) computation finished
    EXACT = 5  #: ``Trivial``: the value is exact for what it is (J with every expert everywhere)
    ITERATION_LIMIT = 6  #: PDHG stopped at ``max_iters``
    TIME_LIMIT = 7  #: stopped at ``time_limit`` (HiGHS: then the trivial bound)
    #: PDHG: a feasible LP point shows the bound cannot rise by more than ``gap_rtol`` of the gap to
    #: the known objective (``upper``): the certificate is within that fraction of the LP's best
    SUFFICIENT = 8


#: the status names (``Bound.status_names``): the words the string statuses of 1.x used
STATUS_NAMES = np.array([s.name.lower() for s in BoundStatus])


def _int(name: str, v, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")


def _unit(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) or not (0 <= v < 1):
        raise ValueError(f"{name}: must be a number in [0, 1), got {v!r}")


def _seconds(name: str, v) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0):
        raise ValueError(f"{name}: must be a number > 0 or None (seconds), got {v!r}")


def _dtype(v) -> None:
    if v is None:
        return
    try:
        dt = np.dtype(v)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype: must be float32, float64 or None, got {v!r}")
    import jax

    if dt == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype: float64 iterations need jax_enable_x64 (the certified value is float64 anyway)")


@dataclasses.dataclass(frozen=True)
class BoundMethod:
    """Base class of the bound methods (frozen, validated on construction)."""

    name: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.generic):
                object.__setattr__(self, f.name, v.item())
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for an invalid option (called on construction)."""

    def replace(self, **changes) -> "BoundMethod":
        """A copy with some options changed (validated; an option the method lacks is refused)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise ValueError(f"options: unknown option(s) {sorted(unknown)} for bound {self.name!r}; "
                             f"valid options are {sorted(fields)}")
        return dataclasses.replace(self, **changes)

    def options(self) -> dict[str, Any]:
        """``{option: value}`` of this method."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@document_options
@dataclasses.dataclass(frozen=True)
class Levels(BoundMethod):
    """The level decomposition: an exact knapsack per latency level over all 2^E expert sets of a
    layer (E <= 16). Non-iterative; status ``SOLVED`` (or ``TARGET``)."""

    name: ClassVar[str] = "levels"
    max_levels: int = option(32, "most latency levels per user (a coarser grid when there are more distinct "
                                 "latencies: still valid, possibly weaker); integer >= 1")
    dtype: Any = option(None, "precision of the knapsack values in JAX (None: the instance's); the bound is float64")

    def validate(self) -> None:
        _int("max_levels", self.max_levels)
        _dtype(self.dtype)


_PDHG_DOCS = dict(
    max_iters="PDHG iteration cap per instance (integer >= 1)",
    check_every="PDHG steps between two checks of the bound, the restart rule and the stopping rules (integer >= 1)",
    rtol="relative KKT error (and LP gap) at which an instance counts as solved, in [0, 1)",
    stall_rtol="an instance stops when its bound rose by less than this (relative) over `patience` checks, in [0, 1)",
    patience="checks without progress before an instance stops (integer >= 1)",
    time_limit="seconds for the whole batch (checked between runs of 16 checks), or None",
    dtype="PDHG iteration precision (None: the instance's); the certified value is float64",
    gap_rtol="with a known objective (`upper`, e.g. certify's J) and a target_gap: stop once a feasible LP point "
             "shows the LP's bound cannot rise by more than this fraction of its gap to it (exact where the sizes "
             "are equal; elsewhere the float64 value with exact knapsacks may still have risen further), in [0, 1); "
             "0: run to the other rules",
)


@dataclasses.dataclass(frozen=True)
class _PDHGOptions(BoundMethod):
    max_iters: int = option(20000, _PDHG_DOCS["max_iters"])
    check_every: int = option(64, _PDHG_DOCS["check_every"])
    rtol: float = option(1e-5, _PDHG_DOCS["rtol"])
    stall_rtol: float = option(1e-7, _PDHG_DOCS["stall_rtol"])
    patience: int = option(8, _PDHG_DOCS["patience"])
    time_limit: Any = option(None, _PDHG_DOCS["time_limit"])
    dtype: Any = option(None, _PDHG_DOCS["dtype"])
    gap_rtol: float = option(0.05, _PDHG_DOCS["gap_rtol"])

    def validate(self) -> None:
        for k in ("max_iters", "check_every", "patience"):
            _int(k, getattr(self, k))
        _unit("rtol", self.rtol)
        _unit("gap_rtol", self.gap_rtol)
        _unit("stall_rtol", self.stall_rtol)
        _seconds("time_limit", self.time_limit)
        _dtype(self.dtype)


#: how much smaller than a layer's pattern count the coarse LP must be for the warm start to run
COARSE_MIN_RATIO = 8

_COARSE_DOCS = dict(
    coarse_patterns=f"warm start of a large threshold LP when certifying a placement: where every layer has at least "
                    f"{COARSE_MIN_RATIO}x this many patterns, first solve the LP of only each layer's "
                    "`coarse_patterns` heaviest patterns (weights rescaled to the layer's total) from the placement, "
                    "then start the full LP from its x, storage prices and member multipliers (the bound is the "
                    "same function of the final dual point, so it stays valid; `iterations` counts the full LP's); "
                    "integer >= 1, or None: off",
    coarse_iters="PDHG iteration cap of that coarse LP (integer >= 1)",
)


def _coarse(m) -> None:
    if m.coarse_patterns is not None:
        _int("coarse_patterns", m.coarse_patterns)
    _int("coarse_iters", m.coarse_iters)


@document_options
@dataclasses.dataclass(frozen=True)
class ThresholdLP(_PDHGOptions):
    """The threshold LP of the pattern max with whole-expert (Chvátal–Gomory) storage rows, solved
    for the whole batch by restarted PDHG in JAX; the value is its Lagrangian dual with the
    per-node 0/1 knapsacks solved exactly, in float64. Any E."""

    name: ClassVar[str] = "threshold"
    coarse_patterns: Any = option(512, _COARSE_DOCS["coarse_patterns"])
    coarse_iters: int = option(512, _COARSE_DOCS["coarse_iters"])

    def validate(self) -> None:
        super().validate()
        _coarse(self)


@document_options
@dataclasses.dataclass(frozen=True)
class AssignmentLP(_PDHGOptions):
    """The LP relaxation of the MILP (the ``milp`` solver's model) by the same PDHG; equals
    HiGHS's LP value when converged (weaker than :class:`ThresholdLP`)."""

    name: ClassVar[str] = "lp"


@dataclasses.dataclass(frozen=True)
class _HighsOptions(BoundMethod):
    time_limit: Any = option(None, "seconds per instance, or None; past it the bound is the trivial one")
    threads: Any = option(None, "HiGHS threads (integer >= 1), or None for HiGHS's default")

    def validate(self) -> None:
        _seconds("time_limit", self.time_limit)
        if self.threads is not None:
            _int("threads", self.threads)


@document_options
@dataclasses.dataclass(frozen=True)
class ThresholdHighs(_HighsOptions):
    """The threshold LP on HiGHS (CPU, one instance at a time), valued at HiGHS's row duals in the
    same float64 dual function as :class:`ThresholdLP` (the ``milp`` extra)."""

    name: ClassVar[str] = "threshold-highs"


@document_options
@dataclasses.dataclass(frozen=True)
class HighsLP(_HighsOptions):
    """The MILP's LP relaxation on HiGHS (the reference; CPU, one instance at a time), valued at
    HiGHS's row duals in float64 (the ``milp`` extra)."""

    name: ClassVar[str] = "highs"


@document_options
@dataclasses.dataclass(frozen=True)
class Auto(_PDHGOptions):
    """The default: :class:`Levels` where it applies (E <= 16), raised by :class:`ThresholdLP` on
    the instances whose node latencies differ between experts and that ``levels`` did not already
    certify to the target; :class:`ThresholdLP` alone for larger E. Holds the options of both."""

    name: ClassVar[str] = "auto"
    max_levels: int = option(32, "the Levels grid size (see Levels)")
    coarse_patterns: Any = option(512, _COARSE_DOCS["coarse_patterns"])
    coarse_iters: int = option(512, _COARSE_DOCS["coarse_iters"])

    def validate(self) -> None:
        super().validate()
        _int("max_levels", self.max_levels)
        _coarse(self)

    def levels(self) -> Levels:
        return Levels(max_levels=self.max_levels, dtype=self.dtype)

    def threshold(self) -> ThresholdLP:
        return ThresholdLP(**{k: getattr(self, k) for k in (*_PDHG_DOCS, *_COARSE_DOCS)})


@document_options
@dataclasses.dataclass(frozen=True)
class Trivial(BoundMethod):
    """J with every expert on every node: a valid, weak bound (the floor of every other method)."""

    name: ClassVar[str] = "trivial"


_CLASSES = (Auto, Levels, ThresholdLP, AssignmentLP, ThresholdHighs, HighsLP, Trivial)
METHODS = tuple(c.name for c in _CLASSES)
"""The bound method names (sugar for the objects), the default first."""
_BY_NAME = {c.name: c for c in _CLASSES}

#: every keyword option of the 1.x string form ``lower_bound(batch, "name", **options)``
LEGACY_OPTIONS = ("max_iters", "check_every", "rtol", "stall_rtol", "patience", "time_limit", "dtype", "threads",
                  "max_levels", "gap_rtol")


def as_method(method, options: dict | None = None) -> BoundMethod:
    """A :class:`BoundMethod` from an object or a name plus keyword options.

    With a name, the method's own options are taken, the keyword options of the 1.x form that do
    not apply to that method (e.g. ``max_iters`` for ``"levels"``) are ignored, as they always were,
    and any other option name is refused. With an object, every option must belong to it.
    """
    options = dict(options or {})
    if isinstance(method, BoundMethod):
        return method.replace(**options) if options else method
    if not isinstance(method, str) or method not in _BY_NAME:
        raise ValueError(f"method: unknown bound method {method!r}; valid methods are {METHODS} "
                         "or a slimjax.bounds method object")
    cls = _BY_NAME[method]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options) - set(LEGACY_OPTIONS) - fields  # the method's own options (coarse_*) are known
    if unknown:
        raise ValueError(f"options: unknown option(s) {sorted(unknown)} for bound {method!r}; "
                         f"valid options are {sorted(fields)}")
    mine = {k: v for k, v in options.items() if k in fields}
    # the 1.x form validated every option it was given, whichever method used it
    _check_legacy({k: v for k, v in options.items() if k not in fields})
    return cls(**mine)


def _check_legacy(extra: dict) -> None:
    pd = {k: v for k, v in extra.items() if k in _PDHG_DOCS}
    if pd:
        ThresholdLP(**pd)
    if "threads" in extra:
        HighsLP(threads=extra["threads"])
    if "max_levels" in extra:
        Levels(max_levels=extra["max_levels"])
