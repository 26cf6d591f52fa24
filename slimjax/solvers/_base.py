"""Solver objects, their composition, the per-instance status and the :class:`Solution`.

A solver is an immutable, hashable dataclass of options (``Successive(order="given")``). Every
option is validated when the object is built (``ValueError`` naming the field) and documented in
the field's ``metadata["doc"]`` (shown by ``help()``, the CLI and the docs).

**Static vs traced.** Every solver option is *static*: it is part of the compiled program (a
count of rounds, an order, a backend, a step size baked into a schedule), so two solver objects
that compare equal share one compiled program and a changed option compiles a new one (cheap
next to a batch, and the persistent compilation cache keeps it across processes). What varies per
instance — the instance's arrays, its storage grid and its PRNG key — is traced, so a batch of any
instances with one shape runs through one program.

How a solver runs (what :func:`slimjax.solve_batch` does with it):

1. ``prepared = solver.prepare(batch, grid, aggregation)`` on the host, once per batch: a
   hashable ``static`` configuration (e.g. the DP table size), ``shared`` arrays (one for the
   whole batch) and ``per_instance`` arrays (leading axis B, chunked with the batch);
2. ``solver.chunk(static, shared, batch, size_units, capacity_units, per_instance, keys, start)``
   — pure JAX on one chunk (jitted and compiled ahead of time by the framework, so compilation is
   timed apart from solving); returns ``(placement bool [b, N, L, E], info {name: [b, ...]})``;
3. solvers that run on the host (``jax_native = False``: :class:`BruteForce`, :class:`MILP`)
   implement ``host_solve`` instead and also return a status per instance.

Composition: :func:`chain` runs solvers one after another, each stage after the first refining
the previous placement (``refines = True``: :class:`Polish`, :class:`Greedy`).
"""

from __future__ import annotations

import dataclasses
import enum
import numbers
from collections.abc import Hashable
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np

__all__ = ["Status", "Solution", "Solver", "Chain", "chain", "Prepared", "option", "document_options"]


class Status(enum.IntEnum):
    """Per-instance outcome of a solve (``Solution.status`` holds these as int8)."""

    OPTIMAL = 0  #: a proven optimum (an exact method, or HiGHS proved optimality)
    FEASIBLE = 1  #: a feasible placement without an optimality proof (every heuristic)
    TIME_LIMIT = 2  #: stopped at a limit with a feasible incumbent (e.g. ``MILP(time_limit=...)``)
    FAILED = 3  #: no valid placement; its ``objective`` is NaN and ``info`` says why


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Solution:
    """What a solve returns. After :func:`slimjax.solve_batch` every array has a leading batch axis.

    Attributes:
      placement: bool [N, L, E] ([batch, N, L, E]): ``placement[n, l, e]`` caches expert (l, e) on node n.
      objective: J, the expected per-token latency of the MoE part (float64 [] / [batch]); NaN
        only where ``status`` is ``FAILED``.
      total: J + the traffic-weighted non-expert ``base`` latency ([] / [batch]).
      used: storage used per node [N] ([batch, N]), in the unit of ``Instance.size``.
      status: int8 [] / [batch] of :class:`Status` values.
      info: solver-specific arrays with the same leading axis (bounds, gaps, iterations, ...).
      solver: the solver's name (``"successive"``, ``"successive+polish"``, ...).
      seconds: wall-clock seconds of the solve itself, compilation excluded (what an identical
        second call takes: pattern merging, transfers, the solver, the feasibility check and
        the evaluation of J included).
      compile_seconds: seconds this call spent tracing, lowering and compiling programs (0 when
        every program was already compiled in this process; a persistent-cache hit costs little).
    """

    placement: Any
    objective: Any
    total: Any
    used: Any
    status: Any
    info: dict
    solver: str = ""
    seconds: float = 0.0
    compile_seconds: float = 0.0

    def tree_flatten(self):
        return (self.placement, self.objective, self.total, self.used, self.status, self.info), (
            self.solver, self.seconds, self.compile_seconds)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def __getitem__(self, i) -> "Solution":
        """Select instance(s) of a batched solution (``sol[3]``, ``sol[:10]``)."""
        return Solution(
            self.placement[i], self.objective[i], self.total[i], self.used[i], self.status[i],
            {k: v[i] for k, v in self.info.items()}, self.solver, self.seconds, self.compile_seconds,
        )

    def __len__(self) -> int:
        if np.ndim(self.objective) == 0:
            raise TypeError("len() of an unbatched Solution")
        return len(self.objective)

    @property
    def ok(self) -> np.ndarray:
        """bool per instance: a valid placement (status is not ``FAILED``)."""
        return np.asarray(self.status) != Status.FAILED

    @property
    def status_names(self):
        """The status as names (``"optimal"``, ``"feasible"``, ``"time-limit"``, ``"failed"``)."""
        names = np.array([s.name.lower().replace("_", "-") for s in Status])
        return names[np.asarray(self.status, np.int64)]

    def __repr__(self) -> str:
        shape = np.shape(self.placement)
        J = np.asarray(self.objective)
        Js = f"{float(J):.6g}" if J.ndim == 0 else f"mean {float(np.nanmean(J)):.6g} over {J.size}"
        return (f"Solution(solver={self.solver!r}, placement={shape}, objective {Js}, "
                f"seconds={self.seconds:.4g}, compile_seconds={self.compile_seconds:.4g})")


class Prepared(NamedTuple):
    """What :meth:`Solver.prepare` returns (see the module docstring)."""

    static: Hashable  # compile-time configuration (hashable)
    shared: Any = None  # arrays shared by the whole batch (a pytree)
    per_instance: Any = None  # arrays with a leading batch axis (a pytree), chunked with the batch


def option(default, doc: str, **kw):
    """A solver field with its documentation (``metadata["doc"]``)."""
    return dataclasses.field(default=default, metadata={"doc": doc}, **kw)


def _doc_options(cls) -> str:
    lines = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("doc"):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            lines.append(f"  {f.name} (default {default!r}): {f.metadata['doc']}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base class of every solver (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    #: the method is exact: a placement it returns with status OPTIMAL is a proven optimum
    exact: ClassVar[bool] = False
    #: a pure-JAX batch function (chunked, sharded and compiled by ``solve_batch``)
    jax_native: ClassVar[bool] = True
    #: accepts a start placement (may follow another stage in a :func:`chain`)
    refines: ClassVar[bool] = False

    def __post_init__(self):
        for f in dataclasses.fields(self):  # lists (YAML, OmegaConf) become tuples: options stay hashable
            v = getattr(self, f.name)
            frozen = _freeze(v)
            if frozen is not v:
                object.__setattr__(self, f.name, frozen)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for an invalid option (called on construction)."""

    def replace(self, **changes) -> "Solver":
        """A copy with some options changed (validated)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise ValueError(f"options: unknown option(s) {sorted(unknown)} for {self.name!r}; valid options are {sorted(fields)}")
        return dataclasses.replace(self, **changes)

    def options(self) -> dict[str, Any]:
        """``{option: value}`` of this solver."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def option_docs(cls) -> dict[str, str]:
        """``{option: one-line documentation}``."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}

    # -- the protocol ----------------------------------------------------------------------
    def prepare(self, batch, grid, aggregation: str) -> Prepared:
        """Host-side preparation for a whole batch (default: only ``aggregation`` is static)."""
        return Prepared(static=aggregation)

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        """Solve one chunk (pure JAX); returns ``(placement [b, N, L, E], info)``."""
        raise NotImplementedError(f"{type(self).__name__}.chunk")

    def host_solve(self, batch, grid, keys, aggregation: str, start, clock):
        """Host solvers: returns ``(placement [B, N, L, E], info, status int8 [B])``."""
        raise NotImplementedError(f"{type(self).__name__}.host_solve")

    def bytes_per_instance(self, shape: tuple, static) -> float:
        """Working-set estimate of one instance (bytes) for the chunker."""
        U, N, L, E, M, K = shape
        inst = 4 * (U * N * L * E + 2 * U * L * E + U * L * M * (K + 1))
        return 16.0 * inst

    def stages(self) -> tuple["Solver", ...]:
        return (self,)


def document_options(cls):
    """Class decorator: append an ``Options:`` section (from the fields' docs) to ``__doc__``."""
    table = _doc_options(cls)
    if table:
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\nOptions:\n" + table + "\n"
    return cls


@document_options
@dataclasses.dataclass(frozen=True)
class Chain(Solver):
    """Solvers run one after another; every stage after the first refines the placement before it.

    Build it with :func:`chain`. Its name joins the stages' names with ``+``; ``info`` holds the
    first stage's entries as they are and a later stage's as ``"<stage name>.<key>"``. The status
    is ``FAILED`` if a stage failed, ``OPTIMAL`` if a stage proved optimality (later stages never
    increase J), else ``FEASIBLE``.
    """

    stages_: tuple = option((), "the solvers, in order (a later stage must refine: Polish, Greedy)")
    jax_native: ClassVar[bool] = False  # run stage by stage by solve_batch

    @property
    def name(self) -> str:  # type: ignore[override]
        return "+".join(s.name for s in self.stages_)

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return any(s.exact for s in self.stages_)

    def validate(self) -> None:
        if len(self.stages_) < 1:
            raise ValueError("stages: a chain needs at least one solver")
        for i, s in enumerate(self.stages_):
            if not isinstance(s, Solver) or isinstance(s, Chain):
                raise ValueError(f"stages[{i}]: expected a solver object (not a chain), got {s!r}")
            if i > 0 and not s.refines:
                raise ValueError(
                    f"stages[{i}]: {type(s).__name__} cannot refine a placement, so it cannot follow another "
                    "stage; later stages must be one of Polish, Greedy"
                )
        names = [s.name for s in self.stages_]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: a solver appears twice in the chain {names}; raise its rounds instead")

    def stages(self) -> tuple[Solver, ...]:
        return tuple(self.stages_)

    def replace(self, **changes) -> "Chain":
        """Apply options to every stage that has them (an option no stage has is refused)."""
        return _apply_to_stages(self, changes)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in self.stages_:
            out.update({f"{s.name}.{k}": v for k, v in s.options().items()})
        return out

    def __repr__(self) -> str:
        return "chain(" + ", ".join(repr(s) for s in self.stages_) + ")"


def chain(*solvers: Solver) -> Chain:
    """Compose solvers: ``chain(Successive(), Polish(rounds=64))`` runs successive, then polish.

    Nested chains are flattened; a single solver is returned as a one-stage chain.
    """
    flat: list[Solver] = []
    for s in solvers:
        flat.extend(s.stages() if isinstance(s, Chain) else (s,))
    return Chain(stages_=tuple(flat))


def _apply_to_stages(ch: Chain, changes: dict) -> Chain:
    used = set()
    new = []
    for s in ch.stages_:
        mine = {k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(s)}}
        used |= set(mine)
        new.append(s.replace(**mine) if mine else s)
    unknown = set(changes) - used
    if unknown:
        valid = sorted({f.name for s in ch.stages_ for f in dataclasses.fields(s)})
        raise ValueError(f"options: unknown option(s) {sorted(unknown)} for {ch.name!r}; valid options are {valid}")
    return Chain(stages_=tuple(new))


def _freeze(v):
    if isinstance(v, list) or type(v).__name__ == "ListConfig":
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


# -- validation helpers used by every solver ---------------------------------------------------


def check_int(name: str, value, lo: int = 0, hi: int | None = None, auto: bool = False) -> None:
    """``value`` must be an int in [lo, hi] (or ``"auto"`` when ``auto``)."""
    if auto and value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        extra = " or 'auto'" if auto else ""
        raise ValueError(f"{name}: must be an integer {rng}{extra}, got {value!r}")


def check_float(name: str, value, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
                none: bool = False) -> None:
    """``value`` must be a finite real in the range (``lo`` excluded when ``open_lo``), or None when ``none``."""
    if none and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if open_lo else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if open_lo else '>='} {lo}")
        if hi is not None:
            parts.append(f"<= {hi}")
        rule = " and ".join(parts) or "finite"
        raise ValueError(f"{name}: must be a number {rule}{' or None' if none else ''}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: must be one of {tuple(choices)}, got {value!r}")
