"""Small random instances for tests (NumPy, seeded)."""

from __future__ import annotations

import numpy as np

import slimjax


def random_instance(
    seed: int = 0,
    U: int = 1,
    N: int = 2,
    L: int = 2,
    E: int = 4,
    M: int = 5,
    K: int = 2,
    *,
    unreachable: bool = True,
    pad: int = 0,
    equal_sizes: bool = False,
    capacity: tuple[int, int] | None = None,
    dtype=np.float32,
) -> slimjax.Instance:
    """A random instance with integer expert sizes (1–3 units per layer), random capacities,
    some unreachable (user, node) pairs when U > 1, nodes slower than the fallback sometimes,
    and ``pad`` zero-weight padding patterns per (u, l)."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(1.0, 10.0, size=(U, N, L, E))
    if unreachable and U > 1:
        for u in range(U):
            for n in range(N):
                if rng.random() < 0.3:
                    lat[u, n] = np.inf
    fb = rng.uniform(8.0, 20.0, size=(U, L, E))
    per_layer = np.ones(L) if equal_sizes else rng.integers(1, 4, size=L).astype(float)
    size = np.repeat(per_layer[:, None], E, axis=1)
    lo, hi = capacity if capacity is not None else (0, int(per_layer.sum() * E // 2) + 1)
    cap = rng.integers(lo, hi + 1, size=N).astype(float)
    pats = np.stack([[[rng.choice(E, size=K, replace=False) for _ in range(M)] for _ in range(L)] for _ in range(U)])
    w = rng.random((U, L, M)) + 0.05
    w /= w.sum(-1, keepdims=True)
    if pad:
        pats = np.concatenate([pats, np.zeros((U, L, pad, K), int)], axis=2)
        w = np.concatenate([w, np.zeros((U, L, pad))], axis=2)
    tr = rng.random(U) + 0.1
    tr /= tr.sum()
    base = rng.uniform(0, 5, size=U)
    return slimjax.Instance(
        latency=lat.astype(dtype), fallback=fb.astype(dtype), size=size.astype(dtype), capacity=cap.astype(dtype),
        patterns=pats.astype(np.int32), weight=w.astype(dtype), traffic=tr.astype(dtype), base=base.astype(dtype),
    )


def random_placement(inst: slimjax.Instance, seed: int = 0, p: float = 0.4) -> np.ndarray:
    """A random (not necessarily feasible) placement [N, L, E] (batched: [B, N, L, E])."""
    rng = np.random.default_rng(seed)
    return rng.random(tuple(inst.latency.shape[:-4]) + tuple(inst.latency.shape[-3:])) < p


def assert_same_solutions(batch, xa, xb, Ja, Jb, rtol: float = 1e-5, aggregation: str = "max") -> None:
    """What two *different compiled programs* (another batch size, chunk size or device count)
    guarantee for the same instances, keys and options: the same J up to float32 rounding, and the
    same placement except among placements of equal J (a near-tie can be broken either way when
    float rounding differs). Each differing placement is checked in float64 to have the same J.

    ``batch``: a batched Instance [B]; ``xa``, ``xb``: placements [B, N, L, E]; ``Ja``, ``Jb``: [B].
    """
    from tests.reference import latency_ref

    np.testing.assert_allclose(np.asarray(Ja, np.float64), np.asarray(Jb, np.float64), rtol=rtol)
    xa, xb = np.asarray(xa), np.asarray(xb)
    for i in range(xa.shape[0]):
        if not np.array_equal(xa[i], xb[i]):
            inst = batch[i]
            ja, jb = latency_ref(inst, xa[i], aggregation), latency_ref(inst, xb[i], aggregation)
            assert abs(ja - jb) <= rtol * max(abs(ja), 1e-12), (i, ja, jb)
