"""Naive NumPy references (loops, obviously correct). What JAX code is checked and timed against."""

from __future__ import annotations

import itertools

import numpy as np


def expert_latency_ref(latency, fallback, placement):
    """d[u, l, e] with explicit loops. latency [U,N,L,E], fallback [U,L,E], placement [N,L,E]."""
    latency = np.asarray(latency, np.float64)
    U, N, L, E = latency.shape
    d = np.zeros((U, L, E))
    for u in range(U):
        for l in range(L):
            for e in range(E):
                best = float(fallback[u, l, e])
                for n in range(N):
                    if placement[n, l, e] and latency[u, n, l, e] < best:
                        best = float(latency[u, n, l, e])
                d[u, l, e] = best
    return d


def latency_ref(inst, placement, aggregation="max"):
    """J(x) for one instance (any object with the Instance fields as arrays)."""
    lat = np.asarray(inst.latency, np.float64)
    fb = np.asarray(inst.fallback, np.float64)
    pat = np.asarray(inst.patterns)
    w = np.asarray(inst.weight, np.float64)
    tr = np.asarray(inst.traffic, np.float64)
    x = np.asarray(placement).astype(bool)
    d = expert_latency_ref(lat, fb, x)
    U, L, M, K = pat.shape
    J = 0.0
    for u in range(U):
        for l in range(L):
            for m in range(M):
                vals = [d[u, l, pat[u, l, m, k]] for k in range(K)]
                t = max(vals) if aggregation == "max" else sum(vals)
                J += tr[u] * w[u, l, m] * t
    return J


def feasible_ref(inst, placement) -> bool:
    size = np.asarray(inst.size, np.float64)
    cap = np.asarray(inst.capacity, np.float64)
    x = np.asarray(placement).astype(bool)
    for n in range(x.shape[0]):
        if (size * x[n]).sum() > cap[n] * (1 + 1e-6) + 1e-9:
            return False
    return True


def brute_force_ref(inst, aggregation="max"):
    """Exact optimum by enumerating all placements (N·L·E ≤ ~16). Returns (J*, placement)."""
    N, L, E = np.asarray(inst.latency).shape[1:]
    best, best_x = np.inf, None
    for bits in itertools.product([False, True], repeat=N * L * E):
        x = np.array(bits).reshape(N, L, E)
        if not feasible_ref(inst, x):
            continue
        J = latency_ref(inst, x, aggregation)
        if J < best - 1e-12:
            best, best_x = J, x
    return best, best_x


def latency_np(inst, placement, aggregation="max"):
    """J(x) for one instance, vectorized NumPy (the per-instance baseline the benchmark loops over)."""
    lat = np.asarray(inst.latency)
    x = np.asarray(placement).astype(bool)
    d = np.minimum(np.asarray(inst.fallback), np.where(x[None], lat, np.inf).min(axis=1))  # [U, L, E]
    pat = np.asarray(inst.patterns)
    member = np.take_along_axis(d[:, :, None, :], pat, axis=-1)  # [U, L, M, K]
    t = member.max(-1) if aggregation == "max" else member.sum(-1)
    return float((np.asarray(inst.traffic)[:, None, None] * np.asarray(inst.weight) * t).sum())
