"""Policy objects: frozen, validated, documented options of every dynamic policy, and the status.

A policy is an immutable, hashable dataclass of the options that apply to it
(``Incremental(budget=..., penalty=..., forecast="ema")``); every option is validated when the
object is built (``ValueError`` naming the field) and documented in its field's
``metadata["doc"]``. Names are sugar: :func:`as_policy` turns ``"incremental"`` plus keyword
options into ``Incremental(...)``, and :func:`slimjax.dynamic.run` accepts either form.

Two families:

- **placement policies** choose the placement ``x_t`` of window t at the window boundary
  (:class:`Static`, :class:`Resolve`, :class:`Incremental`, :class:`LFU`, :class:`LRU`,
  :class:`Hindsight`); ``x_t`` serves every token of window t;
- **per-token caches** (:class:`TokenLRU`, :class:`TokenLFU`, :class:`Belady`) keep a cache on
  every user's device that changes token by token: each expert access of a token hits when the
  device holds the expert at that moment, a miss is served by the servers' deployment ``x_0`` (or
  the fallback) while the cache decides whether to load the expert for the tokens after it.

``budget`` and ``penalty`` are *traced* (another value does not recompile); every other option
is static (part of the compiled program).
"""

from __future__ import annotations

import dataclasses
import enum
import numbers
from typing import Any, ClassVar

import numpy as np

from slimjax.solvers import document_options, option

__all__ = [
    "Status", "Policy", "Static", "Resolve", "Incremental", "LFU", "LRU", "Hindsight", "TokenLRU", "TokenLFU",
    "Belady", "POLICIES", "FORECASTS", "POLICY_CLASSES", "as_policy",
]

FORECASTS = ("last", "ema")


class Status(enum.IntEnum):
    """Per-timeline outcome of a :func:`~slimjax.dynamic.run` (``DynamicResult.status``, int8).

    Every returned placement holds storage and budget in every window (``run`` checks them in
    float64 and raises ``RuntimeError`` otherwise: a bug, never a status).
    """

    ONLINE = 0  #: a causal policy: x_t (a cache's decision) uses only what came before it
    OFFLINE = 1  #: a reference that sees the future (Hindsight, Belady): not realisable online


def _freeze(v):
    """Arrays and lists become nested tuples of floats (options stay hashable)."""
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, numbers.Real) and not isinstance(v, np.ndarray):
        return float(v) if isinstance(v, (float, np.floating)) else v
    if hasattr(v, "shape") or isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        try:
            a = np.asarray(v, np.float64)
        except (TypeError, ValueError):
            return v
        return a.item() if a.ndim == 0 else tuple(_freeze(x) for x in a.tolist())
    return v


def _check_budget(v) -> None:
    if v is None:
        return
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"budget: must be None, a number or an array [N] / [B, N], got {v!r}") from None
    if a.ndim > 2 or np.isnan(a).any() or (a < 0).any():
        raise ValueError(f"budget: must be None or values >= 0 (inf = no limit) in an array of at most 2 axes, got {v!r}")


def _check_penalty(v) -> None:
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"penalty: must be a number >= 0 or an array [B], got {v!r}") from None
    if a.ndim > 1 or not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"penalty: must be finite and >= 0 (a number or an array [B]), got {v!r}")


def _check_int(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")


def _check_forecast(p) -> None:
    if not isinstance(p.forecast, str) or p.forecast not in FORECASTS:
        raise ValueError(f"forecast: must be one of {FORECASTS}, got {p.forecast!r}")
    a = p.ema_alpha
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not 0 < a <= 1:
        raise ValueError(f"ema_alpha: must be in (0, 1], got {a!r}")
    _check_int("ema_horizon", p.ema_horizon, 1)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Base class of every dynamic policy (see the module docstring)."""

    name: ClassVar[str] = ""
    #: sees the future (its result has status OFFLINE)
    offline: ClassVar[bool] = False
    #: a per-token cache (replays the tokens; without tokens they are sampled)
    per_token: ClassVar[bool] = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            frozen = _freeze(v)
            if frozen is not v:
                object.__setattr__(self, f.name, frozen)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field for an invalid option (called on construction)."""
        if hasattr(self, "budget"):
            _check_budget(self.budget)
        if hasattr(self, "penalty"):
            _check_penalty(self.penalty)
        if hasattr(self, "forecast"):
            _check_forecast(self)
        if hasattr(self, "bisect"):
            _check_int("bisect", self.bisect, 0)
        if hasattr(self, "warm") and not isinstance(self.warm, bool):
            raise ValueError(f"warm: must be a bool, got {self.warm!r}")

    def replace(self, **changes) -> "Policy":
        """A copy with some options changed (validated; an option the policy lacks is refused)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise ValueError(f"options: unknown option(s) {sorted(unknown)} for policy {self.name!r}; "
                             f"its options are {sorted(fields)}")
        return dataclasses.replace(self, **changes)

    def options(self) -> dict[str, Any]:
        """``{option: value}`` of this policy."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def option_docs(cls) -> dict[str, str]:
        """``{option: one-line documentation}``."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}

    @property
    def label(self) -> str:
        """The name plus the options that differ from their defaults, ``budget`` left out (it is
        the sweep's axis): ``"incremental"``, ``"incremental(forecast='ema')"``."""
        diff = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                if f.name != "budget" and getattr(self, f.name) != f.default]
        return self.name + (f"({', '.join(diff)})" if diff else "")


_BUDGET_DOC = ("storage that may move into a node per window (unit of size): None (no limit), a number, or an "
               "array [N] or [B, N] (inf = no limit for that node); traced")
_PENALTY_DOC = ("latency-equivalent cost per unit of size moved (unit of J per unit of size), a number or [B]; "
                "traded against J; traced")
_FORECAST_DOC = "what the policy believes about window t: 'last' (window t-1) or 'ema' (moving average of past windows)"
_ALPHA_DOC = "forecast='ema': weight of window t-1; window t-1-k weighs alpha·(1-alpha)^k"
_HORIZON_DOC = "forecast='ema': how many past windows the average covers"
_BISECT_DOC = "with a budget: geometric bisection steps of each node's budget multiplier"
_WARM_DOC = ("start the cache from the deployment x_0's device rows (True) or empty (False: cold start, every "
             "first touch misses)")


@dataclasses.dataclass(frozen=True)
class _Forecasting(Policy):
    """The options shared by the policies that solve a forecast of window t (:class:`Resolve`,
    :class:`Incremental`, :class:`LFU`); validated by :meth:`Policy.validate`."""

    budget: Any = option(None, _BUDGET_DOC)
    forecast: str = option("last", _FORECAST_DOC)
    ema_alpha: float = option(0.5, _ALPHA_DOC)
    ema_horizon: int = option(4, _HORIZON_DOC)


@dataclasses.dataclass(frozen=True)
class _Priced(Policy):
    """``budget`` then ``penalty``: a base of :class:`Incremental` only to keep its field order
    (``budget, penalty, forecast, ema_alpha, ema_horizon, bisect``). A dataclass orders the
    fields of its bases from the last base in the MRO to the first, a field seen again keeping
    its first place: ``Incremental(_Forecasting, _Priced)`` gets ``_Priced``'s first."""

    budget: Any = option(None, _BUDGET_DOC)
    penalty: Any = option(0.0, _PENALTY_DOC)


@document_options
@dataclasses.dataclass(frozen=True)
class Static(Policy):
    """``x_t = x_0``: the deployment on window 0, never changed (moves nothing)."""

    name: ClassVar[str] = "static"


@document_options
@dataclasses.dataclass(frozen=True)
class Resolve(_Forecasting):
    """The forecast of window t solved from scratch, ignoring migration. With a budget, the new
    copies of the from-scratch solution are admitted by their value in it (the J their removal
    would cost) while the node's budget allows; then held copies are kept while storage remains."""

    name: ClassVar[str] = "resolve"


@document_options
@dataclasses.dataclass(frozen=True)
class Incremental(_Forecasting, _Priced):
    """The forecast of window t solved from ``x_{t-1}`` with migration priced: keeping a copy is
    free, adding one costs ``(penalty + μ_n)·size``; the budget by a Lagrangian bisection on μ_n
    plus a repair (:func:`~slimjax.dynamic.window_solve`)."""

    name: ClassVar[str] = "incremental"
    bisect: int = option(12, _BISECT_DOC)


@document_options
@dataclasses.dataclass(frozen=True)
class LFU(_Forecasting):
    """Window-level popularity re-placement: the most frequently activated helpful experts of the
    forecast on the fastest nodes (the ``popularity`` solver's rule). With a budget, new copies
    are admitted by frequency while the budget allows, then held copies kept. (The per-token LFU
    cache is :class:`TokenLFU`.)"""

    name: ClassVar[str] = "lfu"


@document_options
@dataclasses.dataclass(frozen=True)
class LRU(Policy):
    """Window-level device LRU: ``x_t`` is each user's device cache after replaying the tokens of
    window t-1 through a least-recently-used cache (the servers keep ``x_0``), evaluated like every
    placement on window t. With a budget a miss of a copy not held at t-1 is admitted only while
    the budget allows. (The per-token LRU cache, whose state changes within a window, is
    :class:`TokenLRU`.)"""

    name: ClassVar[str] = "lru"
    per_token: ClassVar[bool] = False
    budget: Any = option(None, _BUDGET_DOC)


@document_options
@dataclasses.dataclass(frozen=True)
class Hindsight(Policy):
    """:class:`Incremental` solved on window t itself (it knows window t): the reference at the
    same budget and penalty, not a policy one can run."""

    name: ClassVar[str] = "hindsight"
    offline: ClassVar[bool] = True
    budget: Any = option(None, _BUDGET_DOC)
    penalty: Any = option(0.0, _PENALTY_DOC)
    bisect: int = option(12, _BISECT_DOC)


@document_options
@dataclasses.dataclass(frozen=True)
class TokenLRU(Policy):
    """Per-token least-recently-used cache on every user's device: a miss loads the expert,
    evicting the least recently used expert(s) of the device until it fits."""

    name: ClassVar[str] = "token-lru"
    per_token: ClassVar[bool] = True
    warm: bool = option(True, _WARM_DOC)


@document_options
@dataclasses.dataclass(frozen=True)
class TokenLFU(Policy):
    """Per-token least-frequently-used cache on every user's device: a miss loads the expert,
    evicting the device's expert with the fewest accesses so far (counts kept for every expert
    the node has seen, cached or not; ties: the least recently used)."""

    name: ClassVar[str] = "token-lfu"
    per_token: ClassVar[bool] = True
    warm: bool = option(True, _WARM_DOC)


@document_options
@dataclasses.dataclass(frozen=True)
class Belady(Policy):
    """The offline optimum of the hit rate with bypass (Belady's MIN): on a miss the expert is
    admitted only if its next use comes sooner than that of the cached expert used farthest in
    the future (which is evicted); otherwise it is served without being loaded. Optimal for the
    number of hits when every expert has one size (the usual case: one size per model); with
    several sizes it evicts farthest-first and is a reference, not a proven optimum."""

    name: ClassVar[str] = "belady"
    offline: ClassVar[bool] = True
    per_token: ClassVar[bool] = True
    warm: bool = option(True, _WARM_DOC)


POLICY_CLASSES: dict[str, type[Policy]] = {
    c.name: c for c in (Static, Resolve, Incremental, LFU, LRU, Hindsight, TokenLRU, TokenLFU, Belady)}
#: the names of every policy (sugar for the objects)
POLICIES = tuple(POLICY_CLASSES)
#: the options of the 0.x keyword form, accepted with every name (a policy takes those it has)
LEGACY_OPTIONS = ("budget", "penalty", "forecast", "ema_alpha", "ema_horizon", "bisect")


def as_policy(policy: Policy | str, **options: Any) -> Policy:
    """A policy object from a name (with its options) or an object (options then replace fields).

    With a name the keyword options of the 0.x API (``budget``, ``penalty``, ``forecast``,
    ``ema_alpha``, ``ema_horizon``, ``bisect``) are accepted for every policy and validated; a
    policy takes those it has and ignores the others, as 0.x did (``static`` never moves, so it
    has no budget). Any other option must be one the policy has.

    Raises:
      ValueError: an unknown name or option, or an invalid value (naming the field).

    Examples:
      >>> from slimjax.dynamic import as_policy, Incremental
      >>> as_policy("incremental", budget=2.0, forecast="ema") == Incremental(budget=2.0, forecast="ema")
      True
      >>> as_policy("static", budget=2.0)
      Static()
    """
    if isinstance(policy, Policy):
        return policy.replace(**options) if options else policy
    if not isinstance(policy, str) or policy not in POLICY_CLASSES:
        raise ValueError(f"policy: must be a policy object or one of {POLICIES}, got {policy!r}")
    cls = POLICY_CLASSES[policy]
    own = {f.name for f in dataclasses.fields(cls)}
    legacy = {k: v for k, v in options.items() if k in LEGACY_OPTIONS}
    unknown = set(options) - own - set(LEGACY_OPTIONS)
    if unknown:
        raise ValueError(f"options: unknown option(s) {sorted(unknown)} for policy {policy!r}; its options are "
                         f"{sorted(own)}")
    Incremental(**legacy)  # validates every legacy option, also those this policy ignores
    return cls(**{k: v for k, v in options.items() if k in own})
