"""The problem data: :class:`Instance`, a JAX pytree, its validation and batching.

An instance describes one SlimCaching problem. A *batch* is the same class with
one extra leading axis on every field. Shapes (single instance):

======== ============== ======= ===================================================
field    shape          dtype   meaning
======== ============== ======= ===================================================
latency  [U, N, L, E]   float   time for user u to use expert (l, e) on node n; inf = unreachable
fallback [U, L, E]      float   time when no reachable node caches the expert (finite)
size     [L, E]         float   expert size (equal within a layer)
capacity [N]            float   node storage, same unit as ``size``
patterns [U, L, M, K]   int32   expert ids of the routing patterns
weight   [U, L, M]      float   pattern probabilities, each (u, l) sums to 1
traffic  [U]            float   share of tokens per user, sums to 1
base     [U]            float   non-expert per-token latency (reporting only)
service  [N, L, E]      float   optional: compute time of one activation on node n (the part
                                of ``latency`` that queues); ``None`` = no load model
rate     [U]            float   optional: tokens per second of user u; ``None`` = no load model
======== ============== ======= ===================================================

``service`` and ``rate`` come together (both or neither). Without them the model is the unloaded
one; with them :mod:`slimjax.queueing` evaluates the load-aware latency. Absent fields are ``None``
pytree leaves (no array), so jit, vmap and ``tree_map`` work either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slimjax._storage import SIZE_RTOL

__all__ = ["Instance", "stack", "unstack", "is_batched"]

FIELDS = ("latency", "fallback", "size", "capacity", "patterns", "weight", "traffic", "base")
# Optional fields (None when absent): the load model.
OPTIONAL_FIELDS = ("service", "rate")
ALL_FIELDS = FIELDS + OPTIONAL_FIELDS
# Number of trailing (per-instance) dimensions of every field.
_NDIM = {
    "latency": 4,
    "fallback": 3,
    "size": 2,
    "capacity": 1,
    "patterns": 4,
    "weight": 3,
    "traffic": 1,
    "base": 1,
    "service": 3,
    "rate": 1,
}
_SUM_TOL = {np.dtype("float16"): 1e-2, np.dtype("float32"): 1e-4, np.dtype("float64"): 1e-8}


def _float_dtype(*arrays: Any) -> Any:
    """float64 when any input is float64 and x64 is on, else the default float (float32)."""
    want64 = any(getattr(a, "dtype", None) == np.float64 for a in arrays if a is not None)
    if want64 and jax.config.jax_enable_x64:
        return jnp.float64
    return jnp.float32


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class Instance:
    """One SlimCaching instance, or a batch of them (leading axis on every field).

    Args:
      latency: float [U, N, L, E], ``inf`` where user u cannot reach node n.
      fallback: float [U, L, E], finite.
      size: float [L, E], > 0 and equal within a layer.
      capacity: float [N], >= 0.
      patterns: int [U, L, M, K], ids in [0, E).
      weight: float [U, L, M], >= 0, each (u, l) sums to 1.
      traffic: float [U] or None (uniform), sums to 1.
      base: float [U] or None (zeros).
      service: float [N, L, E] or None, finite and >= 0: the compute time of one activation of
        expert (l, e) on node n, the part of ``latency`` that queues (load model).
      rate: float [U] or None, finite and >= 0: user u's tokens per second (load model). Give
        both ``service`` and ``rate`` or neither.
      normalize: rescale ``weight`` and ``traffic`` to sum to 1 instead of refusing them.
      validate: check every rule (shapes, ids, NaN, signs, sums; host-side, never inside jit).

    Raises:
      ValueError: naming the field, the offending index and the rule.

    Examples:
      >>> import numpy as np, slimjax
      >>> inst = slimjax.Instance(latency=np.ones((1, 2, 1, 3)), fallback=np.full((1, 1, 3), 5.0),
      ...     size=np.ones((1, 3)), capacity=np.array([1.0, 2.0]),
      ...     patterns=np.array([[[[0, 1], [1, 2]]]]), weight=np.array([[[0.5, 0.5]]]))
      >>> inst.shape
      (1, 2, 1, 3, 2, 2)
    """

    latency: jax.Array
    fallback: jax.Array
    size: jax.Array
    capacity: jax.Array
    patterns: jax.Array
    weight: jax.Array
    traffic: jax.Array
    base: jax.Array
    service: jax.Array | None
    rate: jax.Array | None

    def __init__(
        self,
        latency,
        fallback,
        size,
        capacity,
        patterns,
        weight,
        traffic=None,
        base=None,
        service=None,
        rate=None,
        *,
        normalize: bool = False,
        validate: bool = True,
    ):
        traced = any(
            isinstance(a, jax.core.Tracer)
            for a in (latency, fallback, size, capacity, patterns, weight, traffic, base, service, rate)
        )
        if traced:  # inside jit/grad: no host-side validation is possible
            validate = False
        lat_shape = jnp.shape(latency)
        if len(lat_shape) < 4:
            raise ValueError(f"latency: expected shape [..., U, N, L, E] (4 trailing dims), got {lat_shape}")
        batch = tuple(lat_shape[:-4])
        U = lat_shape[-4]
        if (service is None) != (rate is None):
            have, miss = ("service", "rate") if rate is None else ("rate", "service")
            raise ValueError(
                f"{miss}: the load model needs both service and rate; {have} is given but {miss} is None"
            )
        fdt = _float_dtype(latency, fallback, size, capacity, weight, traffic, base, service, rate)
        if traffic is None:
            traffic = np.full(batch + (U,), 1.0 / max(U, 1))
        if base is None:
            base = np.zeros(batch + (U,))
        if normalize:
            weight_np = np.asarray(weight, dtype=np.float64)
            traffic_np = np.asarray(traffic, dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                weight_np = weight_np / weight_np.sum(-1, keepdims=True)
                traffic_np = traffic_np / traffic_np.sum(-1, keepdims=True)
        values = dict(
            latency=latency,
            fallback=fallback,
            size=size,
            capacity=capacity,
            patterns=patterns,
            weight=weight_np if normalize else weight,
            traffic=traffic_np if normalize else traffic,
            base=base,
            service=service,
            rate=rate,
        )
        if validate:
            _validate({k: (None if v is None else np.asarray(v)) for k, v in values.items()}, len(batch))
        for name, value in values.items():
            dtype = jnp.int32 if name == "patterns" else fdt
            object.__setattr__(self, name, None if value is None else jnp.asarray(value, dtype=dtype))

    # -- pytree -----------------------------------------------------------------------------
    # Children are the ten fields in ALL_FIELDS order; an absent optional field is a None child
    # (a pytree node without leaves), so an instance without the load model flattens to the same
    # eight leaves as before.
    def tree_flatten(self):
        return tuple(getattr(self, f) for f in ALL_FIELDS), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for name, value in zip(ALL_FIELDS, children):
            object.__setattr__(obj, name, value)
        return obj

    @property
    def has_load(self) -> bool:
        """True when the load model's fields ``service`` and ``rate`` are present."""
        return self.service is not None and self.rate is not None

    # -- conveniences -----------------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch dimensions (``()`` for a single instance)."""
        return tuple(self.latency.shape[:-4])

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """(U, N, L, E, M, K) of one instance."""
        U, N, L, E = self.latency.shape[-4:]
        M, K = self.patterns.shape[-2:]
        return (U, N, L, E, M, K)

    def replace(self, *, validate: bool = True, **changes) -> "Instance":
        """A copy with some fields replaced (validated unless traced or ``validate=False``)."""
        unknown = set(changes) - set(ALL_FIELDS)
        if unknown:
            raise ValueError(f"replace: unknown field(s) {sorted(unknown)}; fields are {list(ALL_FIELDS)}")
        values = {f: getattr(self, f) for f in ALL_FIELDS}
        values.update(changes)
        return Instance(**values, validate=validate)

    def __getitem__(self, index) -> "Instance":
        """Index the batch axis: ``batch[3]`` or ``batch[:10]``."""
        if not self.batch_shape:
            raise IndexError("Instance is not batched; there is no batch axis to index")
        return jax.tree_util.tree_map(lambda a: a[index], self)

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("len() of a single (unbatched) Instance")
        return self.batch_shape[0]

    def astype(self, dtype) -> "Instance":
        """Cast the float fields to ``dtype`` (patterns stay int32)."""
        return jax.tree_util.tree_map(
            lambda a: a if jnp.issubdtype(a.dtype, jnp.integer) else a.astype(dtype), self
        )

    def __repr__(self) -> str:
        U, N, L, E, M, K = self.shape
        b = f"batch={self.batch_shape}, " if self.batch_shape else ""
        load = ", load" if self.has_load else ""
        return f"Instance({b}U={U}, N={N}, L={L}, E={E}, M={M}, K={K}, dtype={self.latency.dtype}{load})"


def is_batched(inst: Instance) -> bool:
    """True when ``inst`` has a leading batch axis."""
    return inst.latency.ndim == 5


def stack(instances: Sequence[Instance]) -> Instance:
    """Stack single instances of identical shapes into a batch (leading axis on every field)."""
    instances = list(instances)
    if not instances:
        raise ValueError("instances: need at least one instance to stack")
    shapes = {i.shape for i in instances}
    if len(shapes) != 1:
        raise ValueError(f"instances: all must have the same shape (U, N, L, E, M, K), got {sorted(shapes)}")
    for name in OPTIONAL_FIELDS:
        present = [getattr(i, name) is not None for i in instances]
        if any(present) and not all(present):
            raise ValueError(
                f"{name}: all instances must have it or none; instance {present.index(not present[0])} "
                f"differs from instance 0"
            )
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *instances)


def unstack(batch: Instance) -> list[Instance]:
    """The inverse of :func:`stack`."""
    return [batch[i] for i in range(len(batch))]


# -- validation ------------------------------------------------------------------------------


def _where(mask: np.ndarray | np.bool_) -> tuple:
    idx = np.argwhere(mask)[0]
    return tuple(int(i) for i in idx)


def _validate(v: dict[str, np.ndarray], nb: int) -> None:
    """Check the validation rules on host arrays; ``nb`` = number of leading batch dims. Optional fields
    may be absent from ``v`` or ``None``."""
    present = [f for f in ALL_FIELDS if v.get(f) is not None]
    E = _check_shapes(v, nb, present)
    for name in present:
        a = v[name]
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{name}: must be numeric, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and np.isnan(a).any():
            raise ValueError(f"{name}: NaN at index {_where(np.isnan(a))}")
    lat = v["latency"].astype(np.float64)
    if (lat < 0).any():
        raise ValueError(f"latency: must be >= 0 (inf = unreachable), negative at index {_where(lat < 0)}")
    if (lat == -np.inf).any():
        raise ValueError(f"latency: -inf at index {_where(lat == -np.inf)}")
    fb = v["fallback"].astype(np.float64)
    if not np.isfinite(fb).all():
        raise ValueError(f"fallback: must be finite, got {fb[~np.isfinite(fb)][0]} at index {_where(~np.isfinite(fb))}")
    if (fb < 0).any():
        raise ValueError(f"fallback: must be >= 0, negative at index {_where(fb < 0)}")
    size = v["size"].astype(np.float64)
    if not np.isfinite(size).all() or (size <= 0).any():
        bad = ~np.isfinite(size) | (size <= 0)
        raise ValueError(f"size: must be finite and > 0, got {size[bad][0]} at index {_where(bad)}")
    same = np.isclose(size, size[..., :1], rtol=SIZE_RTOL, atol=0)
    if not same.all():
        raise ValueError(
            f"size: all experts of one layer must have the same size; differs at index {_where(~same)}"
        )
    _check_finite_nonneg("capacity", v["capacity"])
    pat = v["patterns"]
    if not np.issubdtype(pat.dtype, np.integer):
        if not np.all(np.mod(pat, 1) == 0):
            raise ValueError(f"patterns: must be integer expert ids, got dtype {pat.dtype}")
    bad = (pat < 0) | (pat >= E)
    if bad.any():
        raise ValueError(f"patterns: expert ids must be in [0, E={E}), got {pat[bad][0]} at index {_where(bad)}")
    for name in ("weight", "traffic"):
        a = _check_finite_nonneg(name, v[name])
        tol = _SUM_TOL.get(np.asarray(v[name]).dtype, 1e-4)
        s = a.sum(-1)
        bad = np.abs(s - 1) > tol * max(1, a.shape[-1] ** 0.5)
        if bad.any():
            raise ValueError(
                f"{name}: must sum to 1 over its last axis, sums to {s[bad][0]:.6g} at index {_where(bad)} "
                "(pass normalize=True to rescale)"
            )
    _check_finite_nonneg("base", v["base"])
    for name in OPTIONAL_FIELDS:
        if name in present:
            _check_finite_nonneg(name, v[name])


def _check_shapes(v: dict[str, np.ndarray], nb: int, present: list[str]) -> int:
    """Every present field has ``nb`` batch dims and the shape its role implies from latency
    [U, N, L, E] and patterns [U, L, M, K]; every size >= 1, K <= E. Returns E."""
    for name in present:
        a = v[name]
        if a.ndim != nb + _NDIM[name]:
            raise ValueError(
                f"{name}: expected {nb + _NDIM[name]} dims ({nb} batch + {_NDIM[name]}), got shape {a.shape}"
            )
    batch = v["latency"].shape[:nb]
    U, N, L, E = v["latency"].shape[nb:]
    M, K = v["patterns"].shape[nb + 2 :]
    expect = {
        "latency": (U, N, L, E),
        "fallback": (U, L, E),
        "size": (L, E),
        "capacity": (N,),
        "patterns": (U, L, M, K),
        "weight": (U, L, M),
        "traffic": (U,),
        "base": (U,),
        "service": (N, L, E),
        "rate": (U,),
    }
    for name, shp in expect.items():
        if name in present and v[name].shape != batch + shp:
            raise ValueError(
                f"{name}: shape {v[name].shape} disagrees with latency {v['latency'].shape}; "
                f"expected {batch + shp}"
            )
    if min(U, N, L, E, M, K) < 1:
        raise ValueError(f"shape: U, L, E, M, K must be >= 1, got U={U} N={N} L={L} E={E} M={M} K={K}")
    if K > E:
        raise ValueError(f"patterns: top-K must satisfy K <= E, got K={K} > E={E}")
    return E


def _check_finite_nonneg(name: str, value: np.ndarray) -> np.ndarray:
    """``value`` in float64 after checking it is finite and >= 0 (a ValueError naming ``name``)."""
    a = value.astype(np.float64)
    if not np.isfinite(a).all() or (a < 0).any():
        bad = ~np.isfinite(a) | (a < 0)
        raise ValueError(f"{name}: must be finite and >= 0, got {a[bad][0]} at index {_where(bad)}")
    return a
