"""Exact reference of one window's problem with migration (NumPy brute force, tiny instances)."""

from __future__ import annotations

import numpy as np

from slimjax import _storage as storage
from slimjax._instance import Instance

__all__ = ["brute_force_window", "MAX_VARIABLES"]

#: the most placement variables N·L·E the brute force enumerates (2^20 placements)
MAX_VARIABLES = 20


def brute_force_window(
    inst: Instance,
    x_prev,
    budget=None,
    penalty: float = 0.0,
    aggregation: str = "max",
    chunk: int = 4096,
) -> tuple[np.ndarray, float]:
    """The optimum of ``J(x) + penalty · Σ moved`` under storage and ``moved_n ≤ budget[n]``.

    Every placement of ``{0, 1}^{N·L·E}`` is evaluated in float64 (storage and budget in real
    units under the storage contract of :mod:`slimjax._storage`, as :func:`slimjax.feasible`).

    Args:
      inst: one window (unbatched), N·L·E <= :data:`MAX_VARIABLES`.
      x_prev: bool [N, L, E], the previous placement (moved = size of copies not in it).
      budget: None, a number or [N] (size units).
      penalty: cost per unit of size moved.

    Returns:
      (x bool [N, L, E], its net objective) — the first optimum in enumeration order.
    """
    if inst.latency.ndim != 4:
        raise ValueError("inst: brute_force_window takes one (unbatched) window")
    U, N, L, E, M, K = inst.shape
    V = N * L * E
    if V > MAX_VARIABLES:
        raise ValueError(f"inst: N·L·E = {V} placement variables; the brute force enumerates at most {MAX_VARIABLES}")
    lat = np.asarray(inst.latency, np.float64)
    fb = np.asarray(inst.fallback, np.float64)
    size = np.asarray(inst.size, np.float64)
    cap = np.asarray(inst.capacity, np.float64)
    pat = np.asarray(inst.patterns)
    w = np.asarray(inst.weight, np.float64) * np.asarray(inst.traffic, np.float64)[:, None, None]
    prev = np.asarray(x_prev, bool).reshape(V)
    bud = np.full(N, np.inf) if budget is None else np.broadcast_to(np.asarray(budget, np.float64), (N,))
    best_v, best_x = np.inf, None
    bits = np.arange(V)
    for start in range(0, 2**V, chunk):
        codes = np.arange(start, min(start + chunk, 2**V))
        X = ((codes[:, None] >> bits[None]) & 1).astype(bool)  # [C, V]
        Xp = X.reshape(-1, N, L, E)
        newc = Xp & ~prev.reshape(N, L, E)[None]
        moved = storage.used(size, newc)
        # the storage contract (slimjax._storage); the budget is checked like a capacity
        ok = storage.fits(size, cap, Xp).all(-1) & storage.fits(size, bud, newc).all(-1)
        if not ok.any():
            continue
        Xo = X[ok].reshape(-1, N, L, E)
        d = np.minimum(fb[None], np.where(Xo[:, None], lat[None], np.inf).min(axis=2))  # [C, U, L, E]
        m = np.take_along_axis(d[:, :, :, None, :], np.broadcast_to(pat[None], (d.shape[0],) + pat.shape), axis=-1)
        pl = m.max(-1) if aggregation == "max" else m.sum(-1)
        J = (w[None] * pl).sum(axis=(1, 2, 3)) + penalty * moved[ok].sum(-1)
        i = int(np.argmin(J))
        if J[i] < best_v:
            best_v, best_x = float(J[i]), Xo[i]
    return best_x, best_v
