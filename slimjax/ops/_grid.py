"""The integer storage grid of the capacity DP: sizes rounded up, capacities rounded down.

A placement feasible on the grid is accepted by the storage contract (:mod:`slimjax._storage`,
which owns the rounding and the unit finder). Every solver that works on the grid receives the
same :class:`Grid` of a batch from :func:`capacity_grid`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from slimjax._instance import Instance
from slimjax._storage import grid_units, storage_unit

__all__ = ["Grid", "MAX_UNITS", "capacity_grid", "bucket_units"]


class Grid(NamedTuple):
    """The integer storage grid (host NumPy). Sizes are rounded up, capacities down.

    size_units: int [..., L] units per expert of each layer (>= 1).
    capacity_units: int [..., N] whole units per node.
    max_units: the largest capacity in units over the batch (a static DP size).
    unit: float [...] the capacity unit in the instance's size unit.
    explicit: True when the unit was given (``capacity_unit=...``), False for the default.
    """

    size_units: np.ndarray
    capacity_units: np.ndarray
    max_units: int
    unit: np.ndarray
    explicit: bool = False


#: The largest number of grid units a node or an expert may take: beyond it the integer grid
#: (int32, and float32-exact counts) is refused with a ValueError naming ``capacity_unit``.
MAX_UNITS = 2**24


def capacity_grid(
    inst: Instance,
    unit: float | None = None,
    max_units_cap: int | None = None,
    *,
    max_factor: int = 8,
    max_auto_units: int = 1 << 16,
) -> Grid:
    """Map sizes and capacities to an integer grid.

    Args:
      inst: an instance or a batch.
      unit: capacity unit. Default (None): per instance the coarsest ``min_size / k``
        (k = 1..``max_factor``) of which every layer size is an integer multiple, as long as the
        largest capacity stays within ``max_auto_units`` units; otherwise the smallest expert size
        (the classic default). With layers of sizes 2 and 3 the plain smallest-size unit would charge
        the size-3 layer 2 units (4 in real size) and lose real optima; the finer unit does not.
      max_units_cap: if given, capacities are clipped to this many units.

    Returns:
      a :class:`Grid`. Each layer's largest size is rounded up and each node's storage limit
      (:func:`slimjax._storage.limit`) down, so a placement feasible on the grid is accepted by
      :func:`slimjax.feasible` (:func:`slimjax._storage.grid_units` has the proof). Capacities are also clipped to the storage that holds every
      expert (larger capacities do not change the problem).
    """
    size = np.asarray(inst.size, dtype=np.float64)  # [..., L, E]
    smax = size.max(-1)  # [..., L] each layer's largest size (sizes may differ within SIZE_RTOL)
    cap = np.asarray(inst.capacity, dtype=np.float64)  # [..., N]
    E = inst.size.shape[-1]
    if unit is None:
        u = storage_unit(smax, cap, max_factor=max_factor, max_auto_units=max_auto_units)
    else:
        if isinstance(unit, bool) or not isinstance(unit, (int, float, np.integer, np.floating)) or not np.isfinite(unit) or not unit > 0:
            raise ValueError(f"capacity_unit: must be a finite number > 0 or None, got {unit!r}")
        u = np.full(smax.shape[:-1], float(unit))
    ratio = smax / u[..., None]
    full_units = (np.ceil(ratio) * E).sum(-1)  # storage of every expert, in units (float64: no overflow)
    worst = float(np.max(np.minimum(cap / u[..., None], full_units[..., None]), initial=0.0))
    if max(worst, float(np.max(ratio, initial=0.0))) > MAX_UNITS:
        raise ValueError(
            f"capacity_unit: {float(np.min(u)):.6g} makes a node {worst:.4g} grid units (an expert "
            f"{float(np.max(ratio)):.4g}); the limit is {MAX_UNITS} units. Use a coarser capacity_unit "
            "(None = the smallest expert size or a fraction of it)"
        )
    # the contract's grid: sizes rounded up, the storage limit rounded down (slimjax._storage)
    size_units, capacity_units = grid_units(size, cap, u)
    full = (size_units * E).sum(-1, keepdims=True)  # storage that holds every expert
    capacity_units = np.minimum(capacity_units, full)
    if max_units_cap is not None:
        capacity_units = np.minimum(capacity_units, max_units_cap)
    max_units = int(capacity_units.max()) if capacity_units.size else 0
    return Grid(size_units.astype(np.int32), capacity_units.astype(np.int32), max_units, u, unit is not None)


def bucket_units(q: int) -> int:
    """Round a DP size up to m·2^k, m ∈ {4..7} (≤ 25 % larger; few distinct compiled shapes)."""
    q = int(q)
    if q <= 8:
        return max(q, 0)
    k = q.bit_length() - 3
    m = -(-q // (1 << k))
    return m << k
