"""An independent, naive NumPy (float64, explicit loops) implementation of the load model, and a
random multi-user instance builder for its tests.

Formulas (written from the model, not from the package's code):
  a[u,l,e]  = argmin_n {latency[u,n,l,e] : x[n,l,e], finite} (lowest n on ties), or the fallback
              (N) when none is cached/reachable or fallback[u,l,e] < that latency
  p[u,l,e]  = Σ_m weight[u,l,m] · [e ∈ set(patterns[u,l,m])]
  rho[n]    = Σ_u rate[u] Σ_{(l,e): a[u,l,e]=n} p[u,l,e] · service[n,l,e]
  d[u,l,e]  = fallback[u,l,e] if a = N else latency[u,a,l,e] + service[a,l,e]·rho[a]/(1−rho[a])
  J_load    = Σ_u traffic[u] Σ_l Σ_m weight[u,l,m] · max_k d[u,l,patterns[u,l,m,k]]  (or Σ_k)
            = inf when max_n rho[n] >= max_utilization
"""

from __future__ import annotations

import math

import numpy as np

import slimjax


def _np(inst, name):
    return np.asarray(getattr(inst, name), np.float64)


def activation_ref(inst) -> np.ndarray:
    pats = np.asarray(inst.patterns)
    w = _np(inst, "weight")
    U, L, M, _ = pats.shape
    E = inst.latency.shape[-1]
    p = np.zeros((U, L, E))
    for u in range(U):
        for l in range(L):
            for m in range(M):
                for e in {int(v) for v in pats[u, l, m]}:
                    p[u, l, e] += w[u, l, m]
    return p


def assignment_ref(inst, x) -> np.ndarray:
    lat, fb = _np(inst, "latency"), _np(inst, "fallback")
    x = np.asarray(x, bool)
    U, N, L, E = lat.shape
    a = np.full((U, L, E), N, np.int64)
    for u in range(U):
        for l in range(L):
            for e in range(E):
                best, arg = math.inf, N
                for n in range(N):
                    if x[n, l, e] and lat[u, n, l, e] < best:
                        best, arg = lat[u, n, l, e], n
                if arg < N and best <= fb[u, l, e]:
                    a[u, l, e] = arg
    return a


def utilization_ref(inst, x) -> np.ndarray:
    U, N, L, E = inst.latency.shape
    if inst.service is None:
        return np.zeros(N)
    svc, rate = _np(inst, "service"), _np(inst, "rate")
    a, p = assignment_ref(inst, x), activation_ref(inst)
    rho = np.zeros(N)
    for u in range(U):
        for l in range(L):
            for e in range(E):
                n = a[u, l, e]
                if n < N:
                    rho[n] += rate[u] * p[u, l, e] * svc[n, l, e]
    return rho


def loaded_d_ref(inst, x, rho=None) -> np.ndarray:
    lat, fb = _np(inst, "latency"), _np(inst, "fallback")
    U, N, L, E = lat.shape
    svc = _np(inst, "service") if inst.service is not None else np.zeros((N, L, E))
    rho = utilization_ref(inst, x) if rho is None else np.asarray(rho, np.float64)
    a = assignment_ref(inst, x)
    d = np.empty((U, L, E))
    for u in range(U):
        for l in range(L):
            for e in range(E):
                n = a[u, l, e]
                if n == N:
                    d[u, l, e] = fb[u, l, e]
                elif rho[n] >= 1:
                    d[u, l, e] = math.inf
                else:
                    d[u, l, e] = lat[u, n, l, e] + svc[n, l, e] * rho[n] / (1 - rho[n])
    return d


def loaded_objective_ref(inst, x, max_utilization=0.95, aggregation="max") -> float:
    rho = utilization_ref(inst, x)
    if (rho >= max_utilization).any():
        return math.inf
    d = loaded_d_ref(inst, x, rho)
    pats, w, tr = np.asarray(inst.patterns), _np(inst, "weight"), _np(inst, "traffic")
    U, L, M, K = pats.shape
    total = 0.0
    for u in range(U):
        for l in range(L):
            for m in range(M):
                vals = [d[u, l, pats[u, l, m, k]] for k in range(K)]
                total += tr[u] * w[u, l, m] * (max(vals) if aggregation == "max" else sum(vals))
    return total


def random_load_instance(
    seed: int, U: int = 3, N: int = 4, L: int = 3, E: int = 5, M: int = 5, K: int = 3, *, peak: float | None = None,
    dtype=np.float32,
) -> slimjax.Instance:
    """A random multi-user instance with the load model: unreachable (user, node) pairs, nodes
    slower than the fallback for some experts, repeated ids in some patterns, a zero-weight
    padding pattern, some zero service times; ``rate`` scaled so that the busiest node under a
    dense placement has utilisation ``peak`` (default: random in [0.2, 0.9])."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(1.0, 10.0, size=(U, N, L, E))
    for u in range(U):
        off = rng.random(N) < 0.35
        off[rng.integers(N)] = False  # every user reaches some node
        lat[u, off] = np.inf
    fb = rng.uniform(4.0, 12.0, size=(U, L, E))  # some nodes slower than the fallback
    pats = rng.integers(0, E, size=(U, L, M, K))
    if K > 1:
        pats[:, :, 0, 1] = pats[:, :, 0, 0]  # a pattern repeating an id
    w = rng.random((U, L, M)) + 0.05
    if M > 1:
        w[:, :, -1] = 0.0  # padding pattern
    w /= w.sum(-1, keepdims=True)
    tr = rng.dirichlet(np.ones(U))
    svc = rng.uniform(0.1, 1.0, size=(N, L, E)) * (rng.random((N, L, E)) < 0.9)
    inst = slimjax.Instance(
        latency=lat.astype(dtype), fallback=fb.astype(dtype), size=np.ones((L, E), dtype),
        capacity=np.full(N, float(L * E), dtype), patterns=pats.astype(np.int32), weight=w.astype(dtype),
        traffic=tr.astype(dtype), service=svc.astype(dtype), rate=np.ones(U, dtype),
    )
    rho = utilization_ref(inst.replace(rate=tr.astype(dtype)), np.ones((N, L, E), bool))
    target = rng.uniform(0.2, 0.9) if peak is None else peak
    rate = tr * (target / rho.max())
    return inst.replace(rate=rate.astype(dtype))
