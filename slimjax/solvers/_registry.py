"""The solver registry, :class:`Solution`, and the ``solve`` / ``solve_batch`` entry points.

A method registers a *batch function*::

    fn(batch: Instance, grid: Grid, key: PRNGKey, options: Options) -> (placement, info)

``batch`` has a leading axis (already chunked and padded by :mod:`slimjax.batching`), ``grid``
holds that chunk's integer storage grid (``max_units`` is static and shared by all chunks),
``key`` is one PRNG key shared by all instances, ``options`` is a hashable :class:`Options` with
every option of the method filled in. It returns ``placement`` bool [B, N, L, E] and ``info``, a
dict of arrays with leading axis B. JAX-native methods are ``jax.jit(jax.vmap(...))`` inside;
host methods (``milp``, ``brute-force``) loop in Python and say ``jax_native=False``.

The registry then checks feasibility on the host, evaluates J with :func:`slimjax.latency` and
builds the :class:`Solution`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from slimjax._instance import Instance, is_batched, stack

from slimjax.ops._grid import capacity_grid

from slimjax.ops._patterns import merge_patterns
from slimjax._objective import AGGREGATIONS, latency as _latency
__all__ = ["Options", "Method", "Solution", "register", "methods", "solve", "solve_batch", "get_method"]

#: Options every method accepts (in addition to its own).
COMMON_OPTIONS: dict[str, Any] = {
    "aggregation": "max",  # "max" (parallel experts) or "sum" (sequential)
    "capacity_unit": None,  # storage grid unit; None = smallest expert size
    "chunk_size": None,  # instances per device call; None = from memory_budget_mb
    "memory_budget_mb": "auto",  # working memory one chunk may take; "auto": 2048 MB on CPU, 40 % of an accelerator's memory
    "progress": None,  # show a progress bar; None = only when there is more than one chunk
    "merge_patterns": True,  # merge identical patterns before solving (J unchanged, often far fewer)
}


class Options(Mapping):
    """A frozen, hashable mapping of option values (a valid static argument for ``jax.jit``)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None, **kw):
        d = dict(items or {}, **kw)
        object.__setattr__(self, "_items", tuple(sorted((k, _freeze(v)) for k, v in d.items())))

    def __getitem__(self, k):
        for key, v in self._items:
            if key == k:
                return v
        raise KeyError(k)

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(f"option {k!r} is not set; have {[i for i, _ in self._items]}") from None

    def __setattr__(self, k, v):
        raise AttributeError("Options are frozen; use .replace(...)")

    def __iter__(self):
        return (k for k, _ in self._items)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return hash(self._items)

    def __eq__(self, other):
        return isinstance(other, Options) and self._items == other._items

    def replace(self, **kw) -> "Options":
        return Options(dict(self, **kw))

    def __repr__(self):
        return "Options(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return Options(v)
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy scalars / OmegaConf lists
        v = v.tolist()
        return _freeze(v)
    if type(v).__name__ in ("ListConfig",):
        return tuple(_freeze(x) for x in v)
    return v


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered solver."""

    name: str
    fn: Callable
    defaults: Mapping[str, Any]
    description: str = ""
    jax_native: bool = True  # jit/vmap batch function (chunked and sharded by solve_batch)
    exact: bool = False  # returns a certified optimum (within its limits)
    bytes_per_instance: Callable[[tuple, int, Options], float] | None = None  # memory estimate


_REGISTRY: dict[str, Method] = {}


def register(
    name: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    jax_native: bool = True,
    exact: bool = False,
    bytes_per_instance: Callable | None = None,
):
    """Decorator: register a batch function under ``name`` (see the module docstring)."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"method: {name!r} is already registered")
        clash = set(defaults or {}) & set(COMMON_OPTIONS)
        if clash:
            raise ValueError(f"method {name!r}: options {sorted(clash)} are common options; do not redeclare")
        _REGISTRY[name] = Method(
            name, fn, dict(defaults or {}), description or (fn.__doc__ or "").strip().split("\n")[0],
            jax_native, exact, bytes_per_instance,
        )
        return fn

    return deco


def _ensure_loaded() -> None:
    import slimjax.solvers  # noqa: F401  (importing the package registers every method)


def methods() -> dict[str, str]:
    """The registry: ``{name: one-line description}``. ``X+polish`` works for every X."""
    _ensure_loaded()
    return {k: m.description for k, m in sorted(_REGISTRY.items())}


def get_method(name: str) -> Method:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"method: unknown method {name!r}; valid methods are {sorted(_REGISTRY)} (each also as 'NAME+polish')")
    return _REGISTRY[name]


def _parse(method: str, options: dict) -> tuple[Method, Options, Options | None]:
    """Split 'base+polish' and validate options; returns (method, its options, polish options)."""
    if not isinstance(method, str):
        raise ValueError(f"method: must be a string, got {type(method).__name__}")
    parts = method.split("+")
    base = get_method(parts[0])
    polish = None
    for suffix in parts[1:]:
        if suffix != "polish":
            raise ValueError(f"method: unknown suffix '+{suffix}' in {method!r}; the only suffix is '+polish'")
        polish = get_method("polish")
    valid = dict(COMMON_OPTIONS)
    valid.update(base.defaults)
    polish_valid = {}
    if polish is not None:
        polish_valid = {f"polish_{k}": v for k, v in polish.defaults.items() if k not in valid}
    unknown = set(options) - set(valid) - set(polish_valid)
    if unknown:
        raise ValueError(
            f"options: unknown option(s) {sorted(unknown)} for method {method!r}; valid options are "
            f"{sorted(set(valid) | set(polish_valid))}"
        )
    if options.get("aggregation", "max") not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {options['aggregation']!r}")
    merged = dict(valid)
    merged.update({k: v for k, v in options.items() if k in valid})
    popts = None
    if polish is not None:
        p = dict(COMMON_OPTIONS)
        p.update(polish.defaults)
        for k, v in merged.items():
            if k in COMMON_OPTIONS:
                p[k] = v
        for k, v in options.items():
            if k in polish_valid:
                p[k[len("polish_"):]] = v
        popts = Options(p)
    return base, Options(merged), popts


@dataclasses.dataclass(frozen=True)
class Solution:
    """What a solver returns. Batched fields carry a leading batch axis after ``solve_batch``.

    Attributes:
      placement: bool [N, L, E] ([batch, N, L, E]).
      latency: J, the expected per-token latency of the MoE part ([batch]).
      total: J + traffic-weighted ``base`` ([batch]).
      used: storage used per node [N] ([batch, N]), in the unit of ``size``.
      method: the method name as requested (e.g. ``"successive+polish"``).
      seconds: wall-clock seconds of the whole call (compile included on a first call).
      info: solver-specific arrays (bound, gap, iterations, status, ...).
    """

    placement: Any
    latency: Any
    total: Any
    used: Any
    method: str
    seconds: float
    info: dict

    def __getitem__(self, i) -> "Solution":
        """Select instance(s) of a batched solution."""
        return Solution(
            self.placement[i], self.latency[i], self.total[i], self.used[i], self.method, self.seconds,
            {k: v[i] for k, v in self.info.items()},
        )


def _keys(key, default: int = 0):
    if key is None:
        key = default
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def check_feasible(batch: Instance, placement: np.ndarray, method: str) -> np.ndarray:
    """Storage used [B, N]; raises RuntimeError if any node overflows (a solver bug)."""
    x = np.asarray(placement)
    if x.dtype != bool:
        raise RuntimeError(f"{method}: returned a non-boolean placement ({x.dtype})")
    size = np.asarray(batch.size, np.float64)
    used = np.einsum("bnle,ble->bn", x.astype(np.float64), size)
    cap = np.asarray(batch.capacity, np.float64)
    over = used > cap * (1 + 1e-6) + 1e-9 * np.maximum(size.max(axis=(1, 2))[:, None], 1)
    if over.any():
        b, n = np.argwhere(over)[0]
        raise RuntimeError(
            f"{method}: infeasible placement (a solver bug): instance {b}, node {n} uses {used[b, n]:.6g} > capacity {cap[b, n]:.6g}"
        )
    return used


def solve_batch(batch: Instance, method: str = "successive", *, key=None, **options) -> Solution:
    """Solve every instance of a batch with one method; fields of the result are batched.

    Args:
      batch: an :class:`~slimjax.Instance` with a leading batch axis (see :func:`slimjax.stack`).
      method: a name from :func:`slimjax.methods`, optionally with ``+polish``.
      key: PRNG key or int seed (default 0), shared by every instance, so ``solve(batch[i])``
        and ``solve_batch(batch)[i]`` agree.
      **options: the method's options (see ``slimjax.methods()`` and the solver docs), plus
        the common ones: ``aggregation``, ``capacity_unit``, ``chunk_size``, ``memory_budget_mb``,
        ``progress``, ``merge_patterns`` (identical patterns of a (user, layer) are merged before
        solving: J is unchanged and the pattern axis shrinks to at most C(E+K−1, K)); with
        ``+polish`` also ``polish_<option>``. J in the Solution is evaluated on ``batch`` itself.

    Raises:
      ValueError: unknown method or option, or an unbatched instance.
    """
    from slimjax.solvers import _batching as batching

    if not isinstance(batch, Instance):
        raise ValueError(f"batch: expected a slimjax.Instance, got {type(batch).__name__}")
    if not is_batched(batch):
        raise ValueError("batch: solve_batch needs a leading batch axis; use slimjax.solve for one instance or slimjax.stack([...])")
    base, opts, popts = _parse(method, options)
    key = _keys(key)
    grid = capacity_grid(batch, opts["capacity_unit"])
    t0 = time.perf_counter()
    work = merge_patterns(batch) if opts["merge_patterns"] else batch
    placement, info = batching.run(base, work, grid, key, opts)
    if popts is not None:
        pol = get_method("polish")
        placement, pinfo = batching.run(pol, work, grid, key, popts, placement=placement)
        info.update({f"polish_{k}": v for k, v in pinfo.items()})
    placement = np.asarray(placement)
    seconds = time.perf_counter() - t0
    used = check_feasible(batch, placement, method)
    J = np.asarray(_latency(batch, jnp.asarray(placement), opts["aggregation"]))
    if not np.isfinite(J).all():
        raise RuntimeError(f"{method}: non-finite latency for instances {np.flatnonzero(~np.isfinite(J))[:5]}")
    total = J + np.asarray((batch.traffic * batch.base).sum(-1))
    info = {k: np.asarray(v) for k, v in info.items()}
    return Solution(placement, J, total, used, method, seconds, info)


def solve(inst: Instance, method: str = "successive", *, key=None, **options) -> Solution:
    """Solve one instance. Same options as :func:`solve_batch`; fields are unbatched.

    Examples:
      >>> sol = slimjax.solve(inst, method="successive")          # doctest: +SKIP
      >>> sol.latency, sol.placement.shape                           # doctest: +SKIP
    """
    if not isinstance(inst, Instance):
        raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")
    if is_batched(inst):
        raise ValueError("inst: solve takes one instance; use slimjax.solve_batch for a batch")
    options.setdefault("progress", False)
    sol = solve_batch(stack([inst]), method, key=key, **options)
    return sol[0]
