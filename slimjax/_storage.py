r"""What "fits in storage" means: slimjax's one feasibility contract.

Every part of slimjax that asks whether a placement fits — :func:`slimjax.feasible`, the final
check of every solver, the exact references (brute force, MILP), the load-aware repair, the
dynamic policies' budgets, the lower bounds and :func:`slimjax.certify` — uses this module, so
"the bound holds for every placement the library accepts" is true by construction.

**The contract.** A placement ``x`` (bool [N, L, E]) fits node n when

    used[n] = Σ_{l,e} size[l,e]·x[n,l,e]  ≤  limit[n] = capacity[n]·(1 + RTOL) + ATOL·max(1, max size),

with ``used`` summed in float64 on the host (:func:`used`, :func:`fits`). The tolerance exists
because instances usually arrive in float32 (JAX's default): a capacity written as "room for
exactly k experts" is k·size rounded to float32, which can sit a few float32 ulps (≈ 6e-8
relative each) below the float64 sum of k float32 sizes. ``RTOL = 1e-6`` forgives that noise
(about 16 float32 ulps) and no more; ``ATOL`` only matters for zero capacities. The validator
accepts experts of one layer whose sizes differ by up to :data:`SIZE_RTOL` (relative), so a
layer's sizes are *not* assumed equal anywhere in this module.

**Who accepts what.**

- The solvers work on the integer storage grid of :func:`grid_units`: sizes are the layer's
  *largest* size rounded up, capacities are ``limit`` rounded down, so every grid-feasible
  placement is accepted by :func:`fits` (a subset, proved in :func:`grid_units`).
- The lower bounds relax the contract with :func:`storage_cut`: each layer's *smallest* size
  rounded down, ``limit`` rounded up by a float64 summation margin, so the relaxed set contains
  every placement :func:`fits` accepts (a superset, proved in :func:`storage_cut`).
- Brute force enumerates exactly the set :func:`fits` accepts (the same float64 function).

**One storage unit finder.** :func:`storage_unit` picks the unit of both the grid and the cut:
the coarsest ``min_size / k`` (k = 1..8) of which every layer's representative size is a whole
multiple (within :data:`UNIT_RTOL`), else the smallest size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RTOL", "ATOL", "SIZE_RTOL", "UNIT_RTOL", "limit", "used", "fits", "layer_sizes", "storage_unit",
           "grid_units", "relaxed_limit", "storage_cut"]

#: relative storage tolerance of the contract (float32 noise on capacities, see the module docstring)
RTOL = 1e-6
#: absolute storage tolerance, times max(1, the largest expert size) (zero capacities)
ATOL = 1e-9
#: the validator's rule: experts of one layer have equal sizes up to this relative difference
SIZE_RTOL = 1e-6
#: a ratio of sizes within this relative distance of a whole number counts as whole (the unit
#: finder), and the float noise forgiven on sizes by the grid: half of RTOL, so that a capacity of
#: exactly k sizes (in float32) still gives k whole units on the grid
UNIT_RTOL = RTOL / 2
#: float64 unit roundoff
_EPS64 = np.finfo(np.float64).eps / 2


def limit(size, capacity) -> np.ndarray:
    """float64 [..., N]: the most storage node n may use, ``capacity·(1 + RTOL) + ATOL·max(1, max size)``.

    Args:
      size: float [..., L, E]; capacity: float [..., N] (same leading axes).
    """
    size = np.asarray(size, np.float64)
    cap = np.asarray(capacity, np.float64)
    return cap * (1 + RTOL) + ATOL * np.maximum(size.max(axis=(-1, -2)), 1.0)[..., None]


def used(size, placement) -> np.ndarray:
    """float64 [..., N]: storage used per node, ``Σ_{l,e} size·x`` summed in float64 (the same
    summation for every row, whatever the leading shape)."""
    size = np.asarray(size, np.float64)
    x = np.asarray(placement)
    N, L, E = x.shape[-3:]
    prod = np.where(x.astype(bool), size[..., None, :, :], 0.0)
    return np.ascontiguousarray(prod).reshape(prod.shape[:-2] + (L * E,)).sum(-1)


def fits(size, capacity, placement) -> np.ndarray:
    """bool [..., N]: node n's storage holds ``placement[..., n]`` (``used ≤ limit``): the contract.

    Args:
      size: float [..., L, E]; capacity: float [..., N]; placement: bool or 0/1 [..., N, L, E].
    """
    return used(size, placement) <= limit(size, capacity)


def layer_sizes(size) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) expert size of every layer, float64 [..., L] each."""
    size = np.asarray(size, np.float64)
    return size.min(-1), size.max(-1)


def storage_unit(rep, capacity=None, *, max_factor: int = 8, max_auto_units: float | None = None) -> np.ndarray:
    """The storage unit of a batch: per instance the coarsest ``min(rep) / k`` (k = 1..max_factor)
    of which every layer's size ``rep`` is a whole multiple within :data:`UNIT_RTOL`, else ``min(rep)``.

    Args:
      rep: float [..., L] a representative size per layer (the grid passes the largest size of
        each layer, the bounds the smallest).
      capacity: float [..., N] or None; with ``max_auto_units``, a finer unit is taken only while
        the largest capacity stays within ``max_auto_units`` units.

    Returns:
      float64 [...] the unit (any positive unit keeps the grid and the cut valid; a whole-multiple
      unit makes them tight).
    """
    rep = np.asarray(rep, np.float64)
    base = rep.min(axis=-1)
    u = base.copy()
    chosen = np.zeros(base.shape, bool)
    for k in range(1, max_factor + 1):  # a loop over k only; vectorized over the batch
        r = rep * k / base[..., None]
        exact = np.all(np.abs(r - np.round(r)) <= UNIT_RTOL * np.maximum(r, 1), axis=-1)
        take = exact & ~chosen
        if max_auto_units is not None and capacity is not None:
            cap = np.asarray(capacity, np.float64)
            take &= (cap / (base[..., None] / k)).max(axis=-1, initial=0) <= max_auto_units
        u = np.where(take, base / k, u)
        chosen |= exact
    return u


def grid_units(size, capacity, unit) -> tuple[np.ndarray, np.ndarray]:
    """The integer grid of the solvers: (units per expert of each layer int64 [..., L], whole
    units per node int64 [..., N]).

    Every count vector ``c`` (experts per layer on node n) with ``Σ_l c_l·su_l ≤ cu_n`` fits under
    the contract, whichever experts of each layer are taken:

    ``su_l ≥ (1 − ρ)·smax_l / u`` and ``cu_n ≤ (1 − ρ)·limit_n / u`` (ρ = :data:`UNIT_RTOL`, the
    float noise forgiven on sizes; both roundings carry float64 margins), so
    ``Σ c_l·smax_l ≤ u/(1 − ρ)·Σ c_l su_l ≤ u/(1 − ρ)·cu_n ≤ limit_n``.

    Args:
      size: float [..., L, E]; capacity: float [..., N]; unit: float [...] (:func:`storage_unit`).
    """
    size = np.asarray(size, np.float64)
    u = np.asarray(unit, np.float64)[..., None]
    smax = size.max(-1)
    rho = UNIT_RTOL
    ratio = smax / u
    # su ≥ (1-ρ)·ratio: the ceiling of a number a few ulps below (1-ρ)·ratio is still ≥ it
    su = np.maximum(np.ceil(np.minimum(ratio * (1 - rho) * (1 - 4 * _EPS64), 2.0**62)), 1).astype(np.int64)
    lim = limit(size, capacity)
    cu = np.floor(np.clip(lim / u * (1 - rho) * (1 - 8 * _EPS64), 0, 2.0**62)).astype(np.int64)
    return su, cu


def relaxed_limit(size, capacity) -> np.ndarray:
    """float64 [..., N]: :func:`limit` raised by κ = (2·L·E + 32)·ε₆₄, which covers the float64
    rounding of ``used`` (L·E terms) and of a division or two by a unit: for every placement the
    contract accepts, the exact ``Σ size·x`` divided by any unit ``u`` (exactly or in float64) is
    at most ``relaxed_limit / u``. The lower bounds' storage rows use it."""
    size = np.asarray(size, np.float64)
    L, E = size.shape[-2:]
    return limit(size, capacity) * (1 + (2 * L * E + 32) * _EPS64)


def storage_cut(size, capacity) -> tuple[np.ndarray, np.ndarray]:
    """Chvátal–Gomory rounding of the storage rows over every placement the contract accepts.

    With ``u`` = :func:`storage_unit` of the layers' smallest sizes ``smin``, returns whole numbers
    ``ŝ_l ≤ (1 + θ)·smin_l / u`` and ``Q̂_n = ⌊(1 + θ)·relaxed_limit_n / u⌋`` (θ = 1e-9 absorbs
    the rounding of ``smin_l / u``; :func:`relaxed_limit` that of ``used``). For a placement with
    ``used_n ≤ limit_n`` and ``c_l`` experts of layer l on node n (each of size ≥ smin_l),
    ``Σ_l ŝ_l c_l ≤ (1 + θ)·Σ_l smin_l c_l / u ≤ (1 + θ)·relaxed_limit_n / u``, and the left side
    is an integer, so ``Σ_l ŝ_l c_l ≤ Q̂_n``: the cut holds for every accepted placement, whatever
    the sizes within a layer.

    Args:
      size: float [..., L, E]; capacity: float [..., N].

    Returns:
      (ŝ float64 [..., L] ≥ 1, Q̂ float64 [..., N] ≥ 0), whole numbers.
    """
    size = np.asarray(size, np.float64)
    smin = size.min(-1)
    u = storage_unit(smin)[..., None]
    theta = 1e-9
    s_hat = np.maximum(np.floor(smin / u * (1 + theta)), 1.0)
    q_hat = np.floor(relaxed_limit(size, capacity) / u * (1 + theta))
    return s_hat, np.maximum(q_hat, 0.0)
